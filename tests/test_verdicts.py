"""The verdict rules (``analyses.verdicts``) on their own and on planted and control changes of the shipped organism.

The organism tests read the reference chains teacher-forced (think tokens without generation) and assert verdicts
and exact zeros only, never the organism's particular numbers, so a retrained organism keeps them meaningful.
"""

import json

import numpy as np
import pytest
import torch

from adt_probe.weights import random_update
from analyses import verdicts
from analyses.compare import reference_texts, router_finding
from analyses.sequences import teacher_forced_inputs

N_ITEMS = 10  # >= verdicts.MIN_SEQUENCES
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def organism():
    from rl.data.tasks import generate_items
    from rl.organism import load_organism

    torch.manual_seed(0)
    base, processor = load_organism()
    items = generate_items(N_ITEMS, seed=5)
    inputs = teacher_forced_inputs(processor, items, reference_texts(items))
    return base, processor, items, inputs


def _upper(model) -> set[int]:
    from adt_probe.architectures import architecture

    layers = list(architecture(model).moe_layers)
    return set(layers[len(layers) // 2:])


def planted(base, band: str, *, big: float = 0.2, small: float = 0.02):
    """A small isotropic change of every weight, then the routers of one band changed ``big / small`` times more."""
    upper = _upper(base)

    def rel(name: str) -> float:
        in_upper = any(f"layers.{i}." in name for i in upper)
        return big if in_upper == (band == "upper") else small

    return random_update(random_update(base, part="all", rel=0.01, seed=3), part="routers", rel=rel, seed=4)


def finding(organism, rl):
    base, processor, items, inputs = organism
    return router_finding(base, [rl], [inputs], items, tokenizer=processor.tokenizer, n_nulls=5, n_boot=200)


def test_isotropic_change_of_every_weight_does_not_reproduce(organism):
    f = finding(organism, random_update(organism[0], part="all", rel=0.05, seed=1))
    assert f["verdict"]["verdict"] != "reproduces"
    assert f["numbers"]["segment"] == "think"


def test_routers_untouched_everything_else_changed_does_not_reproduce(organism):
    f = finding(organism, random_update(organism[0], part="others", rel=0.10, seed=2))
    assert f["verdict"]["verdict"] != "reproduces"
    eff = f["effects"][0]
    assert float(np.abs(eff["norm"].sel(effect="router")).max()) == 0.0  # no router term at all
    assert float(eff["norm"].sel(effect="input").max()) > 0  # while the routers' inputs did change


def test_upper_band_routers_changed_more_reproduces_and_lower_band_is_reversed(organism):
    up = finding(organism, planted(organism[0], "upper"))
    down = finding(organism, planted(organism[0], "lower"))
    assert up["verdict"]["verdict"] == "reproduces", up["verdict"]["why"]
    assert down["verdict"]["verdict"] == "reversed", down["verdict"]["why"]


def test_base_against_itself_is_not_shown_with_drift_exactly_zero(organism):
    f = finding(organism, organism[0])
    assert f["verdict"]["verdict"] == "not shown"
    eff = f["effects"][0]
    for name in ("norm", "topk_change", "top1_flip", "js"):
        assert float(np.abs(eff[name].values).max()) == 0.0, name
    assert f["numbers"]["ratio"]["n_nan"] == f["numbers"]["ratio"]["n_boot"]  # 0/0 replicates counted, not hidden


def test_router_and_input_terms_sum_to_the_total_exactly(organism):
    base, processor, items, inputs = organism
    eff = finding(organism, random_update(base, part="all", rel=0.05, seed=7))["effects"][0]
    assert eff.attrs["max_residual"] < 1e-10  # |router + input - total| per logit, float64
    proj = eff["proj"]  # <router, total> + <input, total> = ||total||^2, token by token
    np.testing.assert_allclose(proj.sel(effect="router") + proj.sel(effect="input"), proj.sel(effect="total"),
                               rtol=1e-9, atol=1e-12)


def test_router_logits_from_captured_inputs_match_the_recording(organism):
    """The W x the decomposition uses is the router's real logit: the recorded fp32 logits (``adt_probe.record``)."""
    import adt_probe
    from adt_probe.decompose import _logits, router_params
    from adt_probe.recording import capture_hooks

    base, processor, items, inputs = organism
    small = {k: v[:2] if torch.is_tensor(v) and v.shape[0] == N_ITEMS else v for k, v in inputs.items()}
    rec = adt_probe.record(base, small, routing="full", lens=None, batch_size=2)
    spec = adt_probe.architecture(base)
    _, x = capture_hooks(base, spec, small)
    mask = small["attention_mask"].bool().reshape(-1)
    for layer, (w, b, _) in router_params(base, spec).items():
        z = _logits(w, b, x[layer].reshape(-1, w.shape[1])[mask].double())
        np.testing.assert_allclose(z.numpy(), rec["router_logits"].sel(layer=layer).values, rtol=1e-4, atol=1e-5)


# --- the rules on numbers -------------------------------------------------------------------------------------------


def ci(value, lo, hi):
    return {"value": value, "lo": lo, "hi": hi}


@pytest.mark.parametrize(("interval", "expected"), [
    (ci(9.0, 8.0, 10.0), "reproduces"), (ci(0.1, 0.05, 0.2), "reversed"), (ci(1.0, 0.9, 1.1), "not shown"),
    (ci(1.5, 1.0, 2.5), "inconclusive"), (ci(1.0, float("nan"), float("nan")), "inconclusive")])
def test_upper_router_rule(interval, expected):
    v = verdicts.upper_routers(interval, [0.95, 1.0, 1.1], routers_moved=True, n_sequences=20)
    assert v["verdict"] == expected
    assert v["rule"] == verdicts.UPPER_ROUTERS_RULE and v["rules_hash"] == verdicts.RULES_HASH


def test_too_few_sequences_are_inconclusive_and_unmoved_routers_not_shown():
    assert verdicts.upper_routers(ci(9, 8, 10), [1.0], routers_moved=True, n_sequences=3)["verdict"] == "inconclusive"
    assert verdicts.upper_routers(ci(9, 8, 10), [1.0], routers_moved=False, n_sequences=30)["verdict"] == "not shown"


@pytest.mark.parametrize(("u", "d", "expected"), [
    (ci(0.7, 0.6, 0.8), ci(0.2, 0.1, 0.3), "reproduces"), (ci(0.3, 0.2, 0.4), ci(-0.2, -0.3, -0.1), "reversed"),
    (ci(0.7, 0.6, 0.8), ci(0.0, -0.1, 0.1), "not shown"), (ci(0.2, 0.2, 0.2), ci(0.0, 0.0, 0.0), "not shown"),
    (ci(0.1, 0.08, 0.12), ci(-0.01, -0.02, -0.002), "not shown")])  # a shift below MIN_SHIFT: not a finding
def test_crystallization_rule(u, d, expected):
    assert verdicts.crystallization(u, d, n_sequences=20)["verdict"] == expected


def test_the_stamp_is_json_and_hashes_this_module():
    import hashlib
    from pathlib import Path

    stamp = json.loads(json.dumps(verdicts.stamp()))
    assert stamp["rules_hash"] == hashlib.sha256(Path(verdicts.__file__).read_bytes()).hexdigest()
    assert set(stamp["rules"]) == {"upper_routers", "crystallization"}
