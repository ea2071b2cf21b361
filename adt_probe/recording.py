"""Record one teacher-forced pass of a model into an xarray Dataset: routers per token x layer, lens per token x layer.

``record`` runs the model over given token sequences (what its processor returns, audio included), captures the
input of every router and the residual stream after every decoder block, and derives:

* routing - router logits recomputed in fp32 from the router's input and weight (so their meaning never depends on
  what a transformers release returns), the top-k experts and their weights exactly as the model selects them;
* lens - for the residual stream after block ``i``: final norm, unembedding, log-softmax (logit lens; or a tuned
  lens' translator first), then per token the log-prob and rank of the realised next token, the entropy, the KL
  divergence from the model's own output distribution and the top-1 token. It works in chunks of tokens, so
  layers x tokens x vocabulary is never held in memory.

Dataset layout (see ``SCHEMA_VERSION``): dims ``token, layer, expert, k``; token coordinates ``sequence``,
``position``, ``token_id``, ``segment``; layer coordinate ``moe_layer`` (False for dense blocks, whose routing
variables hold -1 / NaN).

Examples
--------
>>> from adt_probe import record
>>> batch = processor(text=texts, audio=clips, return_tensors="pt", padding=True)   # doctest: +SKIP
>>> ds = record(model, batch, tokenizer=processor.tokenizer)                        # doctest: +SKIP
>>> ds.topk_experts.sel(layer=7).to_series().head()                               # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from adt_probe.architectures import ArchitectureSpec, architecture, get_module
from adt_probe.integrity import versions
from adt_probe.segments import segment_tokens

SCHEMA_VERSION = "1"
#: zarr v2 on disk: v3 has no specified fixed-length string type yet (the segment labels), so v2 stores stay readable
#: by every zarr implementation.
ZARR_FORMAT = 2
ROUTING_MODES = ("topk", "full", None)
LENS_MODES = ("logit", "tuned", None)
BACKENDS = ("nnsight", "hooks")


class RecordingError(ValueError):
    """Inputs that cannot be recorded; the message names the problem and the fix."""


# --- capture: the two backends return the same thing ------------------------------------------------------------

Captured = tuple[list[torch.Tensor], dict[int, torch.Tensor]]


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def capture_hooks(model, spec: ArchitectureSpec, inputs: Mapping) -> Captured:
    """Residual stream after each block, shape (batch, seq, hidden), and router inputs (tokens, hidden) per MoE layer,
    with plain torch forward hooks."""
    layers = get_module(model, spec.layers)
    resid: list[torch.Tensor | None] = [None] * len(layers)
    router_in: dict[int, torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(lambda m, a, out, i=i: resid.__setitem__(i, _first(out))))
        if i in spec.moe_layers:
            handles.append(get_module(layer, spec.router).register_forward_hook(
                lambda m, a, out, i=i: router_in.__setitem__(i, a[0])))
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return resid, router_in


def capture_nnsight(model, spec: ArchitectureSpec, inputs: Mapping) -> Captured:
    """As ``capture_hooks``, through an nnsight trace (the path that also runs on NDIF with ``remote=True``)."""
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
    return [_first(r) for r in resid], router_in


# --- the lens -------------------------------------------------------------------------------------------------------

def _plain_linear(unembed, x: torch.Tensor) -> bool:
    """True when the unembedding is exactly ``x @ weight.T`` in fp32 (bias-free, hook-free ``nn.Linear``)."""
    return (isinstance(unembed, torch.nn.Linear) and unembed.bias is None and unembed.weight.dtype == torch.float32
            and x.dtype == torch.float32 and not unembed._forward_hooks and not unembed._forward_pre_hooks)


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product of two (rows, vocab) tensors, shape (rows,), without an elementwise temporary."""
    return torch.bmm(a[:, None, :], b[:, :, None])[:, 0, 0]


#: layers beyond which KL's cross term sum(p_f z) comes from one (p_f W) product per chunk instead of a pass per layer
CROSS_BY_PRODUCT_AFTER = 16


