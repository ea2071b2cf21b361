"""Crystallization: the layer from which the lens already predicts what the model finally outputs, and stays so.

For a token, the lens at layer ``i`` gives a top-1 prediction ``lens_top1[i]``; the last layer's is the model's own.
The token's ``crystallization_layer`` is the first layer ``L`` such that ``lens_top1[j] == lens_top1[last]`` for
every ``j >= L`` (so it is the last layer when the prediction only settles at the output). Low values mean the
next token is decided early. The paper's claim, "reasoning tokens crystallize progressively in the upper layers",
becomes: the distribution of this layer (and the per-layer curves of log-prob, rank and KL to the final layer) for
``think`` tokens, compared with ``answer`` tokens and between the base and the RL model.

``settling_stream`` adds the embedding stream (the input of block 0, :func:`embedding_top1`) as a row before block 0
and keeps tokens whose prediction appears only at the output apart from those that settle in the last block;
``settling_curves`` gives "settled by stream s" curves of two models on the same tokens with paired intervals, and
``upper_share_intervals`` the share of settled tokens that settle in the upper band (finding 2's statistic).

Examples
--------
>>> cryst = crystallization(rl_recording)                                        # doctest: +SKIP
>>> cryst.mean_crystallization_layer.sel(segment="think").item()                 # doctest: +SKIP
>>> compare_crystallization(base_recording, rl_recording).delta_mean_layer       # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from adt_probe.architectures import architecture, get_module
from adt_probe.decompose import batches
from adt_probe.drift import ALL, check_same_tokens, segment_index
from adt_probe.segments import segment_names
from adt_probe.stats import bca_interval, bca_intervals, bootstrap_ratio, per_sequence_sums

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
    """Per token: index into ``segment_names(ds.segment)``, index of its sequence; and the number of sequences."""
    seq_ids, seq_index = np.unique(ds["sequence"].values, return_inverse=True)
    return segment_index(ds), seq_index, len(seq_ids)


def segment_means(values: np.ndarray, seg: np.ndarray, seq: np.ndarray, n_seq: int, *, n_boot: int,
                  seed: int, n_segments: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token-weighted means per segment plus ``"all"`` (last row), with sequence-bootstrap intervals.

    ``values`` is (tokens, ...), ``seg`` indexes ``n_segments`` segment names; returns estimate, lo, hi of shape
    (n_segments + 1, ...).
    """
    groups = n_segments + 1
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
    names = segment_names(recording["segment"].values)
    n_layers = top1.shape[1]
    data = {"crystallization_layer": ("token", layer_of)}

    def summarise(values: np.ndarray, name: str, dims: tuple[str, ...]) -> None:
        est, lo, hi = segment_means(values, seg, seq, n_seq, n_boot=n_boot, seed=seed, n_segments=len(names))
        for suffix, v in (("", est), ("_lo", lo), ("_hi", hi)):
            data[name + suffix] = (dims, v.T if v.ndim == 2 else v)

    summarise(layer_of, "mean_crystallization_layer", ("segment",))
    onehot = (layer_of[:, None] == np.arange(n_layers)).astype(np.float64)
    onehot[np.isnan(layer_of)] = np.nan
    data["layer_histogram"] = (("segment", "layer"), segment_means(onehot, seg, seq, n_seq, n_boot=0, seed=seed,
                                                                      n_segments=len(names))[0])
    for name in CURVES:
        if name in recording:
            values = recording[name].values.astype(np.float64)
            if name == "lens_rank":
                values = np.where(values < 0, np.nan, values)
            summarise(values, name, ("layer", "segment"))
    ds = xr.Dataset(data, coords={"segment": [*names, ALL], "layer": recording["layer"].values,
                                  "sequence": ("token", recording["sequence"].values),
                                  "token_segment": ("token", recording["segment"].values)})
    ds["n_tokens"] = ("segment", np.array([(seg == i).sum() for i in range(len(names))] + [len(seg)]))
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
    names = segment_names(base["segment"].values)
    data = {}

    def paired(a: np.ndarray, b: np.ndarray, name: str, dims: tuple[str, ...]) -> None:
        est, lo, hi = segment_means(b - a, seg, seq, n_seq, n_boot=n_boot, seed=seed, n_segments=len(names))
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
    out = xr.Dataset(data, coords={"segment": [*names, ALL], "layer": base["layer"].values})
    for label, ds in (("base", base), ("rl", rl)):
        c = crystallization(ds, lens=lens, n_boot=0)
        out[f"{label}_mean_layer"] = c["mean_crystallization_layer"]
        out[f"{label}_layer_histogram"] = c["layer_histogram"]
    out.attrs = {"kind": "compare_crystallization", "lens": lens, "n_boot": n_boot, "seed": seed,
                 "interval": "95% paired percentile bootstrap over sequences", "difference": "rl minus base"}
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Settling: the embedding stream as a row before block 0, the output-only bin apart, paired curves, token groups.

