"""Gating drift between two recordings of the same tokens (a base and an RL model), per layer x segment.

Per token and MoE layer the two routers give two distributions over experts; ``gating_drift`` averages, per layer
and segment, how far apart they are, and attaches a 95% bootstrap interval that resamples sequences:

=================  ======================================================================  =========
``js``             Jensen-Shannon divergence of the router distributions                   bits, [0, 1]
``kl``             KL(base || rl) of the router distributions (needs ``routing="full"``)   nats
``topk_jaccard``   |top-k(base) & top-k(rl)| / |top-k(base) | top-k(rl)|                    [0, 1]
``top1_agreement`` the two routers' top-1 experts are the same                             [0, 1]
``entropy_delta``  H(rl) - H(base) of the router distributions                              nats
``load_shift``     share of top-k slots each expert gets, rl minus base (per expert)        fraction
=================  ======================================================================  =========

Router distributions come from the fp32 router logits when the recordings hold them (``routing="full"``): softmax,
or for sigmoid routers the sigmoid scores normalised to sum 1. With top-k only they are the renormalised top-k
weights (zero elsewhere): the attribute ``distribution`` says which, KL is then undefined (NaN) and JS is a bounded
estimate (see ``tests/test_drift.py``). Streaming: recordings are read one store chunk at a time (only the routing
variables) and reduced to per (sequence, segment) sums, so lazily opened zarr stores larger than memory work; with
``client=`` (a ``dask.distributed`` client or a ``concurrent.futures`` executor) workers read and reduce the chunks.

Examples
--------
>>> drift = gating_drift(base, rl, noise=(base, base_again))        # doctest: +SKIP
>>> drift.js.sel(segment="think").to_series()                        # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import sparse

from adt_probe.segments import segment_names
from adt_probe.stats import bootstrap_ratio

TOKEN_METRICS = ("js", "kl", "topk_jaccard", "top1_agreement", "entropy_delta")
ALL = "all"


class DriftInputError(ValueError):
    """Two recordings that cannot be compared; the message says what differs."""


def check_same_tokens(a: xr.Dataset, b: xr.Dataset, what: str = "base and rl") -> None:
    """Raise ``DriftInputError`` unless ``a`` and ``b`` record the same tokens with the same router shape."""
    if a.sizes.get("token") != b.sizes.get("token"):
        raise DriftInputError(f"{what} recordings have {a.sizes.get('token')} and {b.sizes.get('token')} tokens: "
                              "record both models on the same inputs.")
    for dim in ("layer", "expert", "k"):
        if a.sizes.get(dim) != b.sizes.get(dim):
            raise DriftInputError(f"{what} recordings differ in {dim}: {a.sizes.get(dim)} vs {b.sizes.get(dim)} "
                                  f"({a.attrs.get('model_class')} vs {b.attrs.get('model_class')}): the models do not "
                                  "share an architecture.")
    for coord in ("token_id", "sequence", "position"):
        if not np.array_equal(a[coord].values, b[coord].values):
            first = int(np.flatnonzero(a[coord].values != b[coord].values)[0])
            raise DriftInputError(f"{what} recordings differ in {coord} (first at token {first}): they are not the "
                                  "same token sequences. Record both models on the same inputs (and tokenizer).")
    if "topk_experts" not in a or "topk_experts" not in b:
        raise DriftInputError(f"{what}: gating drift needs routing; record with routing='topk' or 'full'.")


def router_probs(ds: xr.Dataset, scoring: str) -> tuple[np.ndarray, str]:
    """Router distributions of a (chunk of a) recording, shape (tokens, layers, experts), and their source."""
    if "router_logits" in ds:
        z = ds["router_logits"].values.astype(np.float64)
        if scoring == "sigmoid":
            p = 1.0 / (1.0 + np.exp(-z))
        else:
            p = np.exp(z - np.nanmax(z, axis=-1, keepdims=True))
        return p / p.sum(-1, keepdims=True), "router_logits"
    experts, weights = ds["topk_experts"].values, ds["topk_weights"].values
    n_experts = ds.sizes["expert"]
    p = np.zeros((*experts.shape[:2], n_experts))
    valid = experts >= 0
    w = np.where(valid, weights, 0.0)
    w = w / np.where(w.sum(-1, keepdims=True) > 0, w.sum(-1, keepdims=True), 1.0)
    np.put_along_axis(p, np.where(valid, experts, 0).astype(np.int64), w, axis=-1)
    p[~valid.any(-1)] = np.nan  # dense layers
    return p, "topk"


def _entropy(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(-1)


def token_metrics(a: xr.Dataset, b: xr.Dataset, scoring: str) -> tuple[dict[str, np.ndarray], str]:
    """Per token x layer drift metrics between two chunks of recordings; NaN on dense layers."""
    pa, source = router_probs(a, scoring)
    pb, _ = router_probs(b, scoring)
    m = 0.5 * (pa + pb)
    with np.errstate(divide="ignore", invalid="ignore"):
        def kl(p, q):
            return np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0).sum(-1)

        js = (0.5 * kl(pa, m) + 0.5 * kl(pb, m)) / np.log(2)
        kl_ab = kl(pa, pb) if source == "router_logits" else np.full(js.shape, np.nan)
    ea, eb = a["topk_experts"].values, b["topk_experts"].values
    dense = (ea < 0).all(-1)
    inter = (ea[..., :, None] == eb[..., None, :]).any(-1).sum(-1)
    k = ea.shape[-1]
    out = {"js": js, "kl": kl_ab, "topk_jaccard": inter / (2 * k - inter),
           "top1_agreement": (ea[..., 0] == eb[..., 0]).astype(np.float64),
           "entropy_delta": _entropy(pb) - _entropy(pa)}
    for v in out.values():
        v[dense] = np.nan
    nan_dist = np.isnan(pa).any(-1) | np.isnan(pb).any(-1)
    for name in ("js", "kl", "entropy_delta"):
        out[name][nan_dist] = np.nan
    return out, source


def expert_counts(ds: xr.Dataset) -> np.ndarray:
    """How many of each token's top-k slots each expert fills, shape (tokens, layers, experts), float."""
    experts = ds["topk_experts"].values
    ids = np.arange(ds.sizes["expert"])
    counts = np.zeros((*experts.shape[:2], len(ids)))
    for j in range(experts.shape[-1]):  # one slot at a time: never (tokens, layers, k, experts) in memory
        counts += experts[..., j, None] == ids
    return counts