def _logit_statistics(z: torch.Tensor, target: torch.Tensor, *, p: torch.Tensor, scratch: torch.Tensor
                      ) -> dict[str, torch.Tensor]:
    """Statistics of logits z (rows, vocab) for targets (rows, 1): each (rows,).

    Writes softmax(z) into ``p`` and uses ``scratch`` (may be ``p``: it is read before) for the rank comparison.
    Returns ``log_z`` (log partition), ``logprob`` (of the target, nats), ``rank`` (0 = top), ``entropy`` (nats) and
    ``top1``.
    """
    zmax, top1 = z.max(dim=-1)
    torch.softmax(z, dim=-1, out=p)
    log_z = zmax - p.gather(1, top1[:, None])[:, 0].log()  # p(argmax) >= 1 / vocab: no underflow
    entropy = log_z - _rowdot(p, z)
    z_t = z.gather(1, target)
    rank = torch.gt(z, z_t, out=scratch).sum(-1).to(torch.int32)
    return {"log_z": log_z, "logprob": z_t[:, 0] - log_z, "rank": rank, "entropy": entropy, "top1": top1}


def _store(out: dict[str, np.ndarray], layer: int, stats: dict[str, torch.Tensor], rows: slice, where: np.ndarray,
           has: np.ndarray) -> None:
    """Copy one chunk's statistics into the (tokens, layers) arrays; target-based ones only where a target exists."""
    out["lens_logprob"][where, layer] = stats["logprob"][has].cpu().numpy()
    out["lens_rank"][where, layer] = stats["rank"][has].cpu().numpy()
    out["lens_entropy"][rows, layer] = stats["entropy"].cpu().numpy()
    out["lens_top1"][rows, layer] = stats["top1"].cpu().numpy()


