"""Record one teacher-forced pass of a model into an xarray Dataset: routers per token x layer, lens per token x layer.

``record`` runs the model over given token sequences (what its processor returns, audio included), captures the
input of every router and the residual stream after every decoder block, and derives:

* routing - router logits recomputed in fp32 from the router's input and weight (so their meaning never depends on
  what a transformers release returns), the top-k experts and their weights exactly as the model selects them;
* lens - for the residual stream after block ``i``: a lens object (``LogitLens()``, a ``TunedLens``; see
  ``adt_probe.lens``), then per token the log-prob and rank of the realised next token, the entropy, the KL
  divergence from the model's own output distribution and the top-1 token. It works in chunks of tokens, so
  layers x tokens x vocabulary is never held in memory.

Dataset layout (see ``SCHEMA_VERSION``): dims ``token, layer, expert, k``; token coordinates ``sequence``,
``position``, ``token_id``, ``segment`` (and ``token_str`` with a tokenizer); layer coordinate ``moe_layer`` (False
for dense blocks, whose routing variables hold -1 / NaN); every variable has ``long_name``, ``units`` and
``description`` attributes.

Examples
--------
>>> from adt_probe import record
>>> batch = processor(text=texts, audio=clips, return_tensors="pt", padding=True)   # doctest: +SKIP
>>> ds = record(model, batch, tokenizer=processor.tokenizer)                        # doctest: +SKIP
>>> ds.topk_experts.sel(layer=7).to_series().head()                               # doctest: +SKIP
>>> ds = record(model, ["Is it high? <think>yes</think>"], tokenizer=tokenizer, lens=None)  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import xarray as xr

from adt_probe.architectures import ArchitectureSpec, architecture, get_module
from adt_probe.integrity import versions
from adt_probe.lens import Lens, LogitLens, check_lens, lens_statistics
from adt_probe.segments import segment_tokens
from adt_probe.storage import SCHEMA_VERSION, ZARR_FORMAT  # noqa: F401 - re-exported

ROUTING_MODES = ("topk", "full", None)
BACKENDS = ("hooks", "nnsight")


class RecordingError(ValueError):
    """Inputs that cannot be recorded; the message names the problem and the fix."""


# --- capture: the two backends return the same thing ------------------------------------------------------------

Captured = tuple[list[torch.Tensor], dict[int, torch.Tensor]]
#: What a capture keeps of a router's input: ``reduce(router_module, router_input)``, e.g. ``spec.router_logits``
RouterReduce = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def capture_hooks(model, spec: ArchitectureSpec, inputs: Mapping, reduce: RouterReduce | None = None) -> Captured:
    """Residual stream after each block, shape (batch, seq, hidden), and router inputs (tokens, hidden) per MoE layer,
    with plain torch forward hooks. With ``reduce`` each router input is replaced, inside its hook, by
    ``reduce(router, input)`` (``spec.router_logits``: (tokens, experts) fp32), so the forward need not keep the
    inputs and reuses their pages: the organism keeps 8 fp32 logits per token instead of 128 fp32 inputs,
    Qwen3-Omni 128 fp32 logits instead of 2,048 bf16 inputs (an eighth)."""
    layers = get_module(model, spec.layers)
    resid: list[torch.Tensor | None] = [None] * len(layers)
    router_in: dict[int, torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(lambda m, a, out, i=i: resid.__setitem__(i, _first(out))))
        if i in spec.moe_layers:
            handles.append(get_module(layer, spec.router).register_forward_hook(
                lambda m, a, out, i=i: router_in.__setitem__(i, a[0] if reduce is None else reduce(m, a[0]))))
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return resid, router_in


def capture_nnsight(model, spec: ArchitectureSpec, inputs: Mapping, reduce: RouterReduce | None = None) -> Captured:
    """As ``capture_hooks``, through an nnsight trace (the path that also runs on NDIF with ``remote=True``);
    ``reduce`` runs on the saved router inputs after the trace."""
    from nnsight import NNsight

    traced = model if hasattr(model, "trace") else NNsight(model)
    n_layers = len(get_module(model, spec.layers))
    # nnsight 0.8: containers exist before the trace, and modules are touched in execution order (router, block).
    resid, router_in = [], {}
    with torch.set_grad_enabled(False), traced.trace(**inputs, use_cache=False):
        layers = get_module(traced, spec.layers)
        for i in range(n_layers):
            if i in spec.moe_layers:
                router_in[i] = get_module(layers[i], spec.router).input.save()
            resid.append(layers[i].output.save())
    if reduce is not None:
        blocks = get_module(model, spec.layers)
        router_in = {i: reduce(get_module(blocks[i], spec.router), x) for i, x in router_in.items()}
    return [_first(r) for r in resid], router_in


# --- inputs: text, token lists or what a processor returns -------------------------------------------------------

def _is_text_list(x) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, str) and len(x) > 0 and all(isinstance(t, str) for t in x)


def _pad_rows(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Ragged rows of ints -> (len(rows), longest) int64, right-padded with ``value``."""
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def model_inputs(inputs, tokenizer=None) -> dict:
    """What ``record`` runs the model on, from any of the forms it accepts.

    Parameters
    ----------
    inputs : a string or a list of strings (tokenized with ``tokenizer``, no special tokens added beyond what the
        tokenizer adds by default); a mapping (a processor's ``BatchEncoding`` or a dict) whose ``input_ids`` is a
        (batch, seq) tensor or array, or a list of token-id lists of any lengths (right-padded here, with an
        ``attention_mask``).
    tokenizer : needed for text; its ``pad_token_id`` pads ragged lists (0 without one: masked out anyway).

    Returns
    -------
    dict of tensors: ``input_ids`` (batch, seq) int64, ``attention_mask`` when given or made, other inputs unchanged.
    """
    if isinstance(inputs, str) or _is_text_list(inputs):
        if tokenizer is None:
            raise RecordingError("record() got text but no tokenizer: pass tokenizer=AutoTokenizer.from_pretrained"
                                 "(...) (or the processor), or token ids as {'input_ids': ..., 'attention_mask': ...}.")
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        inputs = {"input_ids": [getattr(tokenizer, "tokenizer", tokenizer)(t)["input_ids"] for t in texts]}
    if not isinstance(inputs, Mapping):
        raise RecordingError(f"record() cannot read inputs of type {type(inputs).__name__}: pass a string, a list of "
                             "strings (with tokenizer=), or what the processor/tokenizer returns (a mapping with "
                             "input_ids, and attention_mask when padded).")
    ids = inputs.get("input_ids")
    if ids is None:
        raise RecordingError(f"inputs have no input_ids (keys: {sorted(inputs)}): pass what the model's processor or "
                             "tokenizer returns.")
    out = dict(inputs)
    if torch.is_tensor(ids) or isinstance(ids, np.ndarray):
        out["input_ids"] = torch.as_tensor(ids).long()
        if out["input_ids"].ndim == 1:  # one sequence
            out = {k: v[None] if torch.is_tensor(v) and v.ndim == 1 else v for k, v in out.items()}
            out["input_ids"] = out["input_ids"][None] if out["input_ids"].ndim == 1 else out["input_ids"]
        return out
    rows = [ids] if ids and isinstance(ids[0], int) else list(ids)
    if not rows or not all(isinstance(r, Sequence) and all(isinstance(t, int) for t in r) for r in rows):
        raise RecordingError("input_ids must be a (batch, seq) tensor or array, or a list of lists of token ids.")
    pad = getattr(getattr(tokenizer, "tokenizer", tokenizer), "pad_token_id", None) or 0
    mask = inputs.get("attention_mask")
    mask_rows = [mask] if mask is not None and mask and isinstance(mask[0], int) else mask
    out["input_ids"] = _pad_rows(rows, pad)
    out["attention_mask"] = (_pad_rows(mask_rows, 0) if mask_rows is not None and not torch.is_tensor(mask_rows)
                             else _pad_rows([[1] * len(r) for r in rows], 0))
    for key, value in inputs.items():  # other per-token lists (token_type_ids, ...) padded alike
        if key not in ("input_ids", "attention_mask") and isinstance(value, list):
            out[key] = _pad_rows(value if value and not isinstance(value[0], int) else [value], 0)
    return out