def segment_index(ds: xr.Dataset, names: list[str] | None = None) -> np.ndarray:
    """Index into ``names`` (default ``segment_names(ds.segment)``: the chat segments, then the user's own labels) of
    every token's segment, shape (tokens,)."""
    names = names if names is not None else segment_names(ds["segment"].values)
    found, inverse = np.unique(ds["segment"].values.astype(str), return_inverse=True)
    missing = set(found) - set(names)
    if missing:
        raise DriftInputError(f"segment labels {sorted(missing)} are not among {names}")
    return np.array([names.index(s) for s in found], np.int64)[inverse]


# --- the streaming kernel: per (sequence, segment) sums over blocks of tokens ----------------------------------------
#
# Blocks of tokens (a whole store chunk at a time) are read once, with only the variables drift needs, and reduced to
# per (sequence, segment) sums: the bootstrap then resamples sequences from those sums. ``_block_sums`` works on
# plain arrays and is what a pool of processes (``client=``) runs on each block; the next block is read in a
# background thread while the current one is computed.

_DRIFT_VARS = ("topk_experts", "topk_weights", "router_logits")


def _rowsum(rows) -> np.ndarray:
    """Sum of k rows, in the order numpy sums a last axis of length k (pairwise blocks of 8): bit-identical to
    ``x.sum(-1)`` of the (..., k) layout."""
    k = len(rows)
    if k < 8:
        out = rows[0] + 0.0
        for r in rows[1:]:
            out = out + r
        return out
    r = list(rows[:8])
    for i in range(8, k - k % 8, 8):
        r = [r[j] + rows[i + j] for j in range(8)]
    out = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    for i in range(k - k % 8, k):
        out = out + rows[i]
    return out


def _xlogx(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * np.log(p), 0.0)


