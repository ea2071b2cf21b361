"""Any saved transformers model folder through the command line: the class its config names, all weights or an
error, text-only items for text models; each family recorded against itself gives a drift of exactly 0."""

import json

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

import adt_probe
from analyses import cli, models
from rl.data.tasks import generate_items

TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            max_position_embeddings=1024, tie_word_embeddings=False)


def _text_model(kind: str, tokenizer):
    torch.manual_seed(0)
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=None)
    if kind == "mixtral":
        return MixtralForCausalLM(MixtralConfig(**TEXT, **ids, num_local_experts=4, num_experts_per_tok=2))
    return LlamaForCausalLM(LlamaConfig(**TEXT, **ids))


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_organism, processor, tokenizer):
    """A tiny saved model per family: a text MoE (Mixtral), a dense text model (Llama), the organism."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for kind in ("mixtral", "llama", "organism"):
        model = tiny_organism if kind == "organism" else _text_model(kind, tokenizer)
        model.save_pretrained(root / kind)
        (processor if kind == "organism" else tokenizer).save_pretrained(root / kind)
        out[kind] = root / kind
    return out


@pytest.mark.parametrize("kind,cls", [("mixtral", "MixtralForCausalLM"), ("llama", "LlamaForCausalLM"),
                                      ("organism", "Qwen3OmniMoeThinkerForConditionalGeneration")])
def test_each_folder_loads_as_its_own_class_with_its_weights(folders, kind, cls):
    model, processor = models.load_pretrained(folders[kind])
    assert type(model).__name__ == cls
    saved = load_file(str(folders[kind] / "model.safetensors"))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items() if k in state)
    assert models.reads_audio(processor) == (kind == "organism")


def test_missing_weights_are_an_error_naming_them(folders, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for f in folders["mixtral"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    state = load_file(str(folder / "model.safetensors"))
    router = next(k for k in state if k.startswith("model.layers.1.") and k.endswith("gate.weight"))
    del state[router]  # saved under the checkpoint's name, loaded as model.layers.1.mlp.gate.weight
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(models.LoadError, match=r"1 weight\(s\) missing .*model\.layers\.1\.mlp\.gate\.weight"):
        models.load_pretrained(folder)


def test_a_mixtral_folder_is_not_loaded_as_the_organism(folders, tmp_path):
    """The reported bug: the organism class on a Mixtral folder initialised everything at random."""
    folder = tmp_path / "mislabelled"
    folder.mkdir()
    for f in folders["mixtral"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForCausalLM"],
                                                    "model_type": "llama"}))
    with pytest.raises(models.LoadError, match="missing"):
        models.load_pretrained(folder)


def test_text_models_get_the_written_facts_instead_of_the_audio():
    items = generate_items(2, seed=3)
    text = models.text_only(items)
    assert all(it.audio is None and it.question.startswith("Sounds: ") for it in text)
    assert text[0].meta["description"] in text[0].question
    bare = [items[0]]
    bare[0].meta = {}
    with pytest.raises(models.LoadError, match="no meta\\['description'\\]"):
        models.text_only(bare)


@pytest.mark.parametrize("kind", ["mixtral", "llama", "organism"])
def test_each_family_recorded_against_itself_drifts_exactly_zero(folders, kind, tmp_path):
    cli.main(["record", "--base", str(folders[kind]), "--rl", str(folders[kind]), "--out", str(tmp_path),
              "--n-per-cell", "1", "--max-new-tokens", "6", "--batch-size", "2", "--routing", "full",
              "--allow-unverified"])
    base, rl = adt_probe.open(tmp_path / "base.zarr").load(), adt_probe.open(tmp_path / "rl.zarr").load()
    assert base.sizes["token"] > 0
    np.testing.assert_array_equal(base.lens_logprob.values, rl.lens_logprob.values)
    if kind == "llama":
        assert "router_logits" not in base  # dense: the lens alone
        return
    drift = adt_probe.gating_drift(base, rl, n_boot=20)
    assert float(np.nanmax(np.abs(drift.js.values))) == 0.0
    assert float(np.nanmin(drift.top1_agreement.values)) == 1.0


def test_weights_command_on_a_text_moe(folders, tmp_path):
    cli.main(["weights", "--base", str(folders["mixtral"]), "--rl", str(folders["mixtral"]), "--out", str(tmp_path),
              "--allow-unverified"])
    ds = xr.open_dataset(tmp_path / "router_weight_drift.nc", engine="h5netcdf")
    assert float(ds.rel_change.max()) == 0.0 and float(ds.cosine.min()) == 1.0


def test_cli_errors_are_one_message_and_exit_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["weights", "--base", str(tmp_path / "nowhere"), "--rl", str(tmp_path), "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: FileNotFoundError:" in err and "nowhere: no such model folder" in err and "Traceback" not in err
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "weights", "--base", str(tmp_path / "nowhere"), "--rl", str(tmp_path),
                  "--out", str(tmp_path)])


def test_transplant_and_decompose_on_a_text_moe_against_itself(folders, tmp_path):
    """The causal commands on a Mixtral folder: its own routers transplanted change nothing, and the router and
    input effects of a model against itself are exactly 0."""
    mixtral = str(folders["mixtral"])
    cli.main(["transplant", "--base", mixtral, "--rl", mixtral, "--out", str(tmp_path / "tr"), "--n-per-cell", "1",
              "--max-new-tokens", "5", "--n-boot", "20", "--allow-unverified"])
    effects = xr.open_dataset(tmp_path / "tr" / "transplant.nc", engine="h5netcdf")
    assert float(np.abs(effects.accuracy_delta).max()) == 0.0 and float(np.abs(effects.reward_delta).max()) == 0.0
    cli.main(["record", "--base", mixtral, "--rl", mixtral, "--out", str(tmp_path / "rec"), "--n-per-cell", "1",
              "--max-new-tokens", "5", "--routing", "full", "--allow-unverified"])
    cli.main(["decompose", "--base", mixtral, "--rl", mixtral, "--recordings", str(tmp_path / "rec"),
              "--out", str(tmp_path / "dec"), "--n-boot", "20", "--allow-unverified"])
    dec = xr.open_dataset(tmp_path / "dec" / "decomposition.nc", engine="h5netcdf")
    assert float(np.nanmax(np.abs(dec.rel_change.sel(effect="total").values))) == 0.0


def test_the_organism_loader_refuses_other_families(folders):
    """rl's own loader (training, evaluation) no longer turns a Mixtral folder into a randomly initialised organism."""
    from rl.organism import load_organism

    with pytest.raises(ValueError, match="holds a 'mixtral' model"):
        load_organism(folders["mixtral"])
    model, _ = load_organism(folders["organism"])
    assert type(model).__name__ == "Qwen3OmniMoeThinkerForConditionalGeneration"