def _batch_size_of(inputs: Mapping) -> int:
    return int(inputs["input_ids"].shape[0])


def _slice_inputs(inputs: Mapping, start: int, stop: int, n: int) -> dict:
    sliced = {}
    for key, value in inputs.items():
        if torch.is_tensor(value) and value.ndim >= 1 and value.shape[0] == n:
            sliced[key] = value[start:stop]
        elif torch.is_tensor(value) and stop - start < n:
            raise RecordingError(f"cannot split input {key!r} (first dimension {value.shape[0]}, but {n} sequences) "
                                 f"into batches: pass options=RecordOptions(batch_size={n}) or more, or one audio "
                                 "clip per sequence.")
        else:
            sliced[key] = value
    return sliced


def validate_inputs(model, inputs: Mapping, tokenizer=None) -> None:
    """Raise ``RecordingError`` for inputs the model cannot have been meant to see (each message names the fix)."""
    ids = inputs["input_ids"]
    if not torch.is_tensor(ids) or ids.ndim != 2:
        raise RecordingError(f"input_ids must be a (batch, seq) tensor, got {type(ids).__name__} "
                             f"{getattr(ids, 'shape', '')}: call the processor with return_tensors='pt'.")
    has_audio = any(k in inputs for k in ("input_features", "input_values", "audio_values"))
    accepts_audio = getattr(model.config, "audio_config", None) is not None
    if has_audio and not accepts_audio:
        raise RecordingError(f"the inputs carry audio features but {type(model).__name__} takes no audio: use the "
                             "audio model, or a text-only processor call.")
    for key, value in inputs.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise RecordingError(f"input {key!r} holds {bad} NaN or infinite values: the audio (or its features) is "
                                 "broken. Check the clips (rl.data.items.load_items rejects NaN samples) and recompute "
                                 "the features with the processor.")
    config = getattr(model.config, "text_config", None) or model.config
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and int(ids.max()) >= vocab:
        raise RecordingError(f"token id {int(ids.max())} is outside the model's vocabulary ({vocab}): the "
                             "processor/tokenizer does not belong to this model. Load both from the same folder.")
    if tokenizer is not None and len(tokenizer) > (vocab or 0) + 1024:
        raise RecordingError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {vocab}: "
                             "they do not belong together.")
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    # Padding sits at the start (left) or the end (right) of a row; a pad id that doubles as end-of-turn (SmolLM2)
    # is only evidence of padding at the start.
    padded = pad is not None and (bool((ids[:, 0] == pad).any()) or (pad != eos and bool((ids[:, -1] == pad).any())))
    if "attention_mask" not in inputs and padded:
        raise RecordingError("the inputs contain padding tokens but no attention_mask: pass the attention_mask the "
                             "processor returned (padding=True returns one).")
    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos is not None and ids.shape[1] > max_pos:
        raise RecordingError(f"sequences of {ids.shape[1]} tokens exceed the model's max_position_embeddings "
                             f"({max_pos}): truncate them or record shorter windows.")


