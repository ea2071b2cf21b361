"""Router *weight* drift between two checkpoints, and the router transplant used for the causal test.

``router_weight_drift`` compares the router parameters themselves (no data needed): per layer and per expert row,
the relative change ||W_rl - W_base|| / ||W_base|| and the cosine of the two. ``transplant`` is a context manager
under which one model routes with another model's routers on chosen layers (weights, linear bias and selection
bias are swapped in and restored on exit), so the effect of RL's routing changes in a band of layers can be measured
causally on accuracy and reward.

Examples
--------
>>> router_weight_drift(base_model, rl_model).rel_change.to_series()        # doctest: +SKIP
>>> with transplant(rl_model, base_model, layers=range(4, 8)):               # doctest: +SKIP
...     accuracy_with_base_routers_up_top = evaluate(rl_model, ...)
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from adt_probe.architectures import ArchitectureSpec, architecture, get_module
from adt_probe.loading import load_model  # the one loader (class from config.json, all weights or an error)


def _as_model(x):
    return load_model(x) if isinstance(x, (str, Path)) else x


def router_tensors(spec: ArchitectureSpec, block) -> dict[str, torch.Tensor]:
    """The router parameters of one decoder block: ``weight`` (experts, hidden), and ``bias`` / ``score_bias``
    where the family has them (the live tensors, not copies)."""
    router = get_module(block, spec.router)
    out = {"weight": get_module(router, spec.router_weight)}
    if spec.router_bias:
        out["bias"] = get_module(router, spec.router_bias)
    if spec.score_bias:
        out["score_bias"] = get_module(block, spec.score_bias)
    return out


def check_compatible(a, b) -> ArchitectureSpec:
    """The shared spec of two models; a clear error if their architectures, layer or expert counts differ."""
    sa, sb = architecture(a), architecture(b)
    for field in ("family", "n_experts", "top_k", "moe_layers"):
        if getattr(sa, field) != getattr(sb, field):
            raise ValueError(f"the two models differ in {field}: {getattr(sa, field)} vs {getattr(sb, field)}; "
                             "compare a base model with an RL model trained from it.")
    if not sa.moe_layers:  # dense models: nothing router-shaped to compare
        return sa
    wa = router_tensors(sa, get_module(a, sa.layers)[sa.moe_layers[0]])["weight"]
    wb = router_tensors(sb, get_module(b, sb.layers)[sb.moe_layers[0]])["weight"]
    if wa.shape != wb.shape:
        raise ValueError(f"router weights have shapes {tuple(wa.shape)} and {tuple(wb.shape)}")
    return sa


def _rel_change_other(spec: ArchitectureSpec, block_a, block_b) -> float:
    """||theta_b - theta_a|| / ||theta_a|| over the block's parameters that are not router tensors."""
    skip = {id(t) for t in router_tensors(spec, block_a).values()}
    num = den = 0.0
    for (_, pa), (_, pb) in zip(block_a.named_parameters(), block_b.named_parameters()):
        if id(pa) in skip:
            continue
        num += float((pb.detach().double() - pa.detach().double()).pow(2).sum())
        den += float(pa.detach().double().pow(2).sum())
    return (num ** 0.5) / max(den ** 0.5, 1e-30)


