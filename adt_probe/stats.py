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


def replicate_weights(n_seq: int, n_boot: int, seed: int) -> np.ndarray:
    """Multinomial resampling counts, shape (n_boot, n_seq), each row summing to ``n_seq``."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_seq, np.full(n_seq, 1.0 / n_seq), size=n_boot).astype(np.float64)


def bootstrap_ratio(sums: np.ndarray, counts: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95, block_bytes: int = 64 << 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token-weighted mean with a percentile bootstrap interval over sequences.

    Parameters
    ----------
    sums : (n_seq, ...) per-sequence sums of a per-token quantity.
    counts : (n_seq, ...) per-sequence token counts, broadcastable to ``sums``.
    n_boot : bootstrap replicates (0: no interval, lo = hi = NaN).
    level : coverage of the interval.
    block_bytes : memory of one block of replicates (cells are processed in blocks).

    Returns
    -------
    estimate, lo, hi : arrays of shape ``sums.shape[1:]``; NaN where there are no tokens.
    """
    sums = np.asarray(sums, dtype=np.float64)
    counts = np.broadcast_to(np.asarray(counts, dtype=np.float64), sums.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = sums.sum(0) / counts.sum(0)
        if n_boot <= 0 or sums.shape[0] < 2:
            nan = np.full(estimate.shape, np.nan)
            return estimate, nan, nan
        w = replicate_weights(sums.shape[0], n_boot, seed)
        flat_s, flat_c = sums.reshape(sums.shape[0], -1), counts.reshape(counts.shape[0], -1)
        alpha = (1 - level) / 2
        lo, hi = np.empty(flat_s.shape[1]), np.empty(flat_s.shape[1])
        # Blocks of cells bound the (n_boot, cells) replicate matrix: drift at 48 layers x 128 experts has ~10^6 cells.
        block = max(1, block_bytes // (8 * n_boot))
        for start in range(0, flat_s.shape[1], block):
            sl = slice(start, start + block)
            reps = (w @ flat_s[:, sl]) / (w @ flat_c[:, sl])  # NaN where a replicate drew no token of a cell
            with warnings.catch_warnings():  # cells with no token at all stay NaN, silently
                warnings.simplefilter("ignore", RuntimeWarning)
                lo[sl], hi[sl] = np.nanquantile(reps, [alpha, 1 - alpha], axis=0)
        lo, hi = lo.reshape(estimate.shape), hi.reshape(estimate.shape)
    return estimate, lo, hi


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
    flat_v = np.where(ok, values, 0.0).reshape(n, -1)
    sums = indicator @ flat_v
    counts = indicator @ ok.reshape(n, -1).astype(np.float64)
    shape = (n_seq, n_groups, *values.shape[1:])
    return sums.reshape(shape), counts.reshape(shape)