def default_chunk_tokens(vocab: int) -> int:
    """Tokens per lens chunk: 512, fewer for large vocabularies so each (chunk, vocab) fp32 buffer stays <= 128 MB."""
    return int(max(16, min(512, 2**25 // vocab)))


def lens_statistics(resid: Sequence[torch.Tensor], targets: torch.Tensor, spec: ArchitectureSpec, model,
                    translator=None, chunk_tokens: int | None = None) -> dict[str, np.ndarray]:
    """Per token x layer lens statistics of residual streams.

    Parameters
    ----------
    resid : one tensor per layer, each (tokens, hidden): the residual stream after that block.
    targets : (tokens,) int64, the realised next token, or -1 where there is none (last token of a sequence).
    translator : a tuned lens (``translator(h, layer)`` -> h) applied before the final norm, or None (logit lens).
    chunk_tokens : tokens per chunk (default: ``default_chunk_tokens(vocab)``); the workspace is three
        (chunk_tokens, vocab) fp32 buffers (512 x 49,152: 300 MB).

    Returns
    -------
    dict of arrays (tokens, layers): ``lens_logprob`` (nats, NaN without target), ``lens_rank`` (0 = top, -1 without
    target), ``lens_entropy`` (nats), ``lens_kl_final`` (KL(final || layer), nats), ``lens_top1`` (token id).

    Notes
    -----
    With z the lens logits and p = softmax(z): log Z = max z - log p(argmax z), log p(t) = z_t - log Z, entropy =
    log Z - sum(p z), KL(final || layer) = sum(p_f log p_f) - sum(p_f z) + log Z. Per layer and chunk that is one
    unembedding and four passes over (chunk, vocab) buffers (max, softmax, sum(p z), rank). The buffers are reused:
    a fresh (chunk, vocab) tensor is an mmap'd allocation whose pages fault in on first touch, which cost more than
    the arithmetic (measured: a fresh ``z > z_t`` 60 ms, into a reused buffer 7 ms, at 512 x 49,152). When the
    unembedding is a plain linear map W, sum(p_f z) = (p_f W) . x for the normed residual x: one (chunk, hidden)
    product per chunk replaces a pass over the vocabulary per layer (for models deeper than
    ``CROSS_BY_PRODUCT_AFTER`` layers, where that pays).
    """
    norm, unembed = spec.readout(model)  # with the family's logit scale / soft-cap, if any
    n, n_layers = targets.shape[0], len(resid)
    out = {"lens_logprob": np.full((n, n_layers), np.nan, np.float32),
           "lens_rank": np.full((n, n_layers), -1, np.int32),
           "lens_entropy": np.zeros((n, n_layers), np.float32),
           "lens_kl_final": np.zeros((n, n_layers), np.float32),
           "lens_top1": np.zeros((n, n_layers), np.int32)}
    if n == 0:
        return out
    device = resid[-1].device
    with torch.no_grad():
        vocab = getattr(unembed, "out_features", None) or unembed(norm(resid[-1][:1])).shape[-1]
        chunk_tokens = chunk_tokens or default_chunk_tokens(vocab)
        rows_max = min(n, chunk_tokens)
        # z: this layer's logits; p: its softmax, then the rank comparison; p_final: the model's own distribution
        z_buf, p_buf, p_final_buf = (torch.empty(rows_max, vocab, device=device) for _ in range(3))

        def logits(z: torch.Tensor, h: torch.Tensor, layer: int) -> torch.Tensor:
            """Fill z with the lens logits of layer ``layer``; return the normed residual x (rows, hidden)."""
            if translator is not None and layer < n_layers - 1:  # the last layer is the model's own output
                h = translator(h, layer)
            x = norm(h)
            if _plain_linear(unembed, x):
                torch.mm(x, unembed.weight.T, out=z)
            else:
                z.copy_(unembed(x))
            return x

        for start in range(0, n, chunk_tokens):
            sl = slice(start, start + chunk_tokens)
            tgt = targets[sl].to(device)
            rows = len(tgt)
            z, p, p_final = z_buf[:rows], p_buf[:rows], p_final_buf[:rows]
            has = (tgt >= 0).cpu().numpy()
            where = np.arange(start, start + rows)[has]
            tgt_index = tgt.clamp(min=0)[:, None]

            # The final layer first: every other layer's KL is measured against its distribution.
            x_final = logits(z, resid[-1][sl], n_layers - 1)
            final = _logit_statistics(z, tgt_index, p=p_final, scratch=p)
            _store(out, n_layers - 1, final, sl, where, has)
            neg_entropy_f = -final["entropy"]  # sum p_f log p_f
            # (p_f W) when the unembedding is linear: sum(p_f z) for any layer is then a dot product with its x. The
            # product costs about 16 passes over the vocabulary (measured), so it pays only for deeper models.
            linear_cross = _plain_linear(unembed, x_final) and n_layers - 1 > CROSS_BY_PRODUCT_AFTER
            p_final_w = p_final @ unembed.weight if linear_cross else None
            for layer in range(n_layers - 1):
                x = logits(z, resid[layer][sl], layer)
                stats = _logit_statistics(z, tgt_index, p=p, scratch=p)
                _store(out, layer, stats, sl, where, has)
                cross = _rowdot(p_final, z) if p_final_w is None else torch.linalg.vecdot(p_final_w, x)
                kl = neg_entropy_f - cross + stats["log_z"]
                out["lens_kl_final"][sl, layer] = kl.clamp(min=0).cpu().numpy()
    return out


# --- record ---------------------------------------------------------------------------------------------------------

def _batch_size_of(inputs: Mapping) -> int:
    ids = inputs.get("input_ids")
    if ids is None:
        raise RecordingError("inputs have no input_ids: pass what the model's processor or tokenizer returns "
                             "(return_tensors='pt').")
    return int(ids.shape[0])


def _slice_inputs(inputs: Mapping, start: int, stop: int, n: int) -> dict:
    sliced = {}
    for key, value in inputs.items():
        if torch.is_tensor(value) and value.ndim >= 1 and value.shape[0] == n:
            sliced[key] = value[start:stop]
        elif torch.is_tensor(value) and stop - start < n:
            raise RecordingError(f"cannot split input {key!r} (first dimension {value.shape[0]}, but {n} sequences) "
                                 f"into batches: pass batch_size >= {n}, or one audio clip per sequence.")
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


def _versions() -> str:
    return json.dumps(versions())


def record(model, inputs: Mapping, *, segments=None, routing: str | None = "topk", lens: str | None = "logit",
           batch_size: int = 8, out: str | Path | None = None, backend: str = "nnsight", tokenizer=None,
           tuned_lens=None, lens_segments: Sequence[str] | None = None, chunk_tokens: int | None = None,
           attrs: Mapping | None = None) -> xr.Dataset:
    """One teacher-forced pass over ``inputs``, recorded into an xarray Dataset.

    Parameters
    ----------
    model : a transformers model whose family is in ``adt_probe.architectures.FAMILIES`` (or any dense causal LM).
    inputs : what the processor returns: ``input_ids`` (batch, seq), ``attention_mask`` (batch, seq), and audio
        features when present (one clip per sequence for batching).
    segments : (batch, seq) array of labels, or None to derive them with ``segment_tokens(tokenizer, ...)`` (all
        ``other`` without a tokenizer).
    routing : ``"topk"`` (top-k experts and weights), ``"full"`` (also fp32 ``router_logits``), or None.
    lens : ``"logit"``, ``"tuned"`` (needs ``tuned_lens``) or None.
    batch_size : sequences per forward pass.
    out : a ``.zarr`` path to stream the Dataset to, batch by batch (for inputs larger than memory); the return
        value is then the lazily opened store.
    backend : ``"nnsight"`` (default) or ``"hooks"`` (plain torch hooks); both give identical Datasets.
    tokenizer : used for segments and input checks.
    tuned_lens : an ``adt_probe.TunedLens`` when ``lens="tuned"``.
    lens_segments : compute the lens only for tokens in these segments (others hold NaN / -1): cost in proportion.
    chunk_tokens : tokens per lens chunk (default: ``default_chunk_tokens(vocab)``).
    attrs : extra attributes (for example ``{"step": 120}``).

    Returns
    -------
    xarray.Dataset with dims ``token`` (real tokens of all sequences, in order), ``layer``, ``expert``, ``k``.
    """
    if routing not in ROUTING_MODES:
        raise RecordingError(f"routing={routing!r}: choose one of {ROUTING_MODES}")
    if lens not in LENS_MODES:
        raise RecordingError(f"lens={lens!r}: choose one of {LENS_MODES}")
    if backend not in BACKENDS:
        raise RecordingError(f"backend={backend!r}: choose one of {BACKENDS}")
    if lens == "tuned" and tuned_lens is None:
        raise RecordingError("lens='tuned' needs tuned_lens=TunedLens(...) (train one with adt_probe.train_tuned_lens)")
    spec = architecture(model)
    if routing is not None and spec.router is None:
        routing = None  # a dense model: the lens alone
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    n = _batch_size_of(inputs)
    validate_inputs(model, inputs, tokenizer)
    ids_all = inputs["input_ids"]
    mask_all = inputs.get("attention_mask", torch.ones_like(ids_all))
    if segments is None:
        segments = (segment_tokens(tokenizer, ids_all, mask_all) if tokenizer is not None
                    else np.full(tuple(ids_all.shape), "other", dtype="<U6"))
    segments = np.asarray(segments)
    if segments.shape != tuple(ids_all.shape):
        raise RecordingError(f"segments have shape {segments.shape}, input_ids {tuple(ids_all.shape)}: one label per "
                             "token is needed.")
    capture = capture_nnsight if backend == "nnsight" else capture_hooks
    model.eval()
    parts, t0, n_tokens = [], time.time(), 0
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        batch = _slice_inputs(inputs, start, stop, n)
        # processors return fp32 audio features; a bf16/fp16 model needs them in its own dtype
        dtype = next(model.parameters()).dtype
        batch = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
        # Inputs go to the device of the first parameter (the embedding, under device_map="auto").
        device = next(model.parameters()).device
        resid, router_in = capture(model, spec, {k: v.to(device) if torch.is_tensor(v) else v
                                                 for k, v in batch.items()})
        part = _to_dataset(model, spec, batch, resid, router_in, segments[start:stop], start, n_tokens, routing,
                           lens, tuned_lens, lens_segments, chunk_tokens)
        n_tokens += part.sizes["token"]
        if out is not None:
            _append_zarr(part, Path(out), first=start == 0)
        else:
            parts.append(part)
    attrs_all = {"schema_version": SCHEMA_VERSION,
                 "model_path": str(getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "")),
                 "model_class": type(model).__name__, "architecture": spec.family,
                 "router_scoring": spec.scoring if spec.router else "none", "top_k": spec.top_k if spec.router else 0,
                 "n_experts": spec.n_experts if spec.router else 0, "routing": str(routing), "lens": str(lens),
                 "backend": backend, "versions": _versions(), "seconds": round(time.time() - t0, 3),
                 **{k: v if isinstance(v, (int, float, str)) else json.dumps(v) for k, v in (attrs or {}).items()}}
    if out is not None:
        import zarr

        store = zarr.open_group(str(out), mode="a")
        store.attrs.update(attrs_all)
        zarr.consolidate_metadata(str(out))
        from adt_probe.integrity import write_checksums

        write_checksums(out)
        return xr.open_zarr(str(out))
    ds = xr.concat(parts, dim="token", data_vars="minimal", coords="minimal", compat="override",
                   join="override") if len(parts) > 1 else parts[0]
    ds.attrs = attrs_all
    return ds


@torch.no_grad()
def _to_dataset(model, spec, batch, resid, router_in, segments, seq_offset, token_offset, routing, lens, tuned_lens,
                lens_segments, chunk_tokens) -> xr.Dataset:
    """One batch's Dataset; ``seq_offset`` / ``token_offset`` number its sequences and tokens after earlier ones."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask", torch.ones_like(ids)).bool()
    flat = mask.reshape(-1)
    n_layers = len(resid)
    seq_idx = torch.arange(ids.shape[0])[:, None].expand_as(ids)
    position = (mask.long().cumsum(1) - 1).clamp(min=0)
    # The next real token of the same sequence; -1 after the last one.
    nxt = torch.full_like(ids, -1)
    for row in range(ids.shape[0]):
        real = mask[row].nonzero()[:, 0]
        nxt[row, real[:-1]] = ids[row, real[1:]]
    n_tok = int(flat.sum())
    coords = {"token": np.arange(token_offset, token_offset + n_tok),
              "sequence": ("token", (seq_idx.reshape(-1)[flat] + seq_offset).cpu().numpy()),
              "position": ("token", position.reshape(-1)[flat].cpu().numpy()),
              "token_id": ("token", ids.reshape(-1)[flat].cpu().numpy()),
              "segment": ("token", segments.reshape(-1)[flat.cpu().numpy()].astype("<U6")),
              "layer": np.arange(n_layers),
              "moe_layer": ("layer", np.array([i in spec.moe_layers for i in range(n_layers)]))}
    data = {}
    if routing is not None:
        k, e = spec.top_k, spec.n_experts
        experts = np.full((n_tok, n_layers, k), -1, np.int16 if e < 32_000 else np.int32)
        weights = np.full((n_tok, n_layers, k), np.nan, np.float32)
        logits_all = np.full((n_tok, n_layers, e), np.nan, np.float32) if routing == "full" else None
        blocks = get_module(model, spec.layers)
        for layer, h in router_in.items():
            logits = spec.router_logits(get_module(blocks[layer], spec.router), h.reshape(-1, h.shape[-1]))
            logits = logits[flat.to(logits.device)].cpu()
            idx, w = spec.route(logits, bias=spec.selection_bias(blocks[layer]))
            # Store by descending weight, so k=0 is each token's top-1 expert.
            order = w.argsort(dim=-1, descending=True, stable=True)
            idx, w = idx.gather(-1, order), w.gather(-1, order)
            experts[:, layer], weights[:, layer] = idx.cpu().numpy(), w.cpu().numpy()
            if logits_all is not None:
                logits_all[:, layer] = logits.cpu().numpy()
        data["topk_experts"] = (("token", "layer", "k"), experts)
        data["topk_weights"] = (("token", "layer", "k"), weights)
        if logits_all is not None:
            data["router_logits"] = (("token", "layer", "expert"), logits_all)
        coords.update(expert=np.arange(e), k=np.arange(k))
    if lens is not None:
        select = flat.clone()
        if lens_segments is not None:
            select &= torch.from_numpy(np.isin(segments.reshape(-1), list(lens_segments)))
        sel_in_tok = select[flat].cpu().numpy()
        stats = lens_statistics([r.reshape(-1, r.shape[-1])[select.to(r.device)] for r in resid],
                                nxt.reshape(-1)[select],
                                spec, model, translator=tuned_lens, chunk_tokens=chunk_tokens)
        for name, values in stats.items():
            full = np.full((n_tok, n_layers), np.nan if values.dtype.kind == "f" else -1, values.dtype)
            full[sel_in_tok] = values
            data[name] = (("token", "layer"), full)
    return xr.Dataset(data, coords=coords)


def _append_zarr(part: xr.Dataset, path: Path, first: bool) -> None:
    if first:
        if path.exists():
            raise RecordingError(f"{path} exists: choose a new out= path (a recording is never overwritten).")
        part.to_zarr(str(path), mode="w-", consolidated=False, zarr_format=ZARR_FORMAT)
    else:
        part.drop_vars([v for v in ("layer", "expert", "k", "moe_layer") if v in part.coords]).to_zarr(
            str(path), append_dim="token", consolidated=False)
