"""Is gating drift made by the routers or by what they read? A per-layer decomposition.

The router of layer *i* maps the residual stream entering that block, ``x_i``, to a distribution over experts. After
RL both moved: the router weights (``W_base -> W_rl``) and, because every earlier block changed, the stream itself
(``x_i^base -> x_i^rl``). Drift measured between the two models mixes both, and the input part grows with depth on
its own (changes accumulate), so "the upper layers drift most" can happen without RL singling out upper routers.

``router_decomposition`` separates the two with one extra teacher-forced pass per MoE layer: the RL model with the
*base* router transplanted into layer *i* only. Upstream of layer *i* nothing changed, so that layer reads exactly the
RL model's stream ``x_i^rl`` with the base router. Per layer:

* ``router`` effect: drift between ``W_base(x_i^rl)`` and ``W_rl(x_i^rl)`` -- same input, other router;
* ``input`` effect: drift between ``W_base(x_i^base)`` and ``W_base(x_i^rl)`` -- same router, other input;
* ``total``: the ordinary drift between ``W_base(x_i^base)`` and ``W_rl(x_i^rl)``.

Each is a full :func:`adt_probe.gating_drift` Dataset (JS, KL, top-k Jaccard, ... with sequence-bootstrap intervals).

Examples
--------
>>> dec = router_decomposition(base_model, rl_model, inputs, tokenizer=tok)          # doctest: +SKIP
>>> dec.js.sel(segment="think", effect=["router", "input", "total"]).to_pandas()     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

from adt_probe.drift import gating_drift
from adt_probe.recording import record
from adt_probe.weights import check_compatible, transplant

ROUTING_VARS = ("router_logits", "topk_experts", "topk_weights")


def base_router_views(rl_model, base_model, inputs: Mapping, *, rl_recording: xr.Dataset | None = None,
                      tokenizer=None, batch_size: int = 8, routing: str = "full") -> xr.Dataset:
    """A recording of the RL model's streams read by the base routers: layer *i* taken from a pass of the RL model
    with the base router in layer *i* only.

    Returns a Dataset shaped like ``record(rl_model, inputs, routing=routing, lens=None)``; dense layers keep the RL
    model's values (they have no router).
    """
    spec = check_compatible(rl_model, base_model)
    view = rl_recording if rl_recording is not None else record(rl_model, inputs, routing=routing, lens=None,
                                                                tokenizer=tokenizer, batch_size=batch_size)
    names = [v for v in ROUTING_VARS if v in view]
    arrays = {v: np.array(view[v].values) for v in names}
    for layer in spec.moe_layers:
        with transplant(rl_model, base_model, [layer]):
            rec = record(rl_model, inputs, routing=routing, lens=None, tokenizer=tokenizer, batch_size=batch_size)
        for v in names:
            arrays[v][:, layer] = rec[v].values[:, layer]
    out = view[[*names]].copy()
    for v in names:
        out[v] = (view[v].dims, arrays[v])
    out.attrs = {**view.attrs, "role": "rl streams, base routers (per-layer transplant)"}
    return out


def effect_pairs(base_recording: xr.Dataset, rl_recording: xr.Dataset, views: xr.Dataset) -> dict:
    """``effect -> (a, b)``: the two recordings whose drift is that effect (``views`` from
    :func:`base_router_views`)."""
    return {"router": (views, rl_recording), "input": (base_recording, views), "total": (base_recording, rl_recording)}


def router_decomposition(base_model, rl_model, inputs: Mapping, *, base_recording: xr.Dataset | None = None,
                         rl_recording: xr.Dataset | None = None, views: xr.Dataset | None = None, tokenizer=None,
                         batch_size: int = 8, n_boot: int = 1000, seed: int = 0) -> xr.Dataset:
    """Gating drift split into the router effect and the input effect, per layer x segment.

    Parameters
    ----------
    base_model, rl_model : the two models (same architecture).
    inputs : processor output both recordings were made on (teacher-forced token sequences).
    base_recording, rl_recording : ``record(..., routing="full")`` of the two models on ``inputs`` (made here when
        not given).
    views : :func:`base_router_views` of these models and inputs (made here when not given).

    Returns
    -------
    xarray.Dataset: the variables of :func:`adt_probe.gating_drift` with a leading ``effect`` dimension
    (``"router"``, ``"input"``, ``"total"``).
    """
    def rec(model, given):
        return given if given is not None else record(model, inputs, routing="full", lens=None, tokenizer=tokenizer,
                                                      batch_size=batch_size)

    base_rec, rl_rec = rec(base_model, base_recording), rec(rl_model, rl_recording)
    if views is None:
        views = base_router_views(rl_model, base_model, inputs, rl_recording=rl_rec, tokenizer=tokenizer,
                                  batch_size=batch_size)
    parts = {k: gating_drift(a, b, n_boot=n_boot, seed=seed)
             for k, (a, b) in effect_pairs(base_rec, rl_rec, views).items()}
    out = xr.concat(list(parts.values()), dim=xr.DataArray(list(parts), dims="effect", name="effect"),
                    coords="minimal", compat="override")
    out.attrs = {**parts["total"].attrs, "kind": "router_decomposition",
                 "definition": "router: W_base(x_rl) vs W_rl(x_rl); input: W_base(x_base) vs W_base(x_rl); "
                               "total: W_base(x_base) vs W_rl(x_rl); x = the stream entering the block"}
    return out