def router_weight_drift(base, rl) -> xr.Dataset:
    """Relative change and cosine of router weights per layer and per expert.

    Parameters
    ----------
    base, rl : models or checkpoint folders of the same architecture.

    Returns
    -------
    xarray.Dataset: ``rel_change`` and ``cosine`` (layer), ``rel_change_expert`` and ``cosine_expert``
    (layer x expert); dense layers hold NaN. ``rel_change_other`` (layer): the same relative change over all
    *other* parameters of the block (attention, experts, norms), the reference a router change is read against:
    a router that moved 1% in a block whose other weights moved 5% was not singled out by training.
    """
    base, rl = _as_model(base), _as_model(rl)
    spec = check_compatible(base, rl)
    n_layers = len(get_module(base, spec.layers))
    rel, cos, other = np.full(n_layers, np.nan), np.full(n_layers, np.nan), np.full(n_layers, np.nan)
    rel_e, cos_e = np.full((n_layers, spec.n_experts), np.nan), np.full((n_layers, spec.n_experts), np.nan)
    for i in spec.moe_layers:
        wa = router_tensors(spec, get_module(base, spec.layers)[i])["weight"].detach().double()
        wb = router_tensors(spec, get_module(rl, spec.layers)[i])["weight"].detach().double()
        rel[i] = float((wb - wa).norm() / wa.norm().clamp_min(1e-30))
        cos[i] = float(torch.nn.functional.cosine_similarity(wa.flatten(), wb.flatten(), dim=0))
        rows = min(spec.n_experts, wa.shape[0])
        rel_e[i, :rows] = ((wb - wa).norm(dim=1) / wa.norm(dim=1).clamp_min(1e-30))[:rows].numpy()
        cos_e[i, :rows] = torch.nn.functional.cosine_similarity(wa, wb, dim=1)[:rows].numpy()
        other[i] = _rel_change_other(spec, get_module(base, spec.layers)[i], get_module(rl, spec.layers)[i])
    return xr.Dataset({"rel_change": ("layer", rel), "cosine": ("layer", cos),
                       "rel_change_other": ("layer", other), "rel_change_expert": (("layer", "expert"), rel_e),
                       "cosine_expert": (("layer", "expert"), cos_e)},
                      coords={"layer": np.arange(n_layers), "expert": np.arange(spec.n_experts)},
                      attrs={"kind": "router_weight_drift", "architecture": spec.family,
                             "definition": "rel_change = ||W_rl - W_base||_F / ||W_base||_F; cosine of flattened W"})


