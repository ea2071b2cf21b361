"""The router effect at fixed input: an exact, symmetric split of every router-logit change.

The router of MoE layer *i* maps the stream entering it, ``x``, to logits ``z = W x + b``. Between a base and an RL
model both moved: the router (``W_b -> W_r``) and, because every earlier block changed, its input (``x_b -> x_r``).
With midpoints ``W̄ = (W_b + W_r) / 2``, ``x̄ = (x_b + x_r) / 2`` and differences ``ΔW``, ``Δx``, ``Δb``::

    z_r - z_b = (ΔW x̄ + Δb) + W̄ Δx            exactly (no interaction term, no path order)
                 router term    input term

``router_effects`` computes this from one teacher-forced pass per model (the router inputs of every MoE layer are
captured; nothing is transplanted), token by token, and keeps per token x layer:

* the norms of the router term, the input term, the total change and the reference logits ``W̄ x̄ + b̄`` (for softmax
  routers the logits are centred over experts first: a shift common to all experts changes no routing). A layer's
  *relative router-logit change* is ``sum ||ΔW x̄ + Δb|| / sum ||W̄ x̄ + b̄||`` over tokens: scale-free, so layers of
  different sensitivity and models of different size compare;
* the projections ``<term, total>`` of both terms on the total change (they sum to ``||total||²``, so
  ``share = sum <term, total> / sum ||total||²`` gives router and input shares that add up to 1 exactly);
* routing changes at fixed input: the top-k set change rate (``1 - |top-k(a) ∩ top-k(b)| / k``), the top-1 flip
  rate and the Jensen-Shannon divergence (bits) between the base and the RL router reading the *same* stream, averaged
  over the two real streams (``x_b`` and ``x_r``: symmetric); the input effect likewise with the router held fixed
  (averaged over ``W_b`` and ``W_r``), and the total between ``(W_b, x_b)`` and ``(W_r, x_r)``.

A selection-only bias (DeepSeek-V3's ``e_score_correction_bias``) changes which experts are chosen but no logit: it
enters the routing changes (with its router), not the logit norms.

Random-update nulls (``nulls=``) are extra router changes ``ΔW_k`` evaluated at the same inputs: their relative
router-logit change ``sum ||ΔW_k x̄|| / sum ||W̄ x̄||`` says how much a layer's logits move under a router update of
a given relative size (layers differ in sensitivity), which is what a band contrast has to be calibrated against.

Examples
--------
>>> eff = router_effects(base_model, rl_model, inputs, tokenizer=tok)                  # doctest: +SKIP
>>> layer_effects(eff, segment="think").rel_change.sel(effect="router").to_series()   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from adt_probe.architectures import ArchitectureSpec, architecture, get_module
from adt_probe.drift import ALL, segment_index
from adt_probe.recording import SCHEMA_VERSION, capture_hooks
from adt_probe.segments import SEGMENTS, segment_tokens
from adt_probe.stats import bootstrap_ratio, per_sequence_sums
from adt_probe.weights import check_compatible, router_tensors

EFFECTS = ("router", "input", "total")
#: routing changes kept per token and effect (beside the logit-vector norms and projections)
ROUTING_METRICS = ("topk_change", "top1_flip", "js")


def router_params(model, spec: ArchitectureSpec) -> dict[int, tuple[torch.Tensor, torch.Tensor | None,
                                                                   torch.Tensor | None]]:
    """``layer -> (W (experts, hidden), b (experts,) or None, selection bias or None)`` in float64."""
    blocks = get_module(model, spec.layers)
    out = {}
    for i in spec.moe_layers:
        t = router_tensors(spec, blocks[i])
        out[i] = (t["weight"].detach().double(), t["bias"].detach().double() if "bias" in t else None,
                  spec.selection_bias(blocks[i]))
    return out


def _logits(w: torch.Tensor, b: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """Linear router logits (tokens, experts), float64, before any soft-cap (``_route`` applies it)."""
    return F.linear(x, w, b)


def _route(spec: ArchitectureSpec, z: torch.Tensor, sel_bias) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top-k experts (tokens, k), top-1 expert (tokens,), routing distribution (tokens, experts)) of linear logits."""
    if spec.logit_softcap:
        z = torch.tanh(z / spec.logit_softcap) * spec.logit_softcap
    experts, weights = spec.route(z, bias=sel_bias)
    top1 = experts.gather(-1, weights.argmax(-1, keepdim=True))[:, 0]
    return experts, top1, spec.probs(z).double()


