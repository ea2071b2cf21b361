"""Crystallization: the layer from which the lens already predicts what the model finally outputs, and stays so.

For a token, the lens at layer ``i`` gives a top-1 prediction ``lens_top1[i]``; the last layer's is the model's own.
The token's ``crystallization_layer`` is the first layer ``L`` such that ``lens_top1[j] == lens_top1[last]`` for
every ``j >= L`` (so it is the last layer when the prediction only settles at the output). Low values mean the
next token is decided early. The paper's claim, "reasoning tokens crystallize progressively in the upper layers",
becomes: the distribution of this layer (and the per-layer curves of log-prob, rank and KL to the final layer) for
``think`` tokens, compared with ``answer`` tokens and between the base and the RL model.

Examples
--------
>>> cryst = crystallization(rl_recording)                                        # doctest: +SKIP
>>> cryst.mean_crystallization_layer.sel(segment="think").item()                 # doctest: +SKIP
>>> compare_crystallization(base_recording, rl_recording).delta_mean_layer       # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from adt_probe.drift import ALL, check_same_tokens, segment_index
from adt_probe.segments import SEGMENTS
from adt_probe.stats import bootstrap_ratio, per_sequence_sums

CURVES = ("lens_logprob", "lens_rank", "lens_kl_final", "lens_entropy")


def crystallization_layer(top1: np.ndarray) -> np.ndarray:
    """First layer from which the top-1 equals the last layer's and stays so.

    Parameters
    ----------
    top1 : (tokens, layers) int, the lens top-1 token per layer; negative = not computed.

    Returns
    -------
    (tokens,) float: the layer index, NaN where the lens was not computed.
    """
    same = top1 == top1[:, -1:]
    # Suffix-AND from the last layer backwards: stays[t, i] = same[t, i:] all true.
    stays = np.flip(np.logical_and.accumulate(np.flip(same, 1), axis=1), 1)
    first = stays.argmax(1).astype(np.float64)  # stays[:, -1] is always True, so argmax finds the first True
    first[(top1 < 0).any(1)] = np.nan
    return first


def _groups(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray, int]:
    seq_ids, seq_index = np.unique(ds["sequence"].values, return_inverse=True)
    return segment_index(ds), seq_index, len(seq_ids)


def segment_means(values: np.ndarray, seg: np.ndarray, seq: np.ndarray, n_seq: int, *, n_boot: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token-weighted means per segment plus ``"all"`` (last row), with sequence-bootstrap intervals.

    ``values`` is (tokens, ...); returns estimate, lo, hi of shape (len(SEGMENTS) + 1, ...).
    """
    groups = len(SEGMENTS) + 1
    s1, c1 = per_sequence_sums(values, seq, seg, n_seq, groups)
    s2, c2 = per_sequence_sums(values, seq, np.full_like(seg, groups - 1), n_seq, groups)
    return bootstrap_ratio(s1 + s2, c1 + c2, n_boot=n_boot, seed=seed)


