"""Load any saved transformers model folder for the command line: the class its config names, its processor or
tokenizer, and every weight from the checkpoint, or an error.

The one loader behind ``adt-probe record`` / ``transplant`` / ``decompose`` / ``weights``. The organism (a
Qwen3-Omni-MoE thinker) is one case among others: the class comes from ``config.json``, never from a default, so a
Mixtral folder loads as Mixtral. A folder whose weights do not all load (missing or mis-shaped tensors) is refused
with the names of those tensors: transformers would otherwise fill them with a random initialisation and the
analysis would measure noise.

Examples
--------
>>> model, processor = load_pretrained("rl/assets/organism")         # doctest: +SKIP
>>> model, processor = load_pretrained("my_mixtral", dtype="bfloat16")  # doctest: +SKIP
>>> items = for_model(items, processor)      # text-only items for a text model  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers

from adt_probe.loading import LoadError, load_model
from rl.data.collate import TextProcessor
from rl.data.items import Item
from rl.organism import AudioQwen3OmniProcessor

log = logging.getLogger(__name__)

#: ``auto`` runs an analysis that trains something on the model (the SFT control, the tuned lenses) only for models
#: with at most this many parameters: cheap for the organism (~4M), not for a 30B model on a laptop
AUTO_MAX_PARAMETERS = 50_000_000

#: Model types whose processor is the organism's audio-and-text Qwen3-Omni processor (no torchvision needed).
QWEN3_OMNI = ("qwen3_omni_moe_thinker", "qwen3_omni_moe")


def wanted(mode: str, model, what: str) -> bool:
    """Whether to run the optional analysis ``what``: ``mode`` is ``on``, ``off`` or ``auto`` (small models only)."""
    if mode not in ("on", "off", "auto"):
        raise ValueError(f"{what} {mode!r}: choose on, off or auto")
    return mode == "on" or (mode == "auto" and sum(p.numel() for p in model.parameters()) <= AUTO_MAX_PARAMETERS)


def load_processor(path: str | Path, config: transformers.PretrainedConfig):
    """The folder's processor: the Qwen3-Omni audio processor for that family, else a tokenizer wrapped as a text
    processor (``rl.data.collate.TextProcessor``: ``.tokenizer``, ``__call__``, left padding)."""
    if config.model_type in QWEN3_OMNI:
        return AudioQwen3OmniProcessor.from_pretrained(str(path))
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise LoadError(f"{path}: no tokenizer could be loaded ({err}); save the tokenizer into the model folder "
                        "(tokenizer.save_pretrained(folder))") from err
    if tokenizer.pad_token is None:  # batches are padded; a pad never enters attention (masked)
        tokenizer.pad_token = tokenizer.eos_token
    return TextProcessor(tokenizer)


def load_pretrained(path: str | Path, *, dtype: str | torch.dtype = "float32", device_map: str | None = None):
    """Load a model folder written by ``save_pretrained`` with the class its config names, and its processor.

    Parameters
    ----------
    path : folder with ``config.json``, safetensors weights and a tokenizer (or processor).
    dtype : one of ``adt_probe.loading.DTYPES`` or a torch dtype; ``"auto"`` keeps the checkpoint's dtype.
    device_map : passed to ``from_pretrained`` (``"auto"``, ``"cpu"``, ``"cuda:0"``; None: CPU, no accelerate).

    Returns
    -------
    (model in eval mode, processor): an audio processor for Qwen3-Omni folders, else a ``TextProcessor``.

    Raises
    ------
    LoadError
        No ``config.json``; no known class; or weights missing from / mis-shaped in the checkpoint (named).
    """
    model = load_model(path, dtype=dtype, device_map=device_map)
    return model, load_processor(path, model.config)


def reads_audio(processor) -> bool:
    """Whether ``processor`` turns audio into model inputs (a feature extractor), as opposed to text only."""
    return getattr(processor, "feature_extractor", None) is not None


def text_only(items: Sequence[Item]) -> list[Item]:
    """The items with each clip's facts written into the question instead of the audio (for text models).

    The written facts are ``item.meta["description"]`` (the synthetic tasks have it), laid out as the organism's
    written-facts prompt does (``Sounds: ...`` before the question); items already without audio are kept.

    Raises
    ------
    LoadError
        An item has audio but no written description: a text model cannot be asked about it.
    """
    out = []
    for it in items:
        if it.audio is None and it.audio_path is None:
            out.append(it)
            continue
        description = it.meta.get("description")
        if not description:
            raise LoadError(f"item {it.id!r} has audio but no meta['description']: a text-only model cannot be "
                            "asked about it; use an audio model, or items with written facts or without audio")
        out.append(dataclasses.replace(it, audio=None, audio_path=None,
                                       question=f"Sounds: {description}\n{it.question}"))
    return out


def for_model(items: Sequence[Item], processor) -> list[Item]:
    """``items`` as-is for an audio model, :func:`text_only` for a text model."""
    return list(items) if reads_audio(processor) else text_only(items)