def _routing_change(a, b, k: int) -> dict[str, torch.Tensor]:
    """Per-token top-k set change rate, top-1 flip and JS (bits) between two ``_route`` results."""
    inter = (a[0][:, :, None] == b[0][:, None, :]).any(-1).sum(-1).double()
    pa, pb = a[2], b[2]
    m = 0.5 * (pa + pb)

    def kl(p, q):
        return torch.where(p > 0, p * (p.clamp_min(1e-300).log() - q.clamp_min(1e-300).log()), 0.0).sum(-1)

    return {"topk_change": 1.0 - inter / k, "top1_flip": (a[1] != b[1]).double(),
            "js": (0.5 * kl(pa, m) + 0.5 * kl(pb, m)) / np.log(2)}


def _layer_effects(spec: ArchitectureSpec, pb, pr, xb: torch.Tensor, xr_: torch.Tensor,
                   nulls: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    """All per-token quantities of one MoE layer; ``pb``/``pr`` are ``router_params`` entries, x (tokens, hidden)."""
    (wb, bb, sb), (wr, br, sr) = pb, pr
    zero = torch.zeros(wb.shape[0], dtype=torch.float64)
    bb_, br_ = (bb if bb is not None else zero), (br if br is not None else zero)
    xm, dx = 0.5 * (xb + xr_), xr_ - xb
    wm, dw, bm, db = 0.5 * (wb + wr), wr - wb, 0.5 * (bb_ + br_), br_ - bb_
    terms = {"router": xm @ dw.T + db, "input": dx @ wm.T, "total": (xr_ @ wr.T + br_) - (xb @ wb.T + bb_)}
    ref = xm @ wm.T + bm
    null_terms = [xm @ d.T for d in nulls]
    if spec.scoring == "softmax":  # a shift shared by all experts routes nothing differently
        def centre(v):
            return v - v.mean(-1, keepdim=True)
        terms, ref = {k: centre(v) for k, v in terms.items()}, centre(ref)
        null_terms = [centre(v) for v in null_terms]
    out = {f"norm_{k}": v.norm(dim=-1) for k, v in terms.items()}
    out["norm_ref"] = ref.norm(dim=-1)
    out["residual"] = (terms["router"] + terms["input"] - terms["total"]).abs().amax(-1)
    for k in ("router", "input"):
        out[f"proj_{k}"] = (terms[k] * terms["total"]).sum(-1)
    out["sq_total"] = terms["total"].pow(2).sum(-1)
    for j, v in enumerate(null_terms):
        out[f"norm_null_{j}"] = v.norm(dim=-1)
    k = spec.top_k
    r_bb, r_rr = _route(spec, _logits(wb, bb, xb), sb), _route(spec, _logits(wr, br, xr_), sr)
    r_br, r_rb = _route(spec, _logits(wb, bb, xr_), sb), _route(spec, _logits(wr, br, xb), sr)
    pairs = {"router": [(r_bb, r_rb), (r_br, r_rr)], "input": [(r_bb, r_br), (r_rb, r_rr)], "total": [(r_bb, r_rr)]}
    for effect, items in pairs.items():
        changes = [_routing_change(a, b, k) for a, b in items]
        for m in ROUTING_METRICS:
            out[f"{m}_{effect}"] = sum(c[m] for c in changes) / len(changes)
    return {name: v.numpy() for name, v in out.items()}


def batches(inputs: Mapping, batch_size: int):
    """Yield ``inputs`` in slices of ``batch_size`` sequences (tensors whose first dimension is the batch)."""
    n = int(inputs["input_ids"].shape[0])
    for start in range(0, n, batch_size):
        yield {k: v[start:start + batch_size] if torch.is_tensor(v) and v.ndim and v.shape[0] == n else v
               for k, v in inputs.items()}


def _tokens_of(batch: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
    ids = batch["input_ids"]
    return ids, batch.get("attention_mask", torch.ones_like(ids)).bool()


def capture_router_inputs(model, inputs: Mapping, *, batch_size: int = 8) -> list[dict[int, torch.Tensor]]:
    """The input of every router, per batch of ``batch_size`` sequences: ``[{layer: (batch, seq, hidden)}, ...]``.

    Pass it as ``router_effects(..., base_inputs=...)`` to compare one base with many models (controls) without
    running the base again; it holds tokens x MoE layers x hidden floats, so keep it for small models only.
    """
    spec = architecture(model)
    return [capture_hooks(model, spec, batch)[1] for batch in batches(inputs, batch_size)]


def router_effects(base_model, rl_model, inputs: Mapping, *, tokenizer=None, segments=None,
                   nulls: Sequence[Mapping[int, torch.Tensor]] = (), batch_size: int = 8,
                   base_inputs: Sequence[Mapping[int, torch.Tensor]] | None = None) -> xr.Dataset:
    """The exact router / input split of every router-logit change, per token x MoE layer.

    Parameters
    ----------
    base_model, rl_model : two models of the same architecture (``adt_probe.weights.check_compatible``).
    inputs : processor output (``input_ids`` (batch, seq), ``attention_mask``, audio features), teacher-forced
        through both models (one pass each).
    tokenizer : labels segments (``adt_probe.segments``); without it every token is ``other``.
    segments : (batch, seq) labels instead of the tokenizer's.
    nulls : random router updates, each ``{layer: ΔW (experts, hidden)}``, evaluated at the same inputs.
    batch_size : sequences per forward pass.
    base_inputs : :func:`capture_router_inputs` of ``base_model`` on ``inputs`` with this ``batch_size`` (skips
        the base's pass).

    Returns
    -------
    xarray.Dataset, dims ``token`` (real tokens, coordinates ``sequence``, ``position``, ``token_id``,
    ``segment``), ``layer`` (MoE layers only), ``effect`` (router, input, total), ``null``:
    ``norm`` (token, layer, effect; logit units), ``norm_ref`` (token, layer), ``proj`` (token, layer, effect;
    ``<term, total>``, total's is ``||total||²``), ``topk_change``, ``top1_flip``, ``js`` (token, layer, effect),
    ``norm_null`` (token, layer, null). ``attrs["max_residual"]``: the largest ``|router + input - total|`` logit
    over all tokens (float64 rounding; the split is exact).
    """
    spec = check_compatible(base_model, rl_model)
    pb, pr = router_params(base_model, spec), router_params(rl_model, spec)
    layers = list(spec.moe_layers)
    for i, d in enumerate(nulls):
        if set(d) != set(layers):
            raise ValueError(f"null {i} covers layers {sorted(d)}, the MoE layers are {layers}")
    null_w = [{lay: d[lay].detach().double() for lay in layers} for d in nulls]
    ids_all, mask_all = _tokens_of(inputs)
    if segments is None:
        segments = (segment_tokens(getattr(tokenizer, "tokenizer", tokenizer), ids_all, mask_all)
                    if tokenizer is not None else np.full(tuple(ids_all.shape), "other", dtype="<U6"))
    parts: dict[str, list[np.ndarray]] = {}
    for b, batch in enumerate(batches(inputs, batch_size)):
        flat = _tokens_of(batch)[1].reshape(-1)
        xb_all = base_inputs[b] if base_inputs is not None else capture_hooks(base_model, spec, batch)[1]
        _, xr_all = capture_hooks(rl_model, spec, batch)
        per_layer = []
        for lay in layers:
            xb = xb_all[lay].reshape(-1, xb_all[lay].shape[-1])[flat].double()
            xr_ = xr_all[lay].reshape(-1, xr_all[lay].shape[-1])[flat].double()
            per_layer.append(_layer_effects(spec, pb[lay], pr[lay], xb, xr_, [d[lay] for d in null_w]))
        for name in per_layer[0]:
            parts.setdefault(name, []).append(np.stack([p[name] for p in per_layer], axis=1))
    cat = {name: np.concatenate(v, axis=0) for name, v in parts.items()}
    return _effects_dataset(cat, ids_all, mask_all, np.asarray(segments), layers, len(nulls), spec)


def _effects_dataset(cat, ids, mask, segments, layers, n_null, spec) -> xr.Dataset:
    flat = mask.reshape(-1).numpy()
    seq = np.repeat(np.arange(ids.shape[0]), ids.shape[1])[flat]
    position = (mask.long().cumsum(1) - 1).clamp(min=0).reshape(-1).numpy()[flat]
    tle = ("token", "layer", "effect")
    data = {"norm": (tle, np.stack([cat[f"norm_{e}"] for e in EFFECTS], -1)),
            "norm_ref": (("token", "layer"), cat["norm_ref"]),
            "proj": (tle, np.stack([cat["proj_router"], cat["proj_input"], cat["sq_total"]], -1)),
            **{m: (tle, np.stack([cat[f"{m}_{e}"] for e in EFFECTS], -1)) for m in ROUTING_METRICS}}
    if n_null:
        data["norm_null"] = (("token", "layer", "null"), np.stack([cat[f"norm_null_{j}"] for j in range(n_null)], -1))
    ds = xr.Dataset(data, coords={"token": np.arange(len(seq)), "sequence": ("token", seq),
                                  "position": ("token", position),
                                  "token_id": ("token", ids.reshape(-1).numpy()[flat]),
                                  "segment": ("token", segments.reshape(-1)[flat].astype("<U6")),
                                  "layer": layers, "effect": list(EFFECTS), "null": np.arange(n_null)})
    ds.attrs = {"schema_version": SCHEMA_VERSION, "kind": "router_effects", "architecture": spec.family,
                "router_scoring": spec.scoring,
                "top_k": spec.top_k, "max_residual": float(cat["residual"].max()) if cat["residual"].size else 0.0,
                "centred": int(spec.scoring == "softmax"),
                "definition": "z_r - z_b = (dW xbar + db) [router] + Wbar dx [input], exactly; norms of "
                              "centred logits for softmax routers; routing changes at fixed input averaged over "
                              "both real inputs (router) or both routers (input)"}
    return ds


def token_groups(effects: xr.Dataset, segment: str = ALL) -> np.ndarray:
    """Boolean (token,) mask of ``segment`` (``"all"``: every token)."""
    if segment == ALL:
        return np.ones(effects.sizes["token"], bool)
    if segment not in SEGMENTS:
        raise ValueError(f"segment {segment!r}: choose one of {(*SEGMENTS, ALL)}")
    return segment_index(effects) == SEGMENTS.index(segment)


def per_sequence(effects: xr.Dataset, values: np.ndarray, segment: str = ALL) -> tuple[np.ndarray, np.ndarray]:
    """Per-sequence sums and counts of a per-token quantity (token, ...) over tokens of ``segment``."""
    keep = token_groups(effects, segment)
    seq_ids, seq = np.unique(effects["sequence"].values, return_inverse=True)
    v = np.where(keep.reshape((-1,) + (1,) * (values.ndim - 1)), values, np.nan)
    s, c = per_sequence_sums(v, seq, np.zeros(len(seq), np.int64), len(seq_ids), 1)
    return s[:, 0], c[:, 0]


def layer_effects(effects: xr.Dataset, *, segment: str = ALL, n_boot: int = 1000, seed: int = 0) -> xr.Dataset:
    """Per layer x effect: relative logit change, share of the total, routing changes; 95% sequence-bootstrap
    intervals (``_lo``/``_hi``).

    ``rel_change`` = sum ||term|| / sum ||W̄ x̄ + b̄|| (scale-free); ``share`` = sum <term, total> / sum ||total||²
    (router + input = 1); ``topk_change``, ``top1_flip`` (rates), ``js`` (bits): token means.
    """
    data = {}
    ref_s, _ = per_sequence(effects, effects["norm_ref"].values[..., None], segment)
    norm_s, _ = per_sequence(effects, effects["norm"].values, segment)
    proj_s, _ = per_sequence(effects, effects["proj"].values, segment)
    tot_s = proj_s[..., 2:3]
    ratios = {"rel_change": (norm_s, np.broadcast_to(ref_s, norm_s.shape)),
              "share": (proj_s, np.broadcast_to(tot_s, proj_s.shape))}
    for m in ROUTING_METRICS:
        ratios[m] = per_sequence(effects, effects[m].values, segment)
    for name, (s, c) in ratios.items():
        est, lo, hi = bootstrap_ratio(s, c, n_boot=n_boot, seed=seed)
        for suffix, v in (("", est), ("_lo", lo), ("_hi", hi)):
            data[name + suffix] = (("layer", "effect"), v)
    _, counts = per_sequence(effects, effects["norm_ref"].values, segment)
    ds = xr.Dataset(data, coords={"layer": effects["layer"].values, "effect": list(EFFECTS)})
    ds["n_tokens"] = int(counts[:, 0].sum())
    ds.attrs = {**effects.attrs, "segment": segment, "n_boot": n_boot,
                "interval": "95% percentile bootstrap over sequences"}
    return ds


def router_decomposition(base_model, rl_model, inputs: Mapping, *, tokenizer=None, batch_size: int = 8,
                         n_boot: int = 1000, seed: int = 0) -> xr.Dataset:
    """:func:`router_effects` summarised per layer (:func:`layer_effects`) for every segment and ``"all"``.

    Returns
    -------
    xarray.Dataset, dims ``segment``, ``layer``, ``effect`` (router, input, total): ``rel_change``, ``share``,
    ``topk_change``, ``top1_flip``, ``js`` (each + ``_lo``/``_hi``), ``n_tokens`` (segment); NaN for a segment
    without tokens. ``plot.drift_decomposition(dec, "js", "think")`` draws it.
    """
    effects = router_effects(base_model, rl_model, inputs, tokenizer=tokenizer, batch_size=batch_size)
    present = set(effects["segment"].values.astype(str))
    parts = []
    for segment in (*SEGMENTS, ALL):
        if segment == ALL or segment in present:
            parts.append(layer_effects(effects, segment=segment, n_boot=n_boot, seed=seed))
        else:
            empty = layer_effects(effects, segment=ALL, n_boot=0) * np.nan
            parts.append(empty.assign(n_tokens=0))
    out = xr.concat(parts, dim=xr.DataArray([*SEGMENTS, ALL], dims="segment", name="segment"))
    out.attrs = {**effects.attrs, "kind": "router_decomposition", "n_boot": n_boot,
                 "interval": "95% percentile bootstrap over sequences"}
    return out


def band_sums(effects: xr.Dataset, quantity: str, *, lower: Sequence[int], upper: Sequence[int],
              segment: str = ALL) -> np.ndarray:
    """Per-sequence sums for an upper-versus-lower band contrast, shape (n_seq, 4): ``[num_upper, den_upper,
    num_lower, den_lower]`` (use with :func:`band_ratio` and ``adt_probe.stats.bca_interval``).

    ``quantity``: ``"rel_<effect>"`` (norm of that term over the norm of the reference logits), ``"share_<effect>"``
    (``<term, total> / ||total||²``: router and input shares add up to 1), ``"rel_null_<j>"``
    (random router update ``j``), or ``"<routing metric>_<effect>"`` (token mean of ``topk_change``, ``top1_flip``,
    ``js``).
    """
    layer_pos = {int(v): i for i, v in enumerate(effects["layer"].values)}
    missing = [i for i in (*lower, *upper) if i not in layer_pos]
    if missing:
        raise ValueError(f"layers {missing} are not MoE layers of these effects ({sorted(layer_pos)})")
    kind, _, which = quantity.partition("_")
    if quantity.startswith("rel_null_"):
        num, den = effects["norm_null"].values[..., int(quantity.rsplit("_", 1)[1])], effects["norm_ref"].values
    elif kind == "rel":
        num, den = effects["norm"].sel(effect=which).values, effects["norm_ref"].values
    elif kind == "share":
        num, den = effects["proj"].sel(effect=which).values, effects["proj"].sel(effect="total").values
    else:
        metric, effect = quantity.rsplit("_", 1)
        if metric not in ROUTING_METRICS or effect not in EFFECTS:
            raise ValueError(f"quantity {quantity!r}: use rel_<effect>, rel_null_<j> or <metric>_<effect> with "
                             f"metric in {ROUTING_METRICS} and effect in {EFFECTS}")
        num = effects[metric].sel(effect=effect).values
        den = np.where(np.isnan(num), np.nan, 1.0)
    cols = []
    for band in (upper, lower):
        idx = [layer_pos[i] for i in band]
        s_num, _ = per_sequence(effects, num[:, idx].sum(1), segment)
        s_den, _ = per_sequence(effects, den[:, idx].sum(1), segment)
        cols += [s_num, s_den]
    return np.stack(cols, axis=1)


def band_ratio(sums: np.ndarray) -> np.ndarray:
    """Upper-band mean over lower-band mean from :func:`band_sums` column sums (..., 4)."""
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 when nothing changed: NaN, counted by callers
        return (sums[..., 0] / sums[..., 1]) / (sums[..., 2] / sums[..., 3])


def band_mean(which: str):
    """The statistic ``upper`` or ``lower`` band mean of :func:`band_sums` column sums."""
    j = {"upper": 0, "lower": 2}[which]
    return lambda sums: sums[..., j] / sums[..., j + 1]