# --- per-token labels: segments and token strings ------------------------------------------------------------------

SegmentsArg = np.ndarray | Callable[..., np.ndarray] | None


def token_segments(segments: SegmentsArg, tokenizer, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """A label per token, shape (batch, seq), from ``record``'s ``segments`` argument.

    ``segments`` is an array of labels of the shape of ``input_ids``, a function called like
    ``segment_tokens(tokenizer, input_ids, attention_mask)`` that returns one, or None (``segment_tokens`` with a
    tokenizer, all ``other`` without). Labels are any strings: the six chat segments or the user's own.
    """
    if callable(segments):
        labels = segments(tokenizer, ids, mask)
    elif segments is not None:
        labels = segments
    elif tokenizer is not None:
        labels = segment_tokens(tokenizer, ids, mask)
    else:
        labels = np.full(tuple(ids.shape), "other")
    labels = np.asarray(labels)
    if labels.shape != tuple(ids.shape):
        raise RecordingError(f"segments have shape {labels.shape}, input_ids {tuple(ids.shape)}: one label per "
                             "token is needed.")
    return labels.astype(str)


def token_strings(tokenizer, ids: torch.Tensor) -> np.ndarray:
    """Each token decoded on its own, shape of ``ids`` (a token that is part of a multi-byte character shows as
    U+FFFD)."""
    unique = np.unique(ids.cpu().numpy())
    text = {int(i): tokenizer.decode([int(i)]) for i in unique}
    return np.vectorize(text.__getitem__, otypes=[object])(ids.cpu().numpy()).astype(str)


#: long_name, units and description of every variable and coordinate a recording holds (CF-style units: "1" is a
#: dimensionless number)
VARIABLE_ATTRS = {
    "token": ("token", "1", "index of the token among the real (unpadded) tokens of all sequences, in order"),
    "sequence": ("sequence", "1", "index of the sequence (row of input_ids) the token belongs to"),
    "position": ("position", "1", "position of the token among the real tokens of its sequence, from 0"),
    "token_id": ("token id", "1", "the token's id in the model's vocabulary"),
    "token_str": ("token string", "1", "the token decoded on its own by the tokenizer"),
    "segment": ("segment", "1", "the token's label: a chat segment (system, user, audio, think, answer, other) or "
                "the user's own"),
    "layer": ("decoder block", "1", "index of the decoder block; the lens reads the residual stream after it"),
    "moe_layer": ("MoE layer", "1", "True where the block routes tokens to experts, False for dense blocks"),
    "expert": ("expert", "1", "index of the expert in the layer"),
    "k": ("top-k slot", "1", "slot among the selected experts, by descending weight (0 = top-1)"),
    "router_logits": ("router logits", "1", "router logits recomputed in fp32 from the router's input and weight; "
                      "NaN on dense blocks"),
    "topk_experts": ("selected experts", "1", "the experts the model used, by descending weight; -1 on dense "
                     "blocks"),
    "topk_weights": ("selected expert weights", "1", "the weights of the selected experts as the model uses them; "
                     "NaN on dense blocks"),
    "lens_logprob": ("lens log-probability of the next token", "nats", "log-probability of the realised next token "
                     "under the lens; NaN for a sequence's last token and tokens outside the lens segments"),
    "lens_rank": ("lens rank of the next token", "1", "number of tokens the lens ranks above the realised next "
                  "token (0 = top); -1 where there is no next token or no lens"),
    "lens_entropy": ("lens entropy", "nats", "entropy of the lens' next-token distribution"),
    "lens_kl_final": ("KL(final || lens)", "nats", "KL divergence of the lens' next-token distribution from the "
                      "model's own output distribution"),
    "lens_top1": ("lens top-1 token", "1", "the token id the lens ranks first"),
}


def _describe(ds: xr.Dataset) -> xr.Dataset:
    """Attach ``long_name``, ``units`` and ``description`` to every variable and coordinate."""
    for name in list(ds.variables):
        long_name, units, description = VARIABLE_ATTRS[name]
        ds[name].attrs.update(long_name=long_name, units=units, description=description)
    return ds


# --- record ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RecordOptions:
    """How ``record`` runs; none of these change what a recording means.

    Attributes
    ----------
    batch_size : sequences per forward pass.
    backend : ``"hooks"`` (default: plain torch forward hooks on the blocks and routers) or ``"nnsight"`` (an nnsight
        trace, the path to remote execution on NDIF); both give identical Datasets. nnsight routes every module call
        through its interleaver: on the organism that cost 1.23x a plain forward where hooks cost 1.09x (measured).
    lens_segments : compute the lens only for tokens in these segments (others hold NaN / -1): cost in proportion.
    chunk_tokens : tokens per lens chunk (default: ``adt_probe.lens.default_chunk_tokens(vocab)``).
    fused : fuse the lens statistics with ``torch.compile`` (True), never (False), or when it pays (None).
    """

    batch_size: int = 8
    backend: str = "hooks"
    lens_segments: Sequence[str] | None = None
    chunk_tokens: int | None = None
    fused: bool | None = None

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise RecordingError(f"backend={self.backend!r}: choose one of {BACKENDS}")
        if self.batch_size < 1:
            raise RecordingError(f"batch_size={self.batch_size}: at least 1 sequence per forward pass")


_LOGIT_LENS = LogitLens()


def _versions() -> str:
    return json.dumps(versions())


class _Labels(NamedTuple):
    """Per-token labels of all inputs, (batch, seq) each, fixed-width strings so every batch stores alike."""

    segment: np.ndarray
    token_str: np.ndarray | None


def record(model, inputs, *, tokenizer=None, routing: str | None = "topk", lens: Lens | None = _LOGIT_LENS,
           segments: SegmentsArg = None, out: str | Path | None = None, attrs: Mapping | None = None,
           options: RecordOptions | None = None) -> xr.Dataset:
    """One teacher-forced pass over ``inputs``, recorded into an xarray Dataset.

    Parameters
    ----------
    model : a transformers model whose family is in ``adt_probe.architectures.FAMILIES`` (or any dense causal LM).
    inputs : what the processor returns (``input_ids`` (batch, seq), ``attention_mask`` (batch, seq), and audio
        features when present, one clip per sequence for batching); a string or a list of strings (with
        ``tokenizer``); or a mapping whose ``input_ids`` is a list of token-id lists (see ``model_inputs``).
    tokenizer : the model's tokenizer (or processor): for text, segments, ``token_str`` and input checks.
    routing : ``"topk"`` (top-k experts and weights), ``"full"`` (also fp32 ``router_logits``), or None.
    lens : ``LogitLens()`` (default), a trained ``TunedLens``, any ``adt_probe.lens.Lens``, or None.
    segments : a label per token: a (batch, seq) array, a function ``f(tokenizer, input_ids, attention_mask)``
        returning one, or None (``segment_tokens`` with a tokenizer; all ``other`` without).
    out : a ``.zarr`` path to stream the Dataset to, batch by batch (for inputs larger than memory); the return
        value is then the lazily opened store.
    attrs : extra attributes (for example ``{"step": 120}``).
    options : batch size, backend, lens segments, chunking and fusion (``RecordOptions``).

    Returns
    -------
    xarray.Dataset with dims ``token`` (real tokens of all sequences, in order), ``layer``, ``expert``, ``k``;
    token coordinates ``sequence``, ``position``, ``token_id``, ``segment`` and, with a tokenizer, ``token_str``.
    Every variable carries ``long_name``, ``units`` and ``description``.
    """
    options = options or RecordOptions()
    if routing not in ROUTING_MODES:
        raise RecordingError(f"routing={routing!r}: choose one of {ROUTING_MODES}")
    try:
        check_lens(lens)
    except TypeError as e:
        raise RecordingError(str(e)) from None
    spec = architecture(model)
    if routing is not None and spec.router is None:
        routing = None  # a dense model: the lens alone
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    inputs = model_inputs(inputs, tokenizer)
    validate_inputs(model, inputs, tokenizer)
    ids_all = inputs["input_ids"]
    mask_all = inputs.get("attention_mask", torch.ones_like(ids_all))
    labels = _Labels(token_segments(segments, tokenizer, ids_all, mask_all),
                     token_strings(tokenizer, ids_all) if tokenizer is not None else None)
    model.eval()
    parts, t0, n_tokens, n = [], time.time(), 0, _batch_size_of(inputs)
    for start in range(0, n, options.batch_size):
        stop = min(n, start + options.batch_size)
        batch = _slice_inputs(inputs, start, stop, n)
        resid, router_logits = _capture(model, spec, batch, options.backend)
        part = _to_dataset(model, spec, batch, resid, router_logits,
                           _Labels(*(v[start:stop] if v is not None else None for v in labels)),
                           (start, n_tokens), routing, lens, options)
        n_tokens += part.sizes["token"]
        if out is not None:
            _append_zarr(part, Path(out), first=start == 0)
        else:
            parts.append(part)
    attrs_all = {"schema_version": SCHEMA_VERSION,
                 "model_path": str(getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "")),
                 "model_class": type(model).__name__, "architecture": spec.family,
                 "router_scoring": spec.scoring if spec.router else "none", "top_k": spec.top_k if spec.router else 0,
                 "n_experts": spec.n_experts if spec.router else 0, "routing": str(routing),
                 "lens": lens.name if lens is not None else "None", "backend": options.backend,
                 "versions": _versions(), "seconds": round(time.time() - t0, 3),
                 **{k: v if isinstance(v, (int, float, str)) else json.dumps(v) for k, v in (attrs or {}).items()}}
    if out is not None:
        return _finish_zarr(Path(out), attrs_all)
    ds = xr.concat(parts, dim="token", data_vars="minimal", coords="minimal", compat="override",
                   join="override") if len(parts) > 1 else parts[0]
    ds.attrs = attrs_all
    return ds