def _normalised_rows(experts: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Valid mask and weights renormalised to sum 1 (float64, 0 on empty slots) of a (k, n) layout, exactly as
    ``router_probs`` scatters them over experts (normalised in the weights' dtype)."""
    valid = experts >= 0
    w = np.where(valid, weights, 0.0)
    total = _rowsum(list(w))
    return valid, (w / np.where(total > 0, total, 1.0)).astype(np.float64)


def _topk_kernel(ea: np.ndarray, wa: np.ndarray, eb: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """The metrics of ``TOKEN_METRICS`` on the top-k sets, (5, n), from (k, n) experts and weights of both models.

    Loops over the k x k slot pairs with whole-row numpy operations (no (n, k, k) temporaries, no reductions over
    a short last axis); JS(a, b) = H(m) - (H(a) + H(b)) / 2 with m = (a + b) / 2: on base's experts
    m = (w_a + w_b at them) / 2, on the experts only rl selected m = w_b / 2.
    """
    k, n = ea.shape
    va, wa = _normalised_rows(ea, wa)
    vb, wb = _normalised_rows(eb, wb)
    in_a = np.zeros((k, n), bool)  # rl's slot j holds an expert base also selected
    inter = np.zeros(n, np.int64)  # |top-k(a) & top-k(b)|, counted as the all-expert path does
    m = np.empty((k, n))  # m on base's experts
    hit, eq, w_at, tmp = np.empty(n, bool), np.empty(n, bool), np.empty(n), np.empty(n)
    for i in range(k):
        hit[:] = False
        w_at[:] = 0.0
        for j in range(k):
            np.equal(ea[i], eb[j], out=eq)
            hit |= eq
            eq &= va[i]
            in_a[j] |= eq
            np.multiply(wb[j], eq, out=tmp)
            w_at += tmp
        inter += hit
        np.add(wa[i], w_at, out=m[i])
        m[i] *= 0.5
    only_b = np.where(in_a, 0.0, 0.5 * wb)
    xa, xb = _rowsum(list(_xlogx(wa))), _rowsum(list(_xlogx(wb)))  # -H(a), -H(b)
    m_log_m = _rowsum(list(_xlogx(m))) + _rowsum(list(_xlogx(only_b)))
    out = np.empty((len(TOKEN_METRICS), n))
    out[0] = (0.5 * xa + 0.5 * xb - m_log_m) / np.log(2)
    out[1] = np.nan
    out[2] = inter / (2 * k - inter)
    out[3] = ea[0] == eb[0]
    out[4] = xa - xb
    out[:, ~(ea >= 0).any(0)] = np.nan  # dense layers
    no_dist = ~va.any(0) | ~vb.any(0)
    for row in (0, 1, 4):  # js, kl, entropy_delta
        out[row, no_dist] = np.nan
    return out


def _slot_major(x: np.ndarray) -> np.ndarray:
    """(tokens, layers, k) -> (k, tokens * layers), contiguous."""
    return np.ascontiguousarray(np.moveaxis(x, -1, 0)).reshape(x.shape[-1], -1)


def topk_token_metrics(a: xr.Dataset, b: xr.Dataset) -> dict[str, np.ndarray]:
    """``token_metrics`` of two top-k-only chunks on the k selected experts: O(k^2) per token and layer instead of
    O(experts) (the distributions are zero outside the top-k, so every sum runs over the union of the two sets).

    Returns ``js``, ``kl`` (NaN), ``topk_jaccard``, ``top1_agreement``, ``entropy_delta``, each (tokens, layers);
    equal to ``token_metrics`` (tested).
    """
    shape = a["topk_experts"].shape[:2]
    out = _topk_kernel(*(_slot_major(ds[v].values) for ds in (a, b) for v in ("topk_experts", "topk_weights")))
    return {name: out[i].reshape(shape) for i, name in enumerate(TOKEN_METRICS)}


def _chunk_metrics(ca: dict, cb: dict, scoring: str, n_experts: int) -> tuple[np.ndarray, str]:
    """Metrics (5, tokens, layers) of one chunk of arrays: on the top-k sets when neither holds full router logits."""
    if "router_logits" in ca or "router_logits" in cb:
        dims = {"topk_experts": ("token", "layer", "k"), "topk_weights": ("token", "layer", "k"),
                "router_logits": ("token", "layer", "expert")}
        da, db = (xr.Dataset({v: (dims[v], x) for v, x in c.items()}, coords={"expert": np.arange(n_experts)})
                  for c in (ca, cb))
        metrics, source = token_metrics(da, db, scoring)
        return np.stack([metrics[name] for name in TOKEN_METRICS]), source
    shape = ca["topk_experts"].shape[:2]
    out = _topk_kernel(*(_slot_major(c[v]) for c in (ca, cb) for v in ("topk_experts", "topk_weights")))
    return out.reshape(len(TOKEN_METRICS), *shape), "topk"


def _slot_sums(experts: np.ndarray, cell: np.ndarray, n_cells: int, n_experts: int) -> np.ndarray:
    """Top-k slots each expert fills, summed per cell: (n_cells, layers, experts), with one ``bincount`` instead of
    a (tokens, layers, experts) indicator."""
    experts = experts.astype(np.int64)
    n_layers = experts.shape[1]
    index = (cell[:, None, None] * n_layers + np.arange(n_layers)[None, :, None]) * n_experts + experts
    return np.bincount(index[experts >= 0], minlength=n_cells * n_layers * n_experts).reshape(
        n_cells, n_layers, n_experts)


def _block_sums(ba: dict, bb: dict, seq: np.ndarray, seg: np.ndarray, n_groups: int, n_experts: int,
                chunk_tokens: int, scoring: str) -> dict:
    """Per (sequence, group) sums of one block of tokens.

    ``ba``, ``bb``: arrays of the block (variable -> (tokens, layers, ...)); ``seq``: sequence index per token,
    counted from the block's first sequence; ``seg``: group per token in [0, n_groups). Returns ``sums`` and
    ``counts`` (span, n_groups, metrics, layers), ``load_a``, ``load_b`` (span, n_groups, layers, experts), ``n``
    (span, n_groups), ``source``; span = ``seq.max() + 1``.
    """
    span = int(seq.max()) + 1
    n_layers = ba["topk_experts"].shape[1]
    n_cells = span * n_groups
    cell_all = seq.astype(np.int64) * n_groups + seg
    shape = (span, n_groups, len(TOKEN_METRICS), n_layers)
    sums, counts = np.zeros(shape), np.zeros(shape)
    loads = [np.zeros((n_cells, n_layers, n_experts)) for _ in range(2)]
    source = "topk"
    for start in range(0, len(seq), chunk_tokens):
        sl = slice(start, start + chunk_tokens)
        ca, cb = ({v: x[sl] for v, x in blk.items()} for blk in (ba, bb))
        metrics, source = _chunk_metrics(ca, cb, scoring, n_experts)  # (metrics, tokens, layers)
        cell = cell_all[sl]
        n = len(cell)
        # A sparse (cells x tokens) indicator times the values: one product for all metrics and layers.
        indicator = sparse.csr_matrix((np.ones(n), (cell, np.arange(n))), shape=(n_cells, n))
        values = metrics.transpose(1, 0, 2).reshape(n, -1)
        ok = ~np.isnan(values)
        sums += (indicator @ np.where(ok, values, 0.0)).reshape(shape)
        counts += (indicator @ ok.astype(np.float64)).reshape(shape)
        for load, c in zip(loads, (ca, cb)):
            load += _slot_sums(c["topk_experts"], cell, n_cells, n_experts)
    n_tok = np.bincount(cell_all, minlength=n_cells).astype(np.float64).reshape(span, n_groups)
    load_a, load_b = (x.reshape(span, n_groups, n_layers, n_experts) for x in loads)
    return {"sums": sums, "counts": counts, "load_a": load_a, "load_b": load_b, "n": n_tok, "source": source}


def _block_of(ds: xr.Dataset, names: tuple[str, ...], blk: slice) -> xr.Dataset:
    """The variables drift reads, over one block of tokens (lazy when ``ds`` is)."""
    return ds[[v for v in names if v in ds]].isel(token=blk).drop_vars(list(ds.coords), errors="ignore")


def _read(block: xr.Dataset) -> dict:
    """Arrays of a block; dask-backed variables are computed with the synchronous scheduler (no thread pool, no
    graph beyond the block's chunks; inside a dask worker, no nested scheduling)."""
    import dask

    with dask.config.set(scheduler="synchronous"):
        return {name: np.asarray(var.values) for name, var in block.data_vars.items()}


def _block_task(block_a: xr.Dataset, block_b: xr.Dataset, *args) -> dict:
    """One block, read and reduced where it runs (a worker process reads its own chunks from the store)."""
    return _block_sums(_read(block_a), _read(block_b), *args)


class _Blocks:
    """The arguments of one block task: a plain object, so a dask client ships it as it is (no graph unpacking)."""

    def __init__(self, *args):
        self.args = args

    def run(self) -> dict:
        return _block_task(*self.args)


def _run_block(blocks: _Blocks) -> dict:
    return blocks.run()


_PREFETCH = True  # read the next block in a background thread while this one is computed
_IN_FLIGHT = 16  # blocks submitted to a client and not yet collected


def _done(first: int, future) -> tuple[int, dict]:
    part = future.result()
    if hasattr(future, "release"):  # distributed: let the worker drop it
        future.release()
    return first, part


class _InPlace:
    """An executor that runs each call at once (no prefetching)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def submit(self, fn, *args):
        from concurrent.futures import Future

        future = Future()
        future.set_result(fn(*args))
        return future


def _read_block(ds: xr.Dataset, chunk_tokens: int) -> int:
    """Tokens read from storage at a time: a whole store chunk when that is larger (each is decompressed once)."""
    chunks = ds["topk_experts"].chunks
    return max(chunk_tokens, int(chunks[0][0]) if chunks else chunk_tokens)


def _accumulate(a: xr.Dataset, b: xr.Dataset, by: str | None, chunk_tokens: int, client=None):
    """Per (sequence, segment) sums and counts of every metric and of expert load, over blocks of tokens.

    Returns ``sums``, ``counts`` (metric -> (seq, group, layer)), the loads (``load_a``, ``load_b``: (seq, group,
    layer, expert); ``n``: (seq, group)) and the distribution's source; with ``by="segment"`` the last group is
    "all" (the sum over segments), otherwise the only group is "all".
    """
    from concurrent.futures import ThreadPoolExecutor

    scoring = a.attrs.get("router_scoring", "softmax")
    seq_ids, seq_index = np.unique(a["sequence"].values, return_inverse=True)
    n_seq, n_layers, n_experts = len(seq_ids), a.sizes["layer"], a.sizes["expert"]
    if by == "segment":
        names = segment_names(a["segment"].values)
        seg_all, n_groups = segment_index(a, names), len(names)
    else:
        seg_all, n_groups = np.zeros(a.sizes["token"], np.int64), 1
    want = tuple(v for v in _DRIFT_VARS if v in a or v in b)
    total = n_groups + (by == "segment")  # with segments, the last group is "all", filled at the end
    sums = np.zeros((n_seq, total, len(TOKEN_METRICS), n_layers))
    counts = np.zeros_like(sums)
    load_a = np.zeros((n_seq, total, n_layers, n_experts))
    load_b, load_n = np.zeros_like(load_a), np.zeros((n_seq, total))
    source = "topk"
    n, block = a.sizes["token"], _read_block(a, chunk_tokens)
    jobs = []
    for start in range(0, n, block):
        blk = slice(start, min(n, start + block))
        first = int(seq_index[blk].min())
        jobs.append((first, _Blocks(_block_of(a, want, blk), _block_of(b, want, blk), seq_index[blk] - first,
                                    seg_all[blk], n_groups, n_experts, chunk_tokens, scoring)))

    def add(first: int, part: dict) -> None:
        nonlocal source
        cells = slice(first, first + part["n"].shape[0])
        for whole, name in ((sums, "sums"), (counts, "counts"), (load_a, "load_a"), (load_b, "load_b"),
                            (load_n, "n")):
            whole[cells, :n_groups] += part[name]
        source = part["source"]

    if client is None:  # in this process; the next block is read while this one is computed
        with ThreadPoolExecutor(1) if _PREFETCH else _InPlace() as reader:
            pending = reader.submit(lambda j: (_read(j.args[0]), _read(j.args[1])), jobs[0][1]) if jobs else None
            for i, (first, job) in enumerate(jobs):
                ba, bb = pending.result()
                if i + 1 < len(jobs):
                    pending = reader.submit(lambda j: (_read(j.args[0]), _read(j.args[1])), jobs[i + 1][1])
                add(first, _block_sums(ba, bb, *job.args[2:]))
                del ba, bb
    else:  # a dask.distributed Client or a concurrent.futures executor: each worker reads and reduces its blocks
        from collections import deque

        # distributed would hash each job to name its task; pure=False names it at random instead
        extra = {"pure": False} if type(client).__module__.startswith("distributed") else {}
        in_flight: deque = deque()
        for first, job in jobs:  # a bounded window of blocks in flight: their sums wait here in order
            in_flight.append((first, client.submit(_run_block, job, **extra)))
            if len(in_flight) >= _IN_FLIGHT:
                add(*_done(*in_flight.popleft()))
        while in_flight:
            add(*_done(*in_flight.popleft()))
    if by == "segment":  # "all": every token once, the sum over segments
        for x in (sums, counts, load_a, load_b, load_n):
            x[:, -1] = x[:, :-1].sum(1)
    sums_d = {name: sums[:, :, i] for i, name in enumerate(TOKEN_METRICS)}
    counts_d = {name: counts[:, :, i] for i, name in enumerate(TOKEN_METRICS)}
    return sums_d, counts_d, (load_a, load_b, load_n), source


def gating_drift(base: xr.Dataset, rl: xr.Dataset, *, by: str | None = "segment",
                 noise: tuple[xr.Dataset, xr.Dataset] | None = None, n_boot: int = 1000, seed: int = 0,
                 chunk_tokens: int = 1024, client=None) -> xr.Dataset:
    """Gating drift between ``base`` and ``rl`` recordings of the same token sequences.

    Parameters
    ----------
    base, rl : recordings (``adt_probe.record``) with routing, of the same inputs.
    by : ``"segment"`` (one row per segment plus ``"all"``) or None (``"all"`` only).
    noise : a pair that should not differ (the same model recorded twice with another batch composition or dtype);
        its metrics become ``noise_<name>`` (estimate) and ``noise_<name>_hi`` (upper bound): the noise floor.
    n_boot : bootstrap replicates (sequences resampled with replacement).
    seed : seed of the bootstrap.
    chunk_tokens : tokens computed at a time (bounds memory); storage is read a whole store chunk at a time.
    client : where the blocks are computed. None: in this process, reading the next block while computing one.
        A ``dask.distributed.Client`` (``LocalCluster(n_workers=k, threads_per_worker=1, processes=True)``, or a
        cluster of many machines that see the same store) or any ``concurrent.futures`` executor: each block's
        chunks are read and reduced to per-sequence sums by a worker and only those sums come back; the result
        equals the in-process one (tested).

    Returns
    -------
    xarray.Dataset with dims ``layer``, ``segment`` (and ``expert`` for load): variables ``js``, ``kl``,
    ``topk_jaccard``, ``top1_agreement``, ``entropy_delta``, ``load_shift``, ``base_load``, ``rl_load``, each metric
    with ``<name>_lo`` / ``<name>_hi``; ``n_tokens`` (segment); attrs ``distribution``, ``n_sequences``, ``n_boot``.
    """
    if by not in ("segment", None):
        raise ValueError(f"by={by!r}: use 'segment' or None")
    check_same_tokens(base, rl)
    sums, counts, (la, lb, ln), source = _accumulate(base, rl, by, chunk_tokens, client)
    segments = [*segment_names(base["segment"].values), ALL] if by == "segment" else [ALL]
    layer = base["layer"].values
    data, dims = {}, ("layer", "segment")
    for name in TOKEN_METRICS:
        # sums: (seq, group, layer) -> estimates (group, layer) -> transpose to (layer, group)
        est, lo, hi = bootstrap_ratio(sums[name], counts[name], n_boot=n_boot, seed=seed)
        for suffix, values in (("", est), ("_lo", lo), ("_hi", hi)):
            data[name + suffix] = (dims, values.T)
    # load: (seq, group, layer, expert) summed slots / (k * tokens)
    k = base.sizes["k"]
    share = {}
    for label, load in (("base_load", la), ("rl_load", lb)):
        share[label] = bootstrap_ratio(load, k * ln[..., None, None], n_boot=0)[0]
        data[label] = (("layer", "segment", "expert"), share[label].transpose(1, 0, 2))
    est, lo, hi = bootstrap_ratio(lb - la, k * ln[..., None, None], n_boot=n_boot, seed=seed)
    for suffix, values in (("", est), ("_lo", lo), ("_hi", hi)):
        data["load_shift" + suffix] = (("layer", "segment", "expert"), values.transpose(1, 0, 2))
    n_tokens = ln.sum(0)
    ds = xr.Dataset(data, coords={"layer": layer, "segment": segments, "expert": base["expert"].values,
                                  "moe_layer": ("layer", base["moe_layer"].values)})
    ds["n_tokens"] = ("segment", n_tokens.astype(np.int64))
    if noise is not None:
        floor = gating_drift(noise[0], noise[1], by=by, n_boot=n_boot, seed=seed + 1, chunk_tokens=chunk_tokens,
                             client=client)
        for name in (*TOKEN_METRICS, "load_shift"):
            ds[f"noise_{name}"] = floor[name]
            ds[f"noise_{name}_hi"] = floor[f"{name}_hi"]
            ds[f"noise_{name}_lo"] = floor[f"{name}_lo"]
    ds.attrs = {"schema_version": base.attrs.get("schema_version", "1"), "kind": "gating_drift",
                "distribution": source, "n_sequences": int(np.unique(base["sequence"].values).size),
                "n_boot": n_boot, "seed": seed, "interval": "95% percentile bootstrap over sequences",
                "base_model": str(base.attrs.get("model_path", "")), "rl_model": str(rl.attrs.get("model_path", "")),
                "units": "js: bits; kl, entropy_delta: nats; others: fractions"}
    return ds


def rank_layers(drift: xr.Dataset, metric: str = "js", segment: str = ALL) -> list[int]:
    """MoE layers ordered from most to least drifted by ``metric`` (for agreement metrics, least agreement first)."""
    values = drift[metric].sel(segment=segment).where(drift["moe_layer"])
    if metric in ("topk_jaccard", "top1_agreement"):
        values = -values
    order = np.argsort(-np.nan_to_num(values.values, nan=-np.inf))
    return [int(drift["layer"].values[i]) for i in order if drift["moe_layer"].values[i]]


def above_noise(drift: xr.Dataset, metric: str = "js", segment: str = ALL) -> xr.DataArray:
    """Per layer: True where the drift's lower bound clears the noise floor's upper bound (needs ``noise=``)."""
    if f"noise_{metric}_hi" not in drift:
        raise ValueError("this drift was computed without noise=(a, b): no noise floor to compare against")
    if metric in ("topk_jaccard", "top1_agreement"):  # agreement: drift means *lower* than the noise pair
        return (drift[f"{metric}_hi"] < drift[f"noise_{metric}_lo"]).sel(segment=segment)
    return (drift[f"{metric}_lo"] > drift[f"noise_{metric}_hi"]).sel(segment=segment)


def band_contrast(base: xr.Dataset, rl: xr.Dataset, *, lower: list[int], upper: list[int], metric: str = "js",
                  segment: str = ALL, n_boot: int = 1000, seed: int = 0, chunk_tokens: int = 1024,
                  client=None) -> dict:
    """Mean drift in an upper versus a lower band of layers, and their difference, with paired intervals.

    The paper's first claim ("RL mainly reshapes the routers of the upper layers") as one number: the
    token-weighted mean of ``metric`` over the ``upper`` layers minus that over the ``lower`` layers, for tokens of
    ``segment``. Both means are computed on the same bootstrap replicates (sequences resampled), so the interval of
    the difference accounts for their correlation. ``client``: as in :func:`gating_drift`.

    Returns
    -------
    dict with ``lower``, ``upper`` and ``difference`` (each ``{"value", "lo", "hi"}``), ``metric``, ``segment``.
    """
    from adt_probe.stats import can_resample, replicate_weights

    check_same_tokens(base, rl)
    sums, counts, _, _ = _accumulate(base, rl, "segment", chunk_tokens, client)
    g = [*segment_names(base["segment"].values), ALL].index(segment)
    s, c = sums[metric][:, g, :], counts[metric][:, g, :]  # (seq, layer)
    w = np.vstack([np.ones(s.shape[0]), replicate_weights(s.shape[0], n_boot, seed)])  # row 0: the estimate
    with np.errstate(invalid="ignore", divide="ignore"):
        band = {name: (w @ s[:, idx].sum(1)) / (w @ c[:, idx].sum(1)) for name, idx in
                (("lower", list(lower)), ("upper", list(upper)))}
    band["difference"] = band["upper"] - band["lower"]
    if not can_resample(s.shape[0], n_boot):
        band = {name: np.r_[v[0], np.nan] for name, v in band.items()}  # no interval: lo = hi = NaN
    summary = {name: {"value": float(v[0]), "lo": float(np.nanquantile(v[1:], 0.025)),
                      "hi": float(np.nanquantile(v[1:], 0.975))} for name, v in band.items()}
    return {**summary, "metric": metric, "segment": segment, "lower_layers": list(lower),
            "upper_layers": list(upper), "n_boot": n_boot}
