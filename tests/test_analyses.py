"""The analysis commands end to end on tiny organisms saved to disk: record a pair, findings, transplant."""

import copy
import json

import pytest
import torch

import adt_probe
from analyses import checkpoints, findings, record_pair, transplant
from analyses.compare import CompareInputError, compare
from rl.data.tasks import generate_items
from rl.train import checkpoint as ckpt
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_organism, processor):
    root = tmp_path_factory.mktemp("models")
    rl = copy.deepcopy(tiny_organism)
    layers = adt_probe.get_module(rl, adt_probe.architecture(rl).layers)
    with torch.no_grad():
        layers[1].mlp.gate.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    for name, model in (("base", tiny_organism), ("rl", rl)):
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
        ckpt.write_manifest(root / name, 0)  # verified like checkpoints by every analysis command
    return root / "base", root / "rl"


def test_record_findings_and_transplant(pair, tmp_path):
    base, rl = pair
    items = generate_items(6, seed=3)
    paths = record_pair.record_pair(base, rl, items, tmp_path / "rec", routing="full", max_new_tokens=12,
                                    batch_size=4)
    assert set(paths) == {"base", "rl", "base_noise"}
    result = findings.findings(tmp_path / "rec", tmp_path / "out", n_boot=50)
    drift = adt_probe.open(tmp_path / "out" / "drift.nc")
    assert adt_probe.drift.rank_layers(drift, "js")[0] == 1  # the perturbed router tops the ranking
    assert result["drift"]["all"]["layers_above_noise"] == [1]
    contrast = result["drift"]["all"]["js_band_contrast"]
    assert contrast["upper"]["value"] > contrast["lower"]["value"]  # layer 1 is the upper half of 2
    assert (tmp_path / "out" / "drift_js.png").exists() and (tmp_path / "out" / "drift_js.pdf").exists()
    assert json.loads((tmp_path / "out" / "findings.json").read_text())["bands"] == {"lower": [0], "upper": [1]}
    effects = transplant.run(base, rl, items, n_bands=2, n_boot=50, max_new_tokens=12)
    assert effects.sizes == {"band": 2, "direction": 2}
    assert set(effects.data_vars) >= {"accuracy_delta", "accuracy_delta_lo", "reward_delta_hi"}


def test_record_pair_and_transplant_take_completions_already_generated(pair, tmp_path):
    base, rl = pair
    items = generate_items(3, seed=3)
    given = [f"<think>\nSound 1: a high tone.\n</think>\n\n<answer>{it.answer}</answer>" for it in items]
    record_pair.record_pair(base, rl, items, tmp_path / "rec", max_new_tokens=12, completions=given)
    rows = [json.loads(line) for line in (tmp_path / "rec" / "completions.jsonl").read_text().splitlines()]
    assert [r["completion"] for r in rows] == given
    effects = transplant.run(base, rl, items, n_bands=2, n_boot=20, max_new_tokens=12, rl_completions=given)
    assert effects.attrs["rl_accuracy"] == 1.0 and effects.attrs["rl_think_rate"] == 1.0  # scored as given
    with pytest.raises(ValueError, match="2 completions given for 3 items; pass one per item"):
        record_pair.record_pair(base, rl, items, tmp_path / "other", max_new_tokens=12, completions=given[:2])
    assert not (tmp_path / "other").exists()  # refused before anything was written
    # compare and transplant refuse a wrong count before loading a model (these folders do not exist)
    with pytest.raises(ValueError, match="2 completions given for 3 items"):
        compare(tmp_path / "none", [tmp_path / "none"], items, tmp_path / "cmp", rl_completions=[given[:2]])
    with pytest.raises(CompareInputError, match="2 lists of completions for 1 RL checkpoints"):
        compare(tmp_path / "none", [tmp_path / "none"], items, tmp_path / "cmp", rl_completions=[given, given])
    with pytest.raises(ValueError, match="2 base completions given for 3 items"):
        transplant.run(tmp_path / "none", tmp_path / "none", items, base_completions=given[:2])


def test_record_pair_refuses_models_that_do_not_belong_together(pair, tmp_path, tiny_organism, tokenizer):
    from rl import organism
    from rl.organism.train_base import tokenizer_corpus

    base, _ = pair
    other_tok = organism.train_tokenizer(tokenizer_corpus(50, seed=9), vocab_size=300)
    other = organism.build_model(other_tok, seed=0, num_hidden_layers=2)
    other.save_pretrained(tmp_path / "other_tok")
    organism.build_processor(other_tok).save_pretrained(tmp_path / "other_tok")
    items = generate_items(2, seed=3)
    with pytest.raises(ValueError, match="different tokenizers"):
        record_pair.record_pair(base, tmp_path / "other_tok", items, tmp_path / "rec", allow_unverified=True)
    more = organism.build_model(tokenizer, seed=0, num_hidden_layers=3)  # another layer count
    more.save_pretrained(tmp_path / "more")
    organism.build_processor(tokenizer).save_pretrained(tmp_path / "more")
    with pytest.raises(ValueError, match="differ in moe_layers"):
        record_pair.record_pair(base, tmp_path / "more", items, tmp_path / "rec", allow_unverified=True)
    assert not (tmp_path / "rec" / "base.zarr").exists()  # refused before anything was written


def test_nan_audio_features_are_refused(tiny_organism, processor):
    from rl.data import collate

    batch = collate.encode_prompts(processor, generate_items(2, seed=3), "think")
    batch["input_features"][0, 3, 5] = float("nan")
    with pytest.raises(adt_probe.RecordingError, match="'input_features' holds 1 NaN or infinite"):
        adt_probe.record(tiny_organism, batch, tokenizer=processor.tokenizer)


def test_drift_trajectory_over_a_real_run(tmp_path, tiny_dir, processor, items):
    """Two GRPO steps with a checkpoint each, then drift from the base along them."""
    import yaml

    from rl.data import collate
    from rl.train import grpo

    cfg = tiny_config(tiny_dir, optim={"lr": 3e-2})  # a large step, so the routers visibly move
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    grpo.main(["--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")])
    batch = collate.encode_prompts(processor, items[:4], "think")
    found = checkpoints.run_checkpoints(tmp_path / "run")
    traj = adt_probe.drift_trajectory(found, batch, base=tiny_dir, tokenizer=processor, n_boot=20)
    assert list(traj.step.values) == [0, 1, 2]
    assert float(traj.js.sel(step=0, segment="all").max()) == 0.0
    assert float(traj.rel_change.sel(step=2).max()) > float(traj.rel_change.sel(step=1).max()) > 0

