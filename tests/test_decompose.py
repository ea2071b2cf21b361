"""The router / input decomposition of gating drift, on a tiny MoE with a planted router change."""

import copy

import numpy as np
import torch

from adt_probe.decompose import router_decomposition
from tests.test_drift import tiny_moe


def test_a_changed_router_is_a_router_effect_there_and_an_input_effect_downstream():
    base = tiny_moe(4)
    rl = copy.deepcopy(base)
    with torch.no_grad():
        rl.model.layers[1].mlp.gate.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    ids = torch.randint(0, 96, (6, 16), generator=torch.Generator().manual_seed(0))
    dec = router_decomposition(base, rl, {"input_ids": ids}, n_boot=50)
    js = dec.js.sel(segment="all")
    router, inputs, total = (js.sel(effect=e).values for e in ("router", "input", "total"))
    assert router[1] > 0.01 and np.allclose(router[[0, 2, 3]], 0, atol=1e-9)  # only layer 1's router changed
    assert np.allclose(inputs[:2], 0, atol=1e-9)  # layers 0 and 1 read unchanged streams
    assert (inputs[2:] > 1e-4).all()  # downstream of the change the streams differ
    np.testing.assert_allclose(total[1], router[1], rtol=1e-6)  # at layer 1 all drift is the router's
    np.testing.assert_allclose(total[2:], inputs[2:], rtol=1e-6)  # below: all of it is the input's
    assert {"js_lo", "js_hi", "top1_agreement"} <= set(dec.data_vars)
