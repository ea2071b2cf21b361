"""Lenses on the residual stream and their per-token statistics.

A lens reads the residual stream after decoder block ``l`` as a next-token distribution: an optional translation of
the hidden state (``transform_hidden``), then the model's final norm and unembedding. ``LogitLens`` translates
nothing; ``adt_probe.TunedLens`` learns one affine translator per layer. Both share the small ``Lens`` interface
(after the ``tuned-lens`` package's ``Lens``), so ``record(model, inputs, lens=...)`` takes either.

``lens_statistics`` turns residual streams into per token x layer statistics (log-prob and rank of the realised next
token, entropy, KL from the model's own output distribution, top-1 token) in chunks of tokens, so layers x tokens x
vocabulary is never held in memory.

Examples
--------
>>> from adt_probe.lens import LogitLens
>>> ds = record(model, batch, lens=LogitLens())                      # doctest: +SKIP
>>> ds = record(model, batch, lens=TunedLens.load("lens.safetensors"))  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from adt_probe.architectures import ArchitectureSpec

#: layers beyond which KL's cross term sum(p_f z) comes from one (p_f W) product per chunk instead of a pass per layer
CROSS_BY_PRODUCT_AFTER = 16
#: tokens x layers x vocabulary above which the fused (compiled) statistics pay for their compilation (about 5 s from
#: torch's cache, 35 s the first time, on 2 cores)
FUSE_ABOVE = 2**30


class Lens(nn.Module):
    """What every lens does: translate the residual stream of a layer before the final norm and the unembedding.

    Subclasses set ``name`` (stored as the recording's ``lens`` attribute) and override ``transform_hidden``.
    """

    name = "lens"

    def transform_hidden(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """Translate (tokens, hidden) residuals of block ``layer``; same shape and dtype out. Identity here."""
        return h

    def forward(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """The same as ``transform_hidden``."""
        return self.transform_hidden(h, layer)


class LogitLens(Lens):
    """The logit lens (nostalgebraist, 2020): the residual stream read directly through the final norm and unembedding.
    """

    name = "logit"


# --- the statistics of one chunk of logits ----------------------------------------------------------------------

def _plain_linear(unembed, x: torch.Tensor) -> bool:
    """True when the unembedding is exactly ``x @ weight.T`` in fp32 (bias-free, hook-free ``nn.Linear``)."""
    return (isinstance(unembed, torch.nn.Linear) and unembed.bias is None and unembed.weight.dtype == torch.float32
            and x.dtype == torch.float32 and not unembed._forward_hooks and not unembed._forward_pre_hooks)


#: vocabulary sizes up to which a row-wise dot product multiplies into a reused buffer and sums (many tiny ``bmm``
#: batches cost more: 0.9 vs 8.5 ms at 512 x 640), above which it is a ``bmm`` (no (rows, vocab) pass to write)
ROWDOT_BUFFER_UP_TO = 8192


def _rowdot(a: torch.Tensor, b: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product of two (rows, vocab) tensors, shape (rows,). ``scratch`` (rows, vocab) receives the
    products (it may be ``a`` or ``b``, which are then overwritten): no fresh temporary, whose pages would fault in
    on first touch."""
    if a.shape[-1] > ROWDOT_BUFFER_UP_TO:
        return torch.bmm(a[:, None, :], b[:, :, None])[:, 0, 0]
    return torch.mul(a, b, out=scratch).sum(-1)


#: width of the blocks whose maxima locate the argmax (``_max_argmax``)
ARGMAX_BLOCK = 64
#: vocabularies up to which ``_max_argmax`` with a scratch buffer locates the maximum by matching it, not by blocks
ARGMAX_BY_MATCH_UP_TO = 1536


def _max_argmax(z: torch.Tensor, scratch: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``z.max(dim=-1)`` of (rows, vocab) logits, by blocks: the maximum of every block of ``ARGMAX_BLOCK`` logits (a
    vectorised reduction; the last block may be narrower), the first block holding the row's maximum, the first
    maximum inside it. The same values and indices as ``z.max(-1)`` (first occurrence on ties), at a sixth of its cost
    on CPU, where argmax over a long row does not vectorise (0.96 vs 0.23 ns per logit, measured at 512 x 2,048).

    With ``scratch`` (rows, vocab) fp32 and at most ``ARGMAX_BY_MATCH_UP_TO`` columns, by matching instead: the row's
    maximum, then its first column as the largest of ``(z == max) * (vocab - column)``, three vectorised passes that
    beat the blocks' dozen small kernels on short rows (0.22 vs 0.78 ms at 2,048 x 640 and 0.34 vs 0.51 ms at
    2,048 x 1,024, but 1.5 vs 0.86 ms at 2,048 x 2,048; 2 threads, measured). A row holding NaN: value NaN, index of
    its last column (``z.max`` gives the NaN's)."""
    rows, vocab = z.shape
    if scratch is not None and vocab <= ARGMAX_BY_MATCH_UP_TO:
        zmax = z.amax(-1)
        weights = torch.arange(vocab, 0, -1, dtype=scratch.dtype, device=z.device)  # vocab - column
        torch.eq(z, zmax[:, None], out=scratch).mul_(weights)
        return zmax, (vocab - scratch.amax(-1)).long().clamp_(max=vocab - 1)
    n_full, rest = vocab // ARGMAX_BLOCK, vocab % ARGMAX_BLOCK  # not divmod: Dynamo cannot trace it on a SymInt
    if n_full < 4:
        return z.max(dim=-1)
    block_max = z[:, :n_full * ARGMAX_BLOCK].unflatten(1, (n_full, ARGMAX_BLOCK)).amax(-1)  # (rows, blocks)
    if rest:
        block_max = torch.cat([block_max, z[:, n_full * ARGMAX_BLOCK:].amax(-1, keepdim=True)], 1)
    # the winning block's columns; past the vocabulary (a narrow last block) they repeat its last column, after it
    columns = (block_max.argmax(-1)[:, None] * ARGMAX_BLOCK
               + torch.arange(ARGMAX_BLOCK, device=z.device)).clamp_(max=vocab - 1)
    values = z.gather(1, columns)
    inside = values.argmax(-1, keepdim=True)
    return values.gather(1, inside)[:, 0], columns.gather(1, inside)[:, 0]


def _eager_statistics(z: torch.Tensor, z_t: torch.Tensor, p_final: torch.Tensor | None, *, p: torch.Tensor,
                      scratch: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Statistics of logits z (rows, vocab) with eager kernels and reused buffers: see ``_fused_statistics``.

    Writes softmax(z) into ``p``, then the products of the row-wise dot products and the rank comparison into
    ``scratch``, which may be ``p`` (each is read before it is overwritten); when it is not, ``p`` keeps the softmax.
    """
    zmax, top1 = _max_argmax(z, scratch)
    torch.softmax(z, dim=-1, out=p)
    log_z = zmax - p.gather(1, top1[:, None])[:, 0].log()  # p(argmax) >= 1 / vocab: no underflow
    entropy = log_z - _rowdot(p, z, scratch=scratch)
    cross = _rowdot(p_final, z, scratch=scratch) if p_final is not None else None
    rank = torch.gt(z, z_t, out=scratch).sum(-1)
    return log_z, entropy, rank, top1, cross


def _fused_math(z: torch.Tensor, z_t: torch.Tensor, p_final: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """The statistics as plain tensor algebra, for ``torch.compile`` to fuse into two reading passes and no writes."""
    zmax, top1 = _max_argmax(z)
    rank = (z > z_t).sum(-1)
    e = torch.exp(z - zmax[:, None])
    s = e.sum(-1)
    log_z = zmax + s.log()
    entropy = log_z - (e * z).sum(-1) / s
    cross = (p_final * z).sum(-1) if p_final is not None else None
    return log_z, entropy, rank, top1, cross


_compiled = {}


def _fused_statistics(z: torch.Tensor, z_t: torch.Tensor, p_final: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """Statistics of logits z (rows, vocab) for target logits z_t (rows, 1), each (rows,).

    Returns ``log_z`` (log partition), ``entropy`` (nats), ``rank`` (logits above the target's: 0 = top), ``top1``
    (token id) and ``cross`` = sum(p_final z) (None without ``p_final``). One compiled kernel reads z twice (max,
    argmax and rank in one pass; the exponential sums in the other) and writes nothing of its size.
    """
    if "fn" not in _compiled:
        # fullgraph: a graph break would otherwise fall back to running _fused_math eagerly without a word, slower
        # than the eager statistics (it did, from a divmod Dynamo could not trace: SmolLM2's lens at 1.73x its floor)
        _compiled["fn"] = torch.compile(_fused_math, dynamic=True, fullgraph=True)
    try:
        return _compiled["fn"](z, z_t, p_final)
    except Exception as exc:  # noqa: BLE001 -- any compiler failure: say so once, then compute the same eagerly
        warnings.warn(f"torch.compile of the lens statistics failed ({type(exc).__name__}: {str(exc)[:200]}); "
                      "they run eagerly (slower); pass fused=False to skip compiling", RuntimeWarning, stacklevel=2)
        _compiled["fn"] = _fused_math
        return _fused_math(z, z_t, p_final)


def _can_fuse() -> bool:
    """``torch.compile`` on CPU needs a C++ compiler."""
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def fuse_by_default(n_tokens: int, n_layers: int, vocab: int) -> bool:
    """Whether ``lens_statistics(fused=None)`` compiles its statistics: when the work pays for the compilation."""
    return n_tokens * n_layers * vocab >= FUSE_ABOVE and _can_fuse()


#: elements of one (chunk, vocab) fp32 buffer (64 MiB) and the most tokens a chunk holds
CHUNK_ELEMENTS, MAX_CHUNK_TOKENS = 2**24, 4096


def default_chunk_tokens(vocab: int) -> int:
    """Tokens per lens chunk: as many as fit ``CHUNK_ELEMENTS`` logits (SmolLM2's 49,152: 341 tokens), at most
    ``MAX_CHUNK_TOKENS``: a small vocabulary takes whole batches at once (each chunk costs a dozen small kernels per
    layer, which dominate when the vocabulary is small: the organism's 640)."""
    return int(max(16, min(MAX_CHUNK_TOKENS, CHUNK_ELEMENTS // vocab)))


def chunk_slices(n: int, chunk_tokens: int) -> list[slice]:
    """``n`` tokens in the fewest chunks of at most ``chunk_tokens``, all of about one size (2,048 tokens at 341:
    six chunks of 293 and one of 290, not six of 341 and one of 2 tokens, whose unembedding would read the whole
    weight matrix for two rows)."""
    if n <= 0:
        return []
    n_chunks = -(-n // chunk_tokens)
    size = -(-n // n_chunks)
    return [slice(start, min(n, start + size)) for start in range(0, n, size)]


# --- per token x layer statistics of residual streams ------------------------------------------------------------

#: every lens variable: its dtype and its value where it is not measured (no target, or the final layer's KL)
LENS_VARIABLES = {"lens_logprob": (torch.float32, np.nan), "lens_rank": (torch.int32, -1),
                  "lens_entropy": (torch.float32, 0), "lens_kl_final": (torch.float32, 0),
                  "lens_top1": (torch.int32, 0)}


class _Chunk:
    """One chunk of tokens: its statistics, gathered as (layers, tokens) tensors and written into the output rows
    once (one copy per variable, not one per layer: a NumPy fancy assignment per layer and variable cost more than
    the statistics of a small vocabulary), and its targets."""

    def __init__(self, out: dict[str, np.ndarray], sl: slice, targets: torch.Tensor, n_layers: int):
        self.out, self.sl = out, sl
        self.has = (targets >= 0).cpu().numpy()
        self.where = np.arange(sl.start, sl.start + len(targets))[self.has]
        self.index = targets.clamp(min=0)[:, None]
        self.rows = {name: torch.zeros(n_layers, len(targets), dtype=dtype, device=targets.device)
                     for name, (dtype, _) in LENS_VARIABLES.items()}

    def store(self, layer: int, log_z, entropy, rank, top1, z_t) -> None:
        """Keep one layer's statistics (each (tokens,))."""
        self.rows["lens_logprob"][layer] = z_t[:, 0] - log_z
        self.rows["lens_rank"][layer] = rank
        self.rows["lens_entropy"][layer] = entropy
        self.rows["lens_top1"][layer] = top1

    def flush(self) -> None:
        """Copy the chunk's statistics into the output; target-based ones only where a target exists."""
        for name, rows in self.rows.items():
            values = rows.T.cpu().numpy()
            if name in ("lens_logprob", "lens_rank"):
                self.out[name][self.where] = values[self.has]
            else:
                self.out[name][self.sl] = values


def lens_statistics(resid: Sequence[torch.Tensor], targets: torch.Tensor, spec: ArchitectureSpec, model,
                    lens: Lens | None = None, chunk_tokens: int | None = None, fused: bool | None = None
                    ) -> dict[str, np.ndarray]:
    """Per token x layer lens statistics of residual streams.

    Parameters
    ----------
    resid : one tensor per layer, each (tokens, hidden): the residual stream after that block.
    targets : (tokens,) int64, the realised next token, or -1 where there is none (last token of a sequence).
    lens : the lens (``lens.transform_hidden(h, layer)`` is applied before the final norm; the last layer is the
        model's own output and is never translated); None is the logit lens.
    chunk_tokens : tokens per chunk (default: ``default_chunk_tokens(vocab)``); the workspace is at most three
        (chunk_tokens, vocab) fp32 buffers (341 x 49,152: 64 MiB each), one with ``fused`` on a deep model.
    fused : compute the statistics with one compiled kernel per layer and chunk (``torch.compile``; needs a C++
        compiler), or with eager kernels; None decides by size (``fuse_by_default``).

    Returns
    -------
    dict of arrays (tokens, layers): ``lens_logprob`` (nats, NaN without target), ``lens_rank`` (0 = top, -1 without
    target), ``lens_entropy`` (nats), ``lens_kl_final`` (KL(final || layer), nats), ``lens_top1`` (token id).

    Notes
    -----
    With z the lens logits and p = softmax(z): log Z = max z + log sum exp(z - max z), log p(t) = z_t - log Z,
    entropy = log Z - sum(p z), KL(final || layer) = sum(p_f log p_f) - sum(p_f z) + log Z. The target's logit z_t
    is gathered from z. The buffers are reused: a fresh (chunk, vocab)
    tensor is an mmap'd allocation whose pages fault in on first touch, which cost more than the arithmetic. When the
    unembedding is a plain linear map W, sum(p_f z) = (p_f W) . x for the normed residual x: one (chunk, hidden)
    product per chunk replaces a pass over the vocabulary per layer (for models deeper than
    ``CROSS_BY_PRODUCT_AFTER`` layers, where that pays).
    """
    norm, unembed = spec.readout(model)  # with the family's logit scale / soft-cap, if any
    n, n_layers = targets.shape[0], len(resid)
    out = {name: torch.full((n, n_layers), missing, dtype=dtype).numpy()
           for name, (dtype, missing) in LENS_VARIABLES.items()}
    if n == 0:
        return out
    with torch.no_grad():
        vocab = getattr(unembed, "out_features", None) or unembed(norm(resid[-1][:1])).shape[-1]
        chunk_tokens = chunk_tokens or default_chunk_tokens(vocab)
        if fused is None:
            fused = fuse_by_default(n, n_layers, vocab)
        elif fused and not _can_fuse():
            warnings.warn("fused=True but no C++ compiler (g++) for torch.compile: the lens statistics run unfused "
                          "(slower); install g++ to fuse them", RuntimeWarning, stacklevel=2)
            fused = False
        workspace: dict[str, torch.Tensor] = {}
        for sl in chunk_slices(n, chunk_tokens):
            chunk = _Chunk(out, sl, targets[sl].to(resid[-1].device), n_layers)
            _lens_chunk(resid, chunk, lens, norm, unembed, vocab, fused, workspace)
    return out


def _buffer(workspace: dict, name: str, rows: int, vocab: int, device) -> torch.Tensor:
    """A (rows, vocab) fp32 buffer reused across the chunks of one call (see the Notes of ``lens_statistics``)."""
    buf = workspace.get(name)
    if buf is None or buf.shape[0] < rows:
        buf = workspace[name] = torch.empty(rows, vocab, device=device)
    return buf[:rows]


def _lens_chunk(resid, chunk: _Chunk, lens: Lens | None, norm, unembed, vocab: int, fused: bool,
                workspace: dict) -> None:
    """Fill ``chunk``'s rows of every layer: the final layer first, as every other layer's KL is measured against it."""
    n_layers = len(resid)
    rows = len(chunk.index)
    device = resid[-1].device
    z = _buffer(workspace, "z", rows, vocab, device)

    def logits(h: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill z with the lens logits of ``layer``; return the normed residual x (rows, hidden) and z_t (rows, 1)."""
        if lens is not None and layer < n_layers - 1:  # the last layer is the model's own output
            h = lens.transform_hidden(h, layer)
        x = norm(h)
        if _plain_linear(unembed, x):
            torch.mm(x, unembed.weight.T, out=z)
        else:
            z.copy_(unembed(x))
        # gathered, not recomputed: the rank compares z > z_t, and a recomputed z_t may differ in the last bit
        return x, z.gather(1, chunk.index)

    def statistics(z_t, p_final, p_name="p"):
        """The eager statistics write the softmax into buffer ``p_name`` and use buffer "p" as scratch."""
        if fused:
            return _fused_statistics(z, z_t, p_final)
        return _eager_statistics(z, z_t, p_final, p=_buffer(workspace, p_name, rows, vocab, device),
                                 scratch=_buffer(workspace, "p", rows, vocab, device))

    sl = chunk.sl
    x_final, z_t = logits(resid[-1][sl], n_layers - 1)
    # (p_f W) when the unembedding is linear: sum(p_f z) for any layer is then a dot product with its x. The
    # product costs about 16 passes over the vocabulary (measured), so it pays only for deeper models.
    linear_cross = _plain_linear(unembed, x_final) and n_layers - 1 > CROSS_BY_PRODUCT_AFTER
    # the eager statistics leave the final layer's softmax in its own buffer: p_f without another pass
    log_z_f, entropy_f, rank, top1, _ = statistics(z_t, None, p_name="p_final")
    chunk.store(n_layers - 1, log_z_f, entropy_f, rank, top1, z_t)
    if fused:  # the fused kernel writes no softmax: p_f from z, into z itself when only (p_f W) is needed
        p_final = z if linear_cross else _buffer(workspace, "p_final", rows, vocab, device)
        torch.sub(z, log_z_f[:, None], out=p_final).exp_()
    else:
        p_final = _buffer(workspace, "p_final", rows, vocab, device)
    p_final_w = p_final @ unembed.weight if linear_cross else None
    for layer in range(n_layers - 1):
        x, z_t = logits(resid[layer][sl], layer)
        log_z, entropy, rank, top1, cross = statistics(z_t, None if linear_cross else p_final)
        chunk.store(layer, log_z, entropy, rank, top1, z_t)
        if linear_cross:
            cross = torch.linalg.vecdot(p_final_w, x)
        chunk.rows["lens_kl_final"][layer] = (-entropy_f - cross + log_z).clamp(min=0)  # sum(p_f log p_f) = -H_f
    chunk.flush()


def check_lens(lens) -> None:
    """Raise ``TypeError`` naming the fix unless ``lens`` is a ``Lens`` or None."""
    if lens is None or isinstance(lens, Lens):
        return
    if isinstance(lens, str):
        hint = {"logit": "lens=LogitLens()", "tuned": "lens=TunedLens.load(path) or the lens train_tuned_lens returns"
                }.get(lens, "lens=LogitLens(), a TunedLens, or None")
        raise TypeError(f"lens={lens!r}: pass a lens object, {hint} (from adt_probe import LogitLens, TunedLens).")
    raise TypeError(f"lens must be an adt_probe.lens.Lens (LogitLens(), a TunedLens) or None, got "
                    f"{type(lens).__name__}")