@contextlib.contextmanager
def transplant(model, donor, layers: Iterable[int]) -> Iterator[None]:
    """Within the block, ``model`` routes with ``donor``'s routers on ``layers`` (then its own are restored).

    ``transplant(rl, base, band)`` asks what RL's routing changes in ``band`` contribute; the reverse,
    ``transplant(base, rl, band)``, whether they suffice. Only router parameters move; experts, attention and
    norms stay the model's own.
    """
    spec = check_compatible(model, donor)
    layers = list(layers)
    bad = [i for i in layers if i not in spec.moe_layers]
    if bad:
        raise ValueError(f"layers {bad} have no router (MoE layers: {list(spec.moe_layers)})")
    saved = []
    with torch.no_grad():
        for i in layers:
            mine = router_tensors(spec, get_module(model, spec.layers)[i])
            theirs = router_tensors(spec, get_module(donor, spec.layers)[i])
            for name, tensor in mine.items():
                saved.append((tensor, tensor.detach().clone()))
                tensor.copy_(theirs[name].to(tensor.device, tensor.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for tensor, original in saved:
                tensor.copy_(original)


#: which parameters a random update touches: the routers, every other parameter, or all of them
PARTS = ("routers", "others", "all")


def router_parameter_names(model) -> set[str]:
    """Names (as in ``model.named_parameters()``) of every router tensor: weight, bias, selection bias."""
    spec = architecture(model)
    blocks = get_module(model, spec.layers)
    ids = {id(t) for i in spec.moe_layers for t in router_tensors(spec, blocks[i]).values()}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def update_norms(base, rl) -> dict[str, float]:
    """Per tensor, ``||theta_rl - theta_base||_F`` (float64), for every floating-point parameter."""
    check_compatible(base, rl)
    theirs = dict(rl.named_parameters())
    return {name: float((theirs[name].detach().double() - p.detach().double()).norm())
            for name, p in base.named_parameters() if p.is_floating_point()}


def random_update(model, *, part: str = "all", rel=None, norms: dict[str, float] | None = None, seed: int = 0):
    """A copy of ``model`` with an isotropic Gaussian change of chosen tensors.

    Parameters
    ----------
    model : the model to start from (left unchanged).
    part : ``"routers"``, ``"others"`` (every parameter but the routers) or ``"all"``.
    rel : relative size per tensor, ``||delta|| = rel * ||theta||``: a float, or a function of the parameter name
        (to plant a band: ``lambda name: 0.2 if "layers.6." in name else 0.02``).
    norms : absolute size per tensor name instead (``update_norms(base, rl)``: a random direction of RL's size);
        tensors missing from it stay unchanged.
    seed : the Gaussian draws (one generator, tensors in ``named_parameters`` order).

    Returns
    -------
    The changed copy (same class, eval mode).
    """
    if part not in PARTS:
        raise ValueError(f"part={part!r}: choose one of {PARTS}")
    if (rel is None) == (norms is None):
        raise ValueError("give exactly one of rel= (relative size) or norms= (absolute size per tensor)")
    out = copy.deepcopy(model).eval()
    routers = router_parameter_names(out)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in out.named_parameters():
            wanted = part == "all" or (part == "routers") == (name in routers)
            if not p.is_floating_point() or not wanted:
                continue
            size = (norms.get(name, 0.0) if norms is not None
                    else (rel(name) if callable(rel) else rel) * float(p.detach().double().norm()))
            direction = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if size > 0:
                p.add_((direction * (size / float(direction.norm()))).to(p.dtype))
    return out


def router_nulls(model, rel: float, k: int, seed: int = 0) -> list[dict[int, torch.Tensor]]:
    """``k`` random router updates of the same relative size ``rel`` in every MoE layer: ``{layer: delta W}``.

    The calibration of a band contrast: with every router moved by the same relative amount, any difference between
    bands is the layers' own sensitivity (``adt_probe.decompose.router_effects(..., nulls=...)``).
    """
    spec = architecture(model)
    blocks = get_module(model, spec.layers)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        draw = {}
        for i in spec.moe_layers:
            w = router_tensors(spec, blocks[i])["weight"].detach().double()
            d = torch.randn(w.shape, generator=gen, dtype=torch.float64)
            draw[i] = d * (rel * float(w.norm()) / float(d.norm()))
        out.append(draw)
    return out


def _rescaled(theta: torch.Tensor, delta: torch.Tensor, want: float, dtype: torch.dtype,
              rounds: int = 4) -> torch.Tensor:
    """``theta + s * delta`` in ``dtype`` with ``s`` chosen so that the update *after rounding to dtype* has norm
    ``want``: rounding adds noise of norm ~eps ||theta||, which is 1e-5 of a small update (a few RL steps) in
    float32, so the scale is corrected from the realised norm a few times (float64 in, ``dtype`` out)."""
    scale = want / float(delta.norm())
    for _ in range(rounds):
        out = (theta + delta * scale).to(dtype)
        realised = float((out.double() - theta).norm())
        if realised == 0.0 or abs(realised / want - 1) < 1e-9:
            break
        scale *= want / realised
    return out


def matched_update(base, moved, norms: dict[str, float]) -> tuple[object, dict]:
    """``base`` plus ``moved``'s update rescaled per tensor to a given norm: the direction of one update at the size
    of another (an SFT update at the RL update's size, say).

    Parameters
    ----------
    base, moved : models of the same architecture (left unchanged); the update is ``theta_moved - theta_base``.
    norms : per tensor name the wanted ``||delta||_F`` (``update_norms(base, rl)``); tensors missing from it stay.

    Returns
    -------
    (model, info): the rescaled copy (eval mode) and ``{"unmatched": names the update left at exactly 0 although a
    norm > 0 was asked (they stay unchanged), "unmatched_share": their share of the asked squared norm,
    "max_rel_error": the largest |realised / asked - 1| over matched tensors (rounding to the parameter dtype)}``.
    """
    check_compatible(base, moved)
    out = copy.deepcopy(base).eval()
    theirs = dict(moved.named_parameters())
    unmatched = []
    with torch.no_grad():
        for name, p in out.named_parameters():
            want = norms.get(name, 0.0)
            if not p.is_floating_point() or name not in norms:
                continue
            delta = theirs[name].detach().double() - p.detach().double()  # float64: the rescale adds no rounding
            size = float(delta.norm())
            if size == 0.0:
                unmatched += [name] if want > 0 else []
                continue
            p.copy_(_rescaled(p.detach().double(), delta, want, p.dtype))
    realised = update_norms(base, out)
    errors = [abs(realised[n] / norms[n] - 1) for n in norms if norms[n] > 0 and n not in unmatched]
    total = sum(v ** 2 for v in norms.values())
    return out, {"unmatched": unmatched, "max_rel_error": max(errors, default=0.0),
                 "unmatched_share": sum(norms[n] ** 2 for n in unmatched) / total if total > 0 else 0.0}