def crystallization(recording: xr.Dataset, *, lens: str = "logit", n_boot: int = 1000,
                    seed: int = 0) -> xr.Dataset:
    """Crystallization layers per token and lens curves per layer x segment, with sequence-bootstrap intervals.

    Parameters
    ----------
    recording : a Dataset from ``adt_probe.record`` with a lens (``lens_top1`` and the curves).
    lens : which lens the recording used (checked against its attrs; stored in the result).
    n_boot, seed : bootstrap replicates over sequences and their seed.

    Returns
    -------
    xarray.Dataset with ``crystallization_layer`` (token; NaN where the lens was not computed),
    ``mean_crystallization_layer`` (+ ``_lo``/``_hi``) and ``layer_histogram`` (segment x layer, fraction of tokens)
    per segment, and per layer x segment the mean of each lens curve (``lens_logprob``, ``lens_rank``,
    ``lens_kl_final``, ``lens_entropy``; each + ``_lo``/``_hi``). ``segment`` includes ``"all"``.
    """
    if "lens_top1" not in recording:
        raise ValueError("the recording has no lens: record with lens='logit' or lens='tuned'")
    if recording.attrs.get("lens") not in (None, "None", lens):
        raise ValueError(f"the recording used lens={recording.attrs.get('lens')!r}, not {lens!r}")
    top1 = recording["lens_top1"].values
    layer_of = crystallization_layer(top1)
    seg, seq, n_seq = _groups(recording)
    n_layers = top1.shape[1]
    data = {"crystallization_layer": ("token", layer_of)}

    def summarise(values: np.ndarray, name: str, dims: tuple[str, ...]) -> None:
        est, lo, hi = segment_means(values, seg, seq, n_seq, n_boot=n_boot, seed=seed)
        for suffix, v in (("", est), ("_lo", lo), ("_hi", hi)):
            data[name + suffix] = (dims, v.T if v.ndim == 2 else v)

    summarise(layer_of, "mean_crystallization_layer", ("segment",))
    onehot = (layer_of[:, None] == np.arange(n_layers)).astype(np.float64)
    onehot[np.isnan(layer_of)] = np.nan
    data["layer_histogram"] = (("segment", "layer"), segment_means(onehot, seg, seq, n_seq, n_boot=0, seed=seed)[0])
    for name in CURVES:
        if name in recording:
            values = recording[name].values.astype(np.float64)
            if name == "lens_rank":
                values = np.where(values < 0, np.nan, values)
            summarise(values, name, ("layer", "segment"))
    ds = xr.Dataset(data, coords={"segment": [*SEGMENTS, ALL], "layer": recording["layer"].values,
                                  "sequence": ("token", recording["sequence"].values),
                                  "token_segment": ("token", recording["segment"].values)})
    ds["n_tokens"] = ("segment", np.array([(seg == i).sum() for i in range(len(SEGMENTS))] + [len(seg)]))
    ds.attrs = {"kind": "crystallization", "lens": lens, "n_boot": n_boot, "seed": seed,
                "model": str(recording.attrs.get("model_path", "")),
                "interval": "95% percentile bootstrap over sequences",
                "definition": "first layer from which the lens top-1 equals the final top-1 and stays equal"}
    return ds


def compare_crystallization(base: xr.Dataset, rl: xr.Dataset, *, lens: str = "logit", n_boot: int = 1000,
                            seed: int = 0) -> xr.Dataset:
    """RL minus base: mean crystallization layer and lens curves per segment, with paired bootstrap intervals.

    Both recordings must hold the same tokens; the bootstrap resamples the same sequences for both (paired).

    Returns
    -------
    xarray.Dataset: ``delta_mean_layer`` (segment, + ``_lo``/``_hi``), ``base_mean_layer``, ``rl_mean_layer``, and
    ``delta_<curve>`` (layer x segment, + ``_lo``/``_hi``) for each lens curve.
    """
    check_same_tokens(base, rl)
    seg, seq, n_seq = _groups(base)
    data = {}

    def paired(a: np.ndarray, b: np.ndarray, name: str, dims: tuple[str, ...]) -> None:
        est, lo, hi = segment_means(b - a, seg, seq, n_seq, n_boot=n_boot, seed=seed)
        for suffix, v in (("", est), ("_lo", lo), ("_hi", hi)):
            data[name + suffix] = (dims, v.T if v.ndim == 2 else v)

    la = crystallization_layer(base["lens_top1"].values)
    lb = crystallization_layer(rl["lens_top1"].values)
    paired(la, lb, "delta_mean_layer", ("segment",))
    for name in CURVES:
        if name in base and name in rl:
            a, b = base[name].values.astype(np.float64), rl[name].values.astype(np.float64)
            if name == "lens_rank":
                a, b = np.where(a < 0, np.nan, a), np.where(b < 0, np.nan, b)
            paired(a, b, f"delta_{name}", ("layer", "segment"))
    out = xr.Dataset(data, coords={"segment": [*SEGMENTS, ALL], "layer": base["layer"].values})
    for label, ds in (("base", base), ("rl", rl)):
        c = crystallization(ds, lens=lens, n_boot=0)
        out[f"{label}_mean_layer"] = c["mean_crystallization_layer"]
        out[f"{label}_layer_histogram"] = c["layer_histogram"]
    out.attrs = {"kind": "compare_crystallization", "lens": lens, "n_boot": n_boot, "seed": seed,
                 "interval": "95% paired percentile bootstrap over sequences", "difference": "rl minus base"}
    return out
