"""Router weight drift and the router transplant."""

import copy

import numpy as np
import pytest
import torch

import adt_probe
from adt_probe.weights import router_weight_drift, transplant
from tests.helpers import tiny_moe


def test_weight_drift_finds_the_changed_layers_and_reads_checkpoints(tmp_path):
    base = tiny_moe(4)
    rl = copy.deepcopy(base)
    with torch.no_grad():
        rl.model.layers[2].mlp.gate.weight.mul_(1.5)                   # same direction, 50% larger
        rl.model.layers[3].mlp.gate.weight[5].neg_()                   # one expert's row flipped
    d = router_weight_drift(base, rl)
    np.testing.assert_allclose(d.rel_change.values[:2], 0)
    assert d.rel_change.values[2] == pytest.approx(0.5) and d.cosine.values[2] == pytest.approx(1.0)
    assert d.cosine_expert.values[3, 5] == pytest.approx(-1.0) and d.rel_change_expert.values[3, 5] == pytest.approx(2)
    np.testing.assert_allclose(np.delete(d.cosine_expert.values[3], 5), 1.0)
    np.testing.assert_allclose(d.rel_change_other.values, 0)  # only routers moved
    with torch.no_grad():
        rl.model.layers[1].self_attn.q_proj.weight.mul_(2.0)
    d = router_weight_drift(base, rl)
    assert d.rel_change.values[1] == 0 and d.rel_change_other.values[1] > 0.01
    np.testing.assert_allclose(d.rel_change_other.values[[0, 2, 3]], 0)
    base.save_pretrained(tmp_path / "base")
    rl.save_pretrained(tmp_path / "rl")
    from_disk = router_weight_drift(tmp_path / "base", tmp_path / "rl")
    np.testing.assert_allclose(from_disk.rel_change.values, d.rel_change.values, rtol=1e-6)


def test_transplant_swaps_routing_only_inside_the_block():
    base = tiny_moe(4)
    rl = copy.deepcopy(base)
    with torch.no_grad():
        for i in (2, 3):
            rl.model.layers[i].mlp.gate.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(i))
    ids = torch.randint(0, 96, (4, 12), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids}
    before = adt_probe.record(rl, inputs, lens=None)
    reference = adt_probe.record(base, inputs, lens=None)
    with transplant(rl, base, layers=[2, 3]):
        inside = adt_probe.record(rl, inputs, lens=None)
        with torch.no_grad():
            logits_inside = rl(**inputs).logits
    after = adt_probe.record(rl, inputs, lens=None)
    np.testing.assert_array_equal(inside.topk_experts.values, reference.topk_experts.values)
    np.testing.assert_array_equal(after.topk_experts.values, before.topk_experts.values)
    with torch.no_grad():
        torch.testing.assert_close(logits_inside, base(**inputs).logits)  # only the routers differed


def test_incompatible_models_are_refused():
    with pytest.raises(ValueError, match="layers"), transplant(tiny_moe(4), tiny_moe(4), layers=[7]):
        pass
    with pytest.raises(ValueError, match="moe_layers"):
        router_weight_drift(tiny_moe(4), tiny_moe(3))


def test_random_updates_have_the_asked_size_and_touch_only_their_part():
    from adt_probe.weights import random_update, router_nulls, router_parameter_names, update_norms

    base = tiny_moe(4)
    routers = router_parameter_names(base)
    assert routers and all("gate" in n for n in routers)
    rel = random_update(base, part="routers", rel=0.1, seed=0)
    norms = update_norms(base, rel)
    for name, p in base.named_parameters():
        expected = 0.1 * float(p.detach().double().norm()) if name in routers else 0.0
        assert norms[name] == pytest.approx(expected, rel=1e-5, abs=1e-12), name
    others = random_update(base, part="others", norms={n: 0.5 for n in norms}, seed=1)
    got = update_norms(base, others)
    assert all(got[n] == 0 for n in routers) and all(got[n] == pytest.approx(0.5, rel=1e-5)
                                                     for n in norms if n not in routers)
    nulls = router_nulls(base, 0.05, 3, seed=0)
    assert len(nulls) == 3 and set(nulls[0]) == set(range(4))
    with pytest.raises(ValueError, match="exactly one of rel"):
        random_update(base, part="all", seed=0)
