"""Statistics shared by drift and crystallization: per-sequence accumulation and the sequence bootstrap.

Tokens of one sequence are not independent (they share the clip, the prompt and the model's earlier choices), so
every interval here resamples *sequences*: a replicate draws sequences with replacement and recomputes the
token-weighted mean ``sum_s S_s / sum_s C_s`` from per-sequence sums ``S_s`` and counts ``C_s``. The replicate
weights are multinomial counts, so one matrix product evaluates all replicates at once.

Examples
--------
>>> import numpy as np
>>> sums = np.array([[1.0], [3.0], [2.0]]); counts = np.array([[1.0], [3.0], [2.0]])
>>> est, lo, hi = bootstrap_ratio(sums, counts, n_boot=200, seed=0)
>>> float(est[0])
1.0
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import sparse
from scipy.stats import binomtest, bootstrap, norm


def replicate_weights(n_seq: int, n_boot: int, seed: int) -> np.ndarray:
    """Multinomial resampling counts, shape (n_boot, n_seq), each row summing to ``n_seq``."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_seq, np.full(n_seq, 1.0 / n_seq), size=n_boot).astype(np.float64)


def can_resample(n_seq: int, n_boot: int) -> bool:
    """Whether a bootstrap over ``n_seq`` sequences gives an interval; warns when replicates were asked for but there
    are fewer than 2 sequences (every replicate would be the estimate: the intervals are NaN instead)."""
    if n_boot > 0 and n_seq < 2:
        warnings.warn(f"{n_seq} sequence: a bootstrap over sequences needs at least 2, so the intervals are NaN. "
                      "Record more sequences (or pass n_boot=0 to ask for no interval).", RuntimeWarning, stacklevel=3)
    return n_boot > 0 and n_seq >= 2