#: settling index of a token whose lens matches the output only at the output itself (never before it)
EMBEDDING = -1


@torch.no_grad()
def embedding_top1(model, inputs, *, batch_size: int = 8) -> np.ndarray:
    """The logit lens on the embedding stream (the input of block 0): top-1 token per real token, shape (tokens,).

    Token order is that of ``adt_probe.record`` (sequences in order, real tokens by ``attention_mask``). The stream
    goes through the final norm and the unembedding as every block's output does in the logit lens.
    """
    spec = architecture(model)
    block0 = get_module(model, spec.layers)[0]
    norm, unembed = spec.readout(model)  # with the family's logit scale / soft-cap, if any
    out, seen = [], {}

    def grab(module, args, kwargs):
        seen["h"] = args[0] if args else kwargs["hidden_states"]

    for batch in batches(inputs, batch_size):
        handle = block0.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            model(**batch, use_cache=False)
        finally:
            handle.remove()
        mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool().reshape(-1)
        h = seen["h"].reshape(-1, seen["h"].shape[-1])[mask]
        out.append(unembed(norm(h)).argmax(-1).cpu().numpy())
    return np.concatenate(out)


def settling_stream(top1: np.ndarray, embedding: np.ndarray | None = None) -> np.ndarray:
    """Per token, the first stream from which the lens top-1 equals the output's and stays equal.

    Parameters
    ----------
    top1 : (tokens, layers) lens top-1 after each block (the last is the model's output).
    embedding : (tokens,) lens top-1 of the embedding stream (:func:`embedding_top1`), or None.

    Returns
    -------
    (tokens,) float: -1 (:data:`EMBEDDING`) for the embedding stream, ``i`` for block ``i``'s output; ``layers - 1``
    means the prediction appears only at the output ("never settled before the output"). NaN without a lens.
    """
    if embedding is None:
        return crystallization_layer(top1)
    return crystallization_layer(np.concatenate([np.asarray(embedding)[:, None], top1], axis=1)) - 1.0