def test_compare_on_a_text_moe_finds_a_planted_upper_band_router_change(folders, tmp_path):
    """``adt-probe compare`` on a Mixtral pair, audio items read as written facts: the upper band's routers changed
    several times more than the lower band's reproduces finding 1 (the organism's verdict rule, another family)."""
    from adt_probe.weights import random_update
    from rl.data.items import write_items

    base, processor = models.load_pretrained(folders["mixtral"])
    rl = random_update(base, part="routers", rel=lambda name: 0.3 if "layers.1." in name else 0.02, seed=1)
    rl.save_pretrained(tmp_path / "rl")
    processor.tokenizer.save_pretrained(tmp_path / "rl")
    data = write_items(generate_items(14, seed=5), tmp_path / "data" / "items.jsonl")
    out = tmp_path / "cmp"
    cli.main(["compare", "--base", str(folders["mixtral"]), "--rl", str(tmp_path / "rl"), "--data", str(data),
              "--out", str(out), "--nulls", "3", "--n-boot", "50", "--source", "reference", "--no-mirror",
              "--sft-control", "off", "--tuned-lens", "off", "--allow-unverified"])
    findings = json.loads((out / "findings.json").read_text())
    assert findings["verdicts"]["upper_routers"]["verdict"] == "reproduces"
    assert "tuned_lens" not in findings["crystallization"] and findings["inputs"]["tuned_lens"] is False
    assert (out / "report.md").exists()