def bootstrap_ratio(sums: np.ndarray, counts: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95, block_bytes: int = 16 << 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token-weighted mean with a percentile bootstrap interval over sequences.

    Parameters
    ----------
    sums : (n_seq, ...) per-sequence sums of a per-token quantity.
    counts : (n_seq, ...) per-sequence token counts, broadcastable to ``sums`` (a count shared by many cells, such as
        tokens per (sequence, segment) for every layer and expert, is resampled once, not once per cell).
    n_boot : bootstrap replicates (0: no interval, lo = hi = NaN).
    level : coverage of the interval.
    block_bytes : memory of one block of replicates (cells are processed in blocks).

    Returns
    -------
    estimate, lo, hi : arrays of shape ``sums.shape[1:]``; NaN where there are no tokens.
    """
    sums = np.asarray(sums, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    counts = counts.reshape((1,) * (sums.ndim - counts.ndim) + counts.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = sums.sum(0) / np.broadcast_to(counts, sums.shape).sum(0)
        if not can_resample(sums.shape[0], n_boot):
            nan = np.full(estimate.shape, np.nan)
            return estimate, nan, nan
        w = replicate_weights(sums.shape[0], n_boot, seed)
        flat_s = sums.reshape(sums.shape[0], -1)
        # Replicated counts of the distinct count cells, then the count cell of every sum cell.
        cell_of = np.broadcast_to(np.arange(int(np.prod(counts.shape[1:]))).reshape(counts.shape[1:]),
                                  sums.shape[1:]).ravel()
        den = w @ np.broadcast_to(counts, (sums.shape[0], *counts.shape[1:])).reshape(sums.shape[0], -1)
        alpha = (1 - level) / 2
        lo, hi = np.empty(flat_s.shape[1]), np.empty(flat_s.shape[1])
        # Blocks of cells bound the (n_boot, cells) replicate matrix: drift at 48 layers x 128 experts has ~10^6 cells.
        block = max(1, block_bytes // (8 * n_boot))
        for start in range(0, flat_s.shape[1], block):
            sl = slice(start, start + block)
            reps = w @ flat_s[:, sl]
            reps /= den[:, cell_of[sl]]  # NaN where a replicate drew no token of a cell
            lo[sl], hi[sl] = _percentiles(reps, alpha)
        lo, hi = lo.reshape(estimate.shape), hi.reshape(estimate.shape)
    return estimate, lo, hi


def _quantiles(reps: np.ndarray, qs: tuple[float, ...]) -> list[np.ndarray]:
    """``np.quantile(reps, qs, axis=0)`` (linear method, bit for bit) of columns without NaN, with one partition at
    the order statistics needed instead of one per quantile."""
    n = reps.shape[0]
    v = (n - 1) * np.asarray(qs, np.float64)
    lo = np.floor(v).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    part = np.partition(reps, sorted({*lo.tolist(), *hi.tolist()}), axis=0)
    out = []
    for i, j, t in zip(lo, hi, v - lo):  # numpy's _lerp
        diff = part[j] - part[i]
        out.append(part[j] - diff * (1 - t) if t >= 0.5 else part[i] + diff * t)
    return out


def _percentiles(reps: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The alpha and 1 - alpha quantiles of each column of (replicates, cells), ignoring NaN replicates.

    ``np.nanquantile`` loops over columns in Python; only the columns that hold a NaN need it (cells whose every
    replicate is NaN, no token at all, stay NaN silently).
    """
    lo, hi = np.full(reps.shape[1], np.nan), np.full(reps.shape[1], np.nan)
    nan = np.isnan(reps)
    clean, partial = ~nan.any(0), nan.any(0) & ~nan.all(0)
    if clean.all():
        lo[:], hi[:] = _quantiles(reps, (alpha, 1 - alpha))
    elif clean.any():
        lo[clean], hi[clean] = _quantiles(reps[:, clean], (alpha, 1 - alpha))
    if partial.any():
        lo[partial], hi[partial] = np.nanquantile(reps[:, partial], [alpha, 1 - alpha], axis=0)
    return lo, hi


def per_sequence_sums(values: np.ndarray, sequence: np.ndarray, groups: np.ndarray, n_seq: int,
                      n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum a per-token quantity by (sequence, group), ignoring NaN.

    Parameters
    ----------
    values : (tokens, ...) per-token values (NaN = not applicable).
    sequence : (tokens,) sequence index in [0, n_seq).
    groups : (tokens,) group index in [0, n_groups) (a segment, say).

    Returns
    -------
    sums : (n_seq, n_groups, ...) and counts : same shape (number of non-NaN tokens).
    """
    values = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(values)
    n = values.shape[0]
    cell = sequence.astype(np.int64) * n_groups + groups.astype(np.int64)
    # A sparse (cells x tokens) indicator times the values: one pass, much faster than np.add.at.
    indicator = sparse.csr_matrix((np.ones(n), (cell, np.arange(n))), shape=(n_seq * n_groups, n))
    width = int(np.prod(values.shape[1:], dtype=np.int64))  # explicit: reshape(0, -1) is ambiguous
    flat_v = np.where(ok, values, 0.0).reshape(n, width)
    sums = indicator @ flat_v
    counts = indicator @ ok.reshape(n, width).astype(np.float64)
    shape = (n_seq, n_groups, *values.shape[1:])
    return sums.reshape(shape), counts.reshape(shape)


# ---------------------------------------------------------------------------------------------------------------------
# Intervals of a statistic of per-sequence sums: BCa over sequences (stratified when strata are given), a hierarchical
# bootstrap over runs then sequences, and exact intervals for (paired) proportions.

def _interval(value: float, reps: np.ndarray, lo: float, hi: float, method: str, n_boot: int) -> dict:
    """The one interval record every function below returns; NaN replicates are counted, never hidden."""
    return {"value": float(value), "lo": float(lo), "hi": float(hi), "method": method, "n_boot": int(n_boot),
            "n_nan": int(np.isnan(reps).sum()) if reps.size else 0}


def _bca_limits(theta: float, reps: np.ndarray, jack: np.ndarray, level: float) -> tuple[float, float]:
    """BCa limits from finite bootstrap replicates and jackknife values (Efron 1987)."""
    ok = reps[np.isfinite(reps)]
    if ok.size == 0 or not np.isfinite(theta):
        return np.nan, np.nan
    prop = (np.sum(ok < theta) + 0.5 * np.sum(ok == theta)) / ok.size
    z0 = norm.ppf(np.clip(prop, 1e-6, 1 - 1e-6))
    d = np.nanmean(jack) - jack[np.isfinite(jack)]
    denom = 6.0 * np.sum(d ** 2) ** 1.5
    a = np.sum(d ** 3) / denom if denom > 0 else 0.0
    z = norm.ppf([(1 - level) / 2, (1 + level) / 2])
    q = norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
    return tuple(float(v) for v in np.quantile(ok, np.clip(q, 0, 1)))


def _replicates(per_seq: np.ndarray, statistic, n_boot: int, seed: int, level: float,
                strata: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Bootstrap replicates (k, n_boot) of a k-valued statistic, and scipy's BCa limits (2, k) when unstratified.

    Unstratified this is ``scipy.stats.bootstrap(method="BCa")`` over sequence indices (all k values from the same
    resamples); stratified, multinomial weights within each stratum (scipy has no strata).
    """
    n = per_seq.shape[0]
    if strata is None:
        with warnings.catch_warnings():  # NaN replicates make scipy's BCa NaN: handled (counted) by the caller
            warnings.simplefilter("ignore")
            res = bootstrap((np.arange(n),), lambda idx, axis=-1: np.moveaxis(statistic(per_seq[idx].sum(-2)), -1, 0),
                            n_resamples=n_boot, method="BCa", confidence_level=level, vectorized=True,
                            random_state=np.random.default_rng(seed))
        limits = np.array([np.atleast_1d(res.confidence_interval.low), np.atleast_1d(res.confidence_interval.high)])
        return np.asarray(res.bootstrap_distribution, np.float64).reshape(-1, n_boot), limits
    rng = np.random.default_rng(seed)
    strata = np.asarray(strata)
    w = np.zeros((n_boot, n))
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        w[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=n_boot)
    return np.asarray(statistic(w @ per_seq), np.float64).T, None


def bca_intervals(per_seq: np.ndarray, statistic, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                  strata: np.ndarray | None = None) -> list[dict]:
    """BCa bootstrap intervals over sequences of k statistics of per-sequence sums, from the same resamples.

    Parameters
    ----------
    per_seq : (n_seq, m) per-sequence sums (numerators and counts side by side; paired quantities of two models in
        the same rows, so the intervals are paired).
    statistic : function of column sums, ``(..., m) -> (..., k)`` (a settling curve's k streams, say).
    strata : (n_seq,) labels (family x difficulty, say): sequences are resampled within each stratum.

    Returns
    -------
    k dicts ``value``, ``lo``, ``hi``, ``method``, ``n_boot``, ``n_nan`` (replicates where that statistic was NaN:
    counted, left out of the quantiles). Without strata the limits are ``scipy.stats.bootstrap(method="BCa")``'s.
    """
    per_seq = np.asarray(per_seq, np.float64)
    n = per_seq.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        theta = np.asarray(statistic(per_seq.sum(0)), np.float64)
        k = theta.shape[-1]
        if n < 3 or n_boot <= 0:
            return [_interval(t, np.array([]), np.nan, np.nan, "none (fewer than 3 sequences)", 0) for t in theta]
        # leave-one-out values: BCa's acceleration, and a statistic no left-out sequence moves is constant under any
        # resample (two identical models, say): its interval is that value
        jack = np.asarray(statistic(per_seq.sum(0) - per_seq), np.float64)  # (n, k)
        constant = np.isfinite(theta) & (np.all(jack == theta, 0) | bool(np.all(per_seq == per_seq[:1])))
        method = "BCa bootstrap over sequences" + (", stratified" if strata is not None else "")
        reps, limits = (_replicates(per_seq, statistic, n_boot, seed, level, strata)
                        if not np.all(constant | ~np.isfinite(theta)) else (np.full((k, n_boot), np.nan), None))
        out = []
        for j in range(k):
            if not np.isfinite(theta[j]):  # 0 / 0 on the whole sample: every replicate is NaN too
                out.append(_interval(theta[j], np.full(n_boot, np.nan), np.nan, np.nan,
                                     "undefined on the full sample", n_boot))
            elif constant[j]:
                out.append(_interval(theta[j], np.array([]), theta[j], theta[j], "degenerate (every resample equal)",
                                     n_boot))
            else:
                lo, hi = (limits[0, j], limits[1, j]) if limits is not None else (np.nan, np.nan)
                if not (np.isfinite(lo) and np.isfinite(hi)):  # stratified, or NaN replicates: BCa on the rest
                    lo, hi = _bca_limits(theta[j], reps[j], jack[:, j], level)
                out.append(_interval(theta[j], reps[j], lo, hi, method, n_boot))
    return out


def bca_interval(per_seq: np.ndarray, statistic, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 strata: np.ndarray | None = None) -> dict:
    """BCa bootstrap interval over sequences of one statistic of per-sequence sums (:func:`bca_intervals` with
    ``statistic: (..., m) -> (...)``); the dict has ``value``, ``lo``, ``hi``, ``method``, ``n_boot``, ``n_nan``."""
    return bca_intervals(per_seq, lambda s: np.asarray(statistic(s))[..., None], n_boot=n_boot, seed=seed,
                         level=level, strata=strata)[0]


def hierarchical_interval(per_run: list[np.ndarray], statistic, *, n_boot: int = 1000, seed: int = 0,
                          level: float = 0.95) -> dict:
    """Percentile interval of the across-run mean of a statistic: runs resampled, then sequences within each run.

    Parameters
    ----------
    per_run : one (n_seq_r, m) array of per-sequence sums per RL run (see :func:`bca_interval`).
    statistic : function of column sums ``(..., m) -> (...)``, evaluated per run and averaged over runs.

    Returns
    -------
    dict as :func:`bca_interval`, plus ``per_run`` (each run's own value) and ``n_runs``.
    """
    rng = np.random.default_rng(seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.array([float(statistic(a.sum(0))) for a in per_run])
        reps = np.empty(n_boot)
        for b in range(n_boot):
            runs = rng.integers(0, len(per_run), len(per_run))
            reps[b] = np.mean([statistic(per_run[r][rng.integers(0, len(per_run[r]), len(per_run[r]))].sum(0))
                               for r in runs])
    alpha = (1 - level) / 2
    ok = reps[np.isfinite(reps)]
    lo, hi = (np.quantile(ok, [alpha, 1 - alpha]) if ok.size else (np.nan, np.nan))
    out = _interval(float(values.mean()), reps, lo, hi, "hierarchical percentile bootstrap (runs, then sequences)",
                    n_boot)
    return {**out, "per_run": values.tolist(), "n_runs": len(per_run)}


def wilson(successes: int, n: int, level: float = 0.95) -> dict:
    """A proportion with its Wilson interval (``scipy.stats.binomtest(...).proportion_ci``)."""
    if n == 0:
        return {"value": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0, "method": "Wilson"}
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return {"value": successes / n, "lo": float(ci.low), "hi": float(ci.high), "n": int(n), "method": "Wilson"}


def paired_proportions(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> dict:
    """Difference ``mean(b) - mean(a)`` of two paired binary outcomes: Newcombe's hybrid score interval (method 10,
    Newcombe 1998, with the phi correction) and McNemar's exact test on the discordant pairs.

    Parameters
    ----------
    a, b : (n,) booleans on the same items (the unmodified and the transplanted model, say).

    Returns
    -------
    dict ``value``, ``lo``, ``hi``, ``n``, ``discordant`` ([a only, b only]), ``mcnemar_p`` (exact, two-sided),
    ``method``. With no discordant pair the interval is not [0, 0] but +- the Wilson upper limit of a discordance
    rate of 0 in n: the largest change n items without one cannot rule out (Newcombe's interval collapses there when
    both proportions are near 1/2, since the two are then perfectly correlated).
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    n = len(a)
    if n == 0:
        return {"value": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0, "discordant": [0, 0],
                "mcnemar_p": float("nan"), "method": "Newcombe (paired)"}
    n11, n10, n01, n00 = (int(np.sum(a & b)), int(np.sum(a & ~b)), int(np.sum(~a & b)), int(np.sum(~a & ~b)))
    pa, pb = wilson(int(a.sum()), n, level), wilson(int(b.sum()), n, level)
    d = pb["value"] - pa["value"]
    denom = np.sqrt(float((n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)))
    phi = (n11 * n00 - n10 * n01) / denom if denom > 0 else 0.0
    la, ua, lb, ub = pa["value"] - pa["lo"], pa["hi"] - pa["value"], pb["value"] - pb["lo"], pb["hi"] - pb["value"]
    lo = d - np.sqrt(lb ** 2 - 2 * phi * lb * ua + ua ** 2)
    hi = d + np.sqrt(ub ** 2 - 2 * phi * ub * la + la ** 2)
    if n10 + n01:
        p = binomtest(n10, n10 + n01).pvalue
    else:
        p, hi = 1.0, wilson(0, n, level)["hi"]
        lo = -hi
    return {"value": float(d), "lo": float(max(-1.0, lo)), "hi": float(min(1.0, hi)), "n": n,
            "discordant": [n10, n01], "mcnemar_p": float(p), "method": "Newcombe hybrid score (paired), McNemar exact"}
