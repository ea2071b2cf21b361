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
estimate (see ``tests/test_drift.py``). Streaming: recordings are read in chunks of tokens, so lazily opened zarr
stores larger than memory work.

Examples
--------
>>> drift = gating_drift(base, rl, noise=(base, base_again))        # doctest: +SKIP
>>> drift.js.sel(segment="think").to_series()                        # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from adt_probe.segments import segment_names
from adt_probe.stats import bootstrap_ratio, per_sequence_sums

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


# --- the streaming kernel: per (sequence, segment) sums over chunks of tokens --------------------------------------

def _normalised_topk(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Experts (tokens, layers, k), their weights renormalised to sum 1 (float64, 0 on empty slots) and the valid
    mask, exactly as ``router_probs`` scatters them over experts."""
    experts, weights = ds["topk_experts"].values, ds["topk_weights"].values
    valid = experts >= 0
    w = np.where(valid, weights, 0.0)
    total = w.sum(-1, keepdims=True)
    return experts, (w / np.where(total > 0, total, 1.0)).astype(np.float64), valid


def _xlogx(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * np.log(p), 0.0)


def topk_token_metrics(a: xr.Dataset, b: xr.Dataset) -> dict[str, np.ndarray]:
    """``token_metrics`` of two top-k-only chunks on the k selected experts: O(k^2) per token and layer instead of
    O(experts) (the distributions are zero outside the top-k, so every sum runs over the union of the two sets).

    Returns the metrics it can compute this way (``js``, ``kl`` (NaN), ``topk_jaccard``, ``top1_agreement``,
    ``entropy_delta``), each (tokens, layers); equal to ``token_metrics`` (tested).

    Notes
    -----
    JS(a, b) = H(m) - (H(a) + H(b)) / 2 with m = (a + b) / 2: on base's experts m = (w_a + w_b at them) / 2, on the
    experts only rl selected m = w_b / 2.
    """
    ea, wa, va = _normalised_topk(a)
    eb, wb, vb = _normalised_topk(b)
    equal = ea[..., :, None] == eb[..., None, :]  # (tokens, layers, k, k)
    same = equal & va[..., :, None] & vb[..., None, :]
    in_b = same.any(-1)  # base's slot j holds an expert rl also selected
    wb_at_a = np.where(in_b, np.take_along_axis(wb, same.argmax(-1), -1), 0.0)
    only_b = np.where(same.any(-2), 0.0, 0.5 * wb)
    xa, xb = _xlogx(wa).sum(-1), _xlogx(wb).sum(-1)  # -H(a), -H(b)
    m_log_m = _xlogx(0.5 * (wa + wb_at_a)).sum(-1) + _xlogx(only_b).sum(-1)
    js = (0.5 * xa + 0.5 * xb - m_log_m) / np.log(2)
    inter = equal.any(-1).sum(-1)
    k = ea.shape[-1]
    out = {"js": js, "kl": np.full(js.shape, np.nan), "topk_jaccard": inter / (2 * k - inter),
           "top1_agreement": (ea[..., 0] == eb[..., 0]).astype(np.float64), "entropy_delta": xa - xb}
    dense = (ea < 0).all(-1)
    for v in out.values():
        v[dense] = np.nan
    no_dist = ~va.any(-1) | ~vb.any(-1)
    for name in ("js", "kl", "entropy_delta"):
        out[name][no_dist] = np.nan
    return out


def _chunk_metrics(ca: xr.Dataset, cb: xr.Dataset, scoring: str) -> tuple[dict[str, np.ndarray], str]:
    """Per token x layer metrics of one chunk: on the top-k sets when the recordings hold no full router logits."""
    if "router_logits" in ca or "router_logits" in cb:
        return token_metrics(ca, cb, scoring)
    fast = topk_token_metrics(ca, cb)
    if set(TOKEN_METRICS) - set(fast):  # a metric the top-k kernel does not know: computed over all experts
        fast.update({k: v for k, v in token_metrics(ca, cb, scoring)[0].items() if k not in fast})
    return {k: fast[k] for k in TOKEN_METRICS}, "topk"


def _slot_sums(ds: xr.Dataset, cell: np.ndarray, n_cells: int) -> np.ndarray:
    """Top-k slots each expert fills, summed per cell: (n_cells, layers, experts), with one ``bincount`` instead of
    a (tokens, layers, experts) indicator."""
    experts = ds["topk_experts"].values.astype(np.int64)
    n_layers, n_experts = experts.shape[1], ds.sizes["expert"]
    index = (cell[:, None, None] * n_layers + np.arange(n_layers)[None, :, None]) * n_experts + experts
    index = index[experts >= 0]
    return np.bincount(index, minlength=n_cells * n_layers * n_experts).reshape(n_cells, n_layers, n_experts)


def _read_block(ds: xr.Dataset, chunk_tokens: int) -> int:
    """Tokens read from storage at a time: a whole store chunk when that is larger (each is decompressed once)."""
    chunks = ds["topk_experts"].chunks
    return max(chunk_tokens, int(chunks[0][0]) if chunks else chunk_tokens)


def _accumulate(a: xr.Dataset, b: xr.Dataset, by: str | None, chunk_tokens: int):
    """Per (sequence, segment) sums and counts of every metric and of expert load, over token chunks."""
    scoring = a.attrs.get("router_scoring", "softmax")
    seq_all = a["sequence"].values
    seq_ids, seq_index = np.unique(seq_all, return_inverse=True)
    n_seq = len(seq_ids)
    names = segment_names(a["segment"].values)
    n_groups = len(names) if by == "segment" else 0
    groups_total = n_groups + 1  # the last group is "all"
    sums = {m: 0.0 for m in TOKEN_METRICS}
    counts = dict(sums)
    load_a = np.zeros((n_seq, groups_total, a.sizes["layer"], a.sizes["expert"]))
    load_b, load_n = np.zeros_like(load_a), 0.0
    source = "topk"
    n = a.sizes["token"]
    block = _read_block(a, chunk_tokens)
    for block_start in range(0, n, block):
        blk = slice(block_start, min(n, block_start + block))
        ba, bb = a.isel(token=blk).load(), b.isel(token=blk).load()
        for start in range(0, blk.stop - blk.start, chunk_tokens):
            sl = slice(start, min(blk.stop - blk.start, start + chunk_tokens))
            ca, cb = ba.isel(token=sl), bb.isel(token=sl)
            metrics, source = _chunk_metrics(ca, cb, scoring)
            seg = segment_index(ca, names) if by == "segment" else np.zeros(ca.sizes["token"], np.int64)
            seqs = seq_index[block_start + sl.start: block_start + sl.stop]
            first = seqs.min()  # a chunk spans few sequences: count slots only over those
            span = int(seqs.max() - first + 1)
            # Each token counts in its segment and in "all" (the last group).
            for groups in ([seg, np.full_like(seg, n_groups)] if by == "segment" else [seg]):
                for name, values in metrics.items():
                    s, c = per_sequence_sums(values, seqs, groups, n_seq, groups_total)
                    sums[name] = sums[name] + s
                    counts[name] = counts[name] + c
                cell = (seqs - first) * groups_total + groups
                for load, chunk in ((load_a, ca), (load_b, cb)):
                    load[first: first + span] += _slot_sums(chunk, cell, span * groups_total).reshape(
                        span, groups_total, *load.shape[2:])
                ln, _ = per_sequence_sums(np.ones(len(seqs)), seqs, groups, n_seq, groups_total)
                load_n = load_n + ln
    return sums, counts, (load_a, load_b, load_n), source


def gating_drift(base: xr.Dataset, rl: xr.Dataset, *, by: str | None = "segment",
                 noise: tuple[xr.Dataset, xr.Dataset] | None = None, n_boot: int = 1000, seed: int = 0,
                 chunk_tokens: int = 1024) -> xr.Dataset:
    """Gating drift between ``base`` and ``rl`` recordings of the same token sequences.

    Parameters
    ----------
    base, rl : recordings (``adt_probe.record``) with routing, of the same inputs.
    by : ``"segment"`` (one row per segment plus ``"all"``) or None (``"all"`` only).
    noise : a pair that should not differ (the same model recorded twice with another batch composition or dtype);
        its metrics become ``noise_<name>`` (estimate) and ``noise_<name>_hi`` (upper bound): the noise floor.
    n_boot : bootstrap replicates (sequences resampled with replacement).
    seed : seed of the bootstrap.
    chunk_tokens : tokens read at a time (bounds memory for lazy stores).

    Returns
    -------
    xarray.Dataset with dims ``layer``, ``segment`` (and ``expert`` for load): variables ``js``, ``kl``,
    ``topk_jaccard``, ``top1_agreement``, ``entropy_delta``, ``load_shift``, ``base_load``, ``rl_load``, each metric
    with ``<name>_lo`` / ``<name>_hi``; ``n_tokens`` (segment); attrs ``distribution``, ``n_sequences``, ``n_boot``.
    """
    if by not in ("segment", None):
        raise ValueError(f"by={by!r}: use 'segment' or None")
    check_same_tokens(base, rl)
    sums, counts, (la, lb, ln), source = _accumulate(base, rl, by, chunk_tokens)
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
        floor = gating_drift(noise[0], noise[1], by=by, n_boot=n_boot, seed=seed + 1, chunk_tokens=chunk_tokens)
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
                  segment: str = ALL, n_boot: int = 1000, seed: int = 0, chunk_tokens: int = 1024) -> dict:
    """Mean drift in an upper versus a lower band of layers, and their difference, with paired intervals.

    The paper's first claim ("RL mainly reshapes the routers of the upper layers") as one number: the
    token-weighted mean of ``metric`` over the ``upper`` layers minus that over the ``lower`` layers, for tokens of
    ``segment``. Both means are computed on the same bootstrap replicates (sequences resampled), so the interval of
    the difference accounts for their correlation.

    Returns
    -------
    dict with ``lower``, ``upper`` and ``difference`` (each ``{"value", "lo", "hi"}``), ``metric``, ``segment``.
    """
    from adt_probe.stats import can_resample, replicate_weights

    check_same_tokens(base, rl)
    sums, counts, _, _ = _accumulate(base, rl, "segment", chunk_tokens)
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
