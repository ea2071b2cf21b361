"""The exact router / input split of router-logit changes, on a tiny MoE with a planted router change."""

import copy

import numpy as np
import torch

from adt_probe import plot
from adt_probe.decompose import router_decomposition, router_effects
from tests.helpers import tiny_moe


def planted_pair(layer: int = 1):
    base = tiny_moe(4)
    rl = copy.deepcopy(base)
    with torch.no_grad():
        rl.model.layers[layer].mlp.gate.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    ids = torch.randint(0, 96, (6, 16), generator=torch.Generator().manual_seed(0))
    return base, rl, {"input_ids": ids}


def test_a_changed_router_is_a_router_term_there_and_an_input_term_downstream():
    base, rl, inputs = planted_pair(1)
    dec = router_decomposition(base, rl, inputs, n_boot=50)
    rel = dec.rel_change.sel(segment="all")
    router, inputs_, total = (rel.sel(effect=e).values for e in ("router", "input", "total"))
    assert router[1] > 0.05 and np.all(router[[0, 2, 3]] == 0)  # only layer 1's router changed, exactly
    assert np.all(inputs_[:2] == 0)  # layers 0 and 1 read unchanged streams
    assert (inputs_[2:] > 1e-4).all()  # downstream of the change the streams differ
    share = dec.share.sel(segment="all")
    np.testing.assert_allclose(share.sel(effect="router")[1], 1.0)  # at layer 1 the whole change is the router's
    np.testing.assert_allclose(share.sel(effect="input")[2:], 1.0)  # below it, all of it is the input's
    np.testing.assert_allclose((share.sel(effect="router") + share.sel(effect="input"))[1:], 1.0, rtol=1e-9)
    assert np.isnan(share.sel(effect="router")[0])  # nothing changed at layer 0: no share, not a made-up 0
    assert {"js_lo", "js_hi", "topk_change", "top1_flip"} <= set(dec.data_vars)
    assert int(dec.n_tokens.sel(segment="think")) == 0 and np.isnan(dec.js.sel(segment="think")).all()
    assert plot.drift_decomposition(dec, "js", "all").caption  # the demo's figure still draws it


def test_the_terms_sum_to_the_total_and_are_symmetric():
    """Swapping base and RL flips every term's sign and keeps its norm: no path order."""
    base, rl, inputs = planted_pair(2)
    ab = router_effects(base, rl, inputs)
    ba = router_effects(rl, base, inputs)
    assert ab.attrs["max_residual"] < 1e-10
    np.testing.assert_allclose(ab["norm"].values, ba["norm"].values, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ab["proj"].values, ba["proj"].values, rtol=1e-9, atol=1e-12)