def _capture(model, spec: ArchitectureSpec, batch: Mapping, backend: str) -> Captured:
    """Run one batch on the model's device and dtype and capture it: residual streams and router logits."""
    param = next(model.parameters())
    # processors return fp32 audio features; a bf16/fp16 model needs them in its own dtype. Inputs go to the device
    # of the first parameter (the embedding, under device_map="auto").
    batch = {k: (v.to(param.dtype) if v.is_floating_point() else v).to(param.device) if torch.is_tensor(v) else v
             for k, v in batch.items()}
    if _accepts(model, "logits_to_keep"):
        batch["logits_to_keep"] = 1  # the lens computes the final logits itself: the model need not hold them all
    return (capture_nnsight if backend == "nnsight" else capture_hooks)(model, spec, batch, spec.router_logits)


def _accepts(model, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def _finish_zarr(path: Path, attrs: dict) -> xr.Dataset:
    import zarr

    from adt_probe.integrity import write_checksums

    store = zarr.open_group(str(path), mode="a")
    store.attrs.update(attrs)
    zarr.consolidate_metadata(str(path))
    write_checksums(path)
    return xr.open_zarr(str(path))


def _token_coords(ids: torch.Tensor, mask: torch.Tensor, labels: _Labels, offsets: tuple[int, int]) -> dict:
    """The token coordinates of one batch's real tokens; ``offsets`` number its sequences and tokens after earlier
    batches'."""
    flat = mask.reshape(-1)
    keep = flat.cpu().numpy()
    seq_idx = torch.arange(ids.shape[0])[:, None].expand_as(ids)
    position = (mask.long().cumsum(1) - 1).clamp(min=0)
    n_tok = int(flat.sum())
    coords = {"token": np.arange(offsets[1], offsets[1] + n_tok),
              "sequence": ("token", (seq_idx.reshape(-1)[flat] + offsets[0]).cpu().numpy()),
              "position": ("token", position.reshape(-1)[flat].cpu().numpy()),
              "token_id": ("token", ids.reshape(-1)[flat].cpu().numpy()),
              "segment": ("token", labels.segment.reshape(-1)[keep])}
    if labels.token_str is not None:
        coords["token_str"] = ("token", labels.token_str.reshape(-1)[keep])
    return coords


def _routing_variables(model, spec, router_logits, flat, n_tok: int, n_layers: int, routing: str) -> dict:
    """Top-k experts and weights (and full router logits) of one batch's real tokens, from ``router_logits``
    ({MoE layer: (tokens, experts) fp32}, every token of the batch)."""
    k, e = spec.top_k, spec.n_experts
    experts = np.full((n_tok, n_layers, k), -1, np.int16 if e < 32_000 else np.int32)
    weights = np.full((n_tok, n_layers, k), np.nan, np.float32)
    logits_all = np.full((n_tok, n_layers, e), np.nan, np.float32) if routing == "full" else None
    blocks = get_module(model, spec.layers)
    layers = sorted(router_logits)
    if not layers:
        return _routing_data(experts, weights, logits_all)
    logits = torch.stack([router_logits[i][flat.to(router_logits[i].device)].to(flat.device)
                          for i in layers])  # (moe layers, tokens, experts)
    if spec.score_bias is None:  # routing is row-wise: every layer's tokens in one call
        idx, w = spec.route(logits.reshape(-1, e))
        idx, w = idx.view(len(layers), n_tok, k), w.view(len(layers), n_tok, k)
    else:  # a selection bias per layer
        routed = [spec.route(logits[j], bias=spec.selection_bias(blocks[i])) for j, i in enumerate(layers)]
        idx, w = torch.stack([r[0] for r in routed]), torch.stack([r[1] for r in routed])
    # Store by descending weight, so k=0 is each token's top-1 expert; most routers' top-k already comes so (a
    # check costs a tenth of the sort, which the result of a stable sort would then equal)
    if not bool((w[..., :-1] >= w[..., 1:]).all()):
        order = w.argsort(dim=-1, descending=True, stable=True)
        idx, w = idx.gather(-1, order), w.gather(-1, order)
    experts[:, layers] = idx.permute(1, 0, 2).cpu().numpy()
    weights[:, layers] = w.permute(1, 0, 2).cpu().numpy()
    if logits_all is not None:
        logits_all[:, layers] = logits.permute(1, 0, 2).cpu().numpy()
    return _routing_data(experts, weights, logits_all)


def _routing_data(experts: np.ndarray, weights: np.ndarray, logits_all: np.ndarray | None) -> dict:
    data = {"topk_experts": (("token", "layer", "k"), experts), "topk_weights": (("token", "layer", "k"), weights)}
    if logits_all is not None:
        data["router_logits"] = (("token", "layer", "expert"), logits_all)
    return data


@torch.no_grad()
def _to_dataset(model, spec, batch, resid, router_logits, labels: _Labels, offsets: tuple[int, int],
                routing: str | None, lens: Lens | None, options: RecordOptions) -> xr.Dataset:
    """One batch's Dataset."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask", torch.ones_like(ids)).bool()
    flat = mask.reshape(-1)
    n_layers = len(resid)
    coords = _token_coords(ids, mask, labels, offsets)
    coords.update(layer=np.arange(n_layers),
                  moe_layer=("layer", np.array([i in spec.moe_layers for i in range(n_layers)])))
    n_tok = len(coords["token"])
    data = {}
    if routing is not None:
        data.update(_routing_variables(model, spec, router_logits, flat, n_tok, n_layers, routing))
        coords.update(expert=np.arange(spec.n_experts), k=np.arange(spec.top_k))
    if lens is not None:
        # The next real token of the same sequence; -1 after the last one.
        nxt = torch.full_like(ids, -1)
        for row in range(ids.shape[0]):
            real = mask[row].nonzero()[:, 0]
            nxt[row, real[:-1]] = ids[row, real[1:]]
        select = flat.clone()
        if options.lens_segments is not None:
            select &= torch.from_numpy(np.isin(labels.segment.reshape(-1), list(options.lens_segments)))
        sel_in_tok = select[flat].cpu().numpy()
        # every token selected (no padding, no lens_segments): views, not a copy of every layer's residual stream
        every = bool(select.all())
        flat_resid = [r.reshape(-1, r.shape[-1]) for r in resid]
        stats = lens_statistics(flat_resid if every else [r[select.to(r.device)] for r in flat_resid],
                                nxt.reshape(-1)[select], spec, model, lens=lens, chunk_tokens=options.chunk_tokens,
                                fused=options.fused)
        for name, values in stats.items():
            full = np.full((n_tok, n_layers), np.nan if values.dtype.kind == "f" else -1, values.dtype)
            full[sel_in_tok] = values
            data[name] = (("token", "layer"), full)
    return _describe(xr.Dataset(data, coords=coords))


def _append_zarr(part: xr.Dataset, path: Path, first: bool) -> None:
    if first:
        if path.exists():
            raise RecordingError(f"{path} exists: choose a new out= path (a recording is never overwritten).")
        part.to_zarr(str(path), mode="w-", consolidated=False, zarr_format=ZARR_FORMAT)
    else:
        part.drop_vars([v for v in ("layer", "expert", "k", "moe_layer") if v in part.coords]).to_zarr(
            str(path), append_dim="token", consolidated=False)