def settling_sums(base_stream: np.ndarray, rl_stream: np.ndarray, sequence: np.ndarray, keep: np.ndarray,
                  n_layers: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-sequence sums for :func:`settling_curves`.

    Returns
    -------
    sums : (n_seq, 2 * n_streams + 3): tokens settled by each stream ``-1 .. n_layers - 2`` for the base, then the
        RL model, then tokens settling only at the output (base, RL), then the token count.
    seq_ids : (n_seq,) the sorted sequence ids of the kept tokens (the rows).
    """
    streams = np.arange(EMBEDDING, n_layers - 1)
    seq_ids, seq = np.unique(sequence[keep], return_inverse=True)
    base, rl = base_stream[keep], rl_stream[keep]
    cols = np.concatenate([base[:, None] <= streams, rl[:, None] <= streams, (base >= n_layers - 1)[:, None],
                           (rl >= n_layers - 1)[:, None], np.ones((len(seq), 1), bool)], axis=1)
    s, _ = per_sequence_sums(cols.astype(np.float64), seq, np.zeros(len(seq), np.int64), len(seq_ids), 1)
    return s[:, 0], seq_ids


def settling_statistic(n_streams: int):
    """``(..., 2 * n_streams + 3) -> (..., 3 * n_streams + 2)`` of :func:`settling_sums` column sums: the base curve,
    the RL curve, RL minus base, then the output-only shares of the base and the RL model."""
    def statistic(sums: np.ndarray) -> np.ndarray:
        shares = sums[..., :-1] / sums[..., -1:]
        base, rl = shares[..., :n_streams], shares[..., n_streams:2 * n_streams]
        return np.concatenate([base, rl, rl - base, shares[..., 2 * n_streams:]], axis=-1)
    return statistic


def settling_curves(base_stream: np.ndarray, rl_stream: np.ndarray, sequence: np.ndarray, keep: np.ndarray,
                    n_layers: int, *, n_boot: int = 1000, seed: int = 0, strata: np.ndarray | None = None) -> dict:
    """"Settled by stream s" curves of two models on the same tokens, with paired BCa intervals.

    Parameters
    ----------
    base_stream, rl_stream : (tokens,) :func:`settling_stream` of the two models.
    sequence : (tokens,) sequence ids (the bootstrap unit).
    keep : (tokens,) bool, the tokens of the group.
    n_layers : blocks; stream ``n_layers - 1`` is the output.
    strata : (n_seq,) a label per sequence of the group (sorted sequence ids), e.g. family x difficulty: sequences
        are resampled within each; None: unstratified.

    Returns
    -------
    dict: ``stream`` (-1 .. n_layers - 2), per model ``{"value", "lo", "hi", "n_nan"}`` lists of the share settled by
    each stream, ``delta`` (RL minus base, paired), ``never_settled`` per model (share that settles only at the
    output; an interval dict of :func:`adt_probe.stats.bca_intervals`), ``n_tokens``, ``n_sequences``, ``method``,
    ``n_boot``. Every interval comes from the same resamples of sequences (one vectorised bootstrap).
    """
    streams = np.arange(EMBEDDING, n_layers - 1)
    out = {"stream": streams.tolist(), "n_tokens": int(keep.sum()), "n_sequences": 0}
    if not keep.any():
        return out
    sums, seq_ids = settling_sums(base_stream, rl_stream, sequence, keep, n_layers)
    out["n_sequences"] = len(seq_ids)
    k = len(streams)
    cis = bca_intervals(sums, settling_statistic(k), n_boot=n_boot, seed=seed, strata=strata)
    for i, name in enumerate(("base", "rl", "delta")):
        part = cis[i * k:(i + 1) * k]
        out[name] = {key: [c[key] for c in part] for key in ("value", "lo", "hi", "n_nan")}
    out["never_settled"] = {"base": cis[3 * k], "rl": cis[3 * k + 1]}
    out["method"], out["n_boot"] = cis[0]["method"], cis[0]["n_boot"]
    return out


def upper_share_sums(base_stream: np.ndarray, rl_stream: np.ndarray, sequence: np.ndarray, keep: np.ndarray,
                     first_upper: int, n_layers: int) -> np.ndarray:
    """Per-sequence sums ``[upper_rl, settled_rl, upper_base, settled_base]`` (n_seq, 4) for the share of settled
    tokens that settle in a block ``>= first_upper`` (the output-only bin excluded from both counts)."""
    if not keep.any():
        return np.zeros((0, 4))
    seq_ids, seq = np.unique(sequence[keep], return_inverse=True)
    cols = []
    for st in (rl_stream[keep], base_stream[keep]):
        settled = st < n_layers - 1
        cols += [(settled & (st >= first_upper)).astype(float), settled.astype(float)]
    s, _ = per_sequence_sums(np.stack(cols, 1), seq, np.zeros(len(seq), np.int64), len(seq_ids), 1)
    return s[:, 0]


def upper_share(sums: np.ndarray) -> np.ndarray:
    """U(RL) from :func:`upper_share_sums` column sums (..., 4)."""
    return sums[..., 0] / sums[..., 1]


def upper_share_delta(sums: np.ndarray) -> np.ndarray:
    """U(RL) - U(base) from :func:`upper_share_sums` column sums (..., 4)."""
    return sums[..., 0] / sums[..., 1] - sums[..., 2] / sums[..., 3]


def upper_share_intervals(sums: np.ndarray, *, n_boot: int = 1000, seed: int = 0, strata=None) -> dict:
    """U(RL), U(base) and their paired difference with BCa intervals over sequences."""
    return {"rl": bca_interval(sums, upper_share, n_boot=n_boot, seed=seed, strata=strata),
            "base": bca_interval(sums[:, [2, 3, 0, 1]], upper_share, n_boot=n_boot, seed=seed, strata=strata),
            "delta": bca_interval(sums, upper_share_delta, n_boot=n_boot, seed=seed, strata=strata)}
