"""Public testing helpers: synthetic recordings with known structure, for tests and benchmarks of analyses.

Examples
--------
>>> from adt_probe.testing import synthetic_recording
>>> ds = synthetic_recording(n_sequences=4, seq_len=16, n_layers=3, n_experts=8, top_k=2, seed=0)
>>> dict(ds.sizes)
{'token': 64, 'layer': 3, 'k': 2, 'expert': 8}
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from adt_probe.storage import SCHEMA_VERSION


def topk_from_logits(logits: np.ndarray, top_k: int, scoring: str = "softmax") -> tuple[np.ndarray, np.ndarray]:
    """Top-k experts (descending weight) and renormalised weights from logits (..., experts)."""
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True) if scoring == "softmax" else 1 / (1 + np.exp(-logits))
    idx = np.argpartition(-p, top_k - 1, axis=-1)[..., :top_k]  # the k largest, unordered: O(experts)
    w = np.take_along_axis(p, idx, -1)
    order = np.argsort(-w, axis=-1, kind="stable")
    idx, w = np.take_along_axis(idx, order, -1), np.take_along_axis(w, order, -1)
    return idx.astype(np.int16), (w / w.sum(-1, keepdims=True)).astype(np.float32)


def synthetic_recording(*, n_sequences: int = 8, seq_len: int = 32, n_layers: int = 4, n_experts: int = 8,
                        top_k: int = 2, vocab: int = 100, seed: int = 0, logits: np.ndarray | None = None,
                        full: bool = True, lens: bool = True, segments: np.ndarray | None = None,
                        scale: float = 2.0) -> xr.Dataset:
    """A recording-shaped Dataset with random (or given) router logits and lens values.

    Parameters
    ----------
    logits : (tokens, layers, experts) router logits to use; random normal times ``scale`` when None.
    full : store ``router_logits`` (as ``routing="full"``); otherwise only top-k.
    lens : add random lens variables (``lens_top1`` etc.).
    segments : (tokens,) labels (the chat segments or any others); by default each sequence is a quarter user, then
        think, then answer, then other.

    Returns
    -------
    xarray.Dataset with the layout of ``adt_probe.record``.
    """
    rng = np.random.default_rng(seed)
    n = n_sequences * seq_len
    if logits is None:
        logits = (rng.standard_normal((n, n_layers, n_experts)) * scale).astype(np.float32)
    experts, weights = topk_from_logits(logits.astype(np.float64), top_k)
    if segments is None:
        quarter = np.repeat(["user", "think", "answer", "other"], int(np.ceil(seq_len / 4)))[:seq_len]
        segments = np.tile(quarter, n_sequences)
    data = {"topk_experts": (("token", "layer", "k"), experts), "topk_weights": (("token", "layer", "k"), weights)}
    if full:
        data["router_logits"] = (("token", "layer", "expert"), logits.astype(np.float32))
    if lens:
        data["lens_top1"] = (("token", "layer"), rng.integers(0, vocab, (n, n_layers)).astype(np.int32))
        data["lens_logprob"] = (("token", "layer"), -rng.exponential(2.0, (n, n_layers)).astype(np.float32))
        data["lens_rank"] = (("token", "layer"), rng.integers(0, vocab, (n, n_layers)).astype(np.int32))
        data["lens_entropy"] = (("token", "layer"), rng.uniform(0, 4, (n, n_layers)).astype(np.float32))
        data["lens_kl_final"] = (("token", "layer"), rng.exponential(1.0, (n, n_layers)).astype(np.float32))
    coords = {"token": np.arange(n), "sequence": ("token", np.repeat(np.arange(n_sequences), seq_len)),
              "position": ("token", np.tile(np.arange(seq_len), n_sequences)),
              "token_id": ("token", rng.integers(0, vocab, n)), "segment": ("token", np.asarray(segments).astype(str)),
              "layer": np.arange(n_layers), "moe_layer": ("layer", np.ones(n_layers, bool)),
              "expert": np.arange(n_experts), "k": np.arange(top_k)}
    return xr.Dataset(data, coords=coords, attrs={"schema_version": SCHEMA_VERSION, "router_scoring": "softmax",
                                                  "top_k": top_k, "n_experts": n_experts,
                                                  "routing": "full" if full else "topk", "lens": "logit",
                                                  "model_path": f"synthetic-{seed}", "model_class": "Synthetic"})


def with_logits(ds: xr.Dataset, logits: np.ndarray) -> xr.Dataset:
    """A copy of ``ds`` whose router logits (and top-k) are replaced by ``logits`` (tokens, layers, experts)."""
    experts, weights = topk_from_logits(logits.astype(np.float64), ds.sizes["k"])
    out = ds.copy()
    out["topk_experts"] = (("token", "layer", "k"), experts)
    out["topk_weights"] = (("token", "layer", "k"), weights)
    if "router_logits" in ds:
        out["router_logits"] = (("token", "layer", "expert"), logits.astype(np.float32))
    return out
