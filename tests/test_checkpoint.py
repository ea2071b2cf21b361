"""Checkpoints: exact resume, atomic writes, checksum verification, no pickle."""

import json
import random
import shutil

import numpy as np
import pytest
import torch

import tests.helpers  # noqa: F401  (registers the test_tokens reward the runs use)
from adt_probe.integrity import sha256
from rl.train import checkpoint as ckpt
from rl.train import grpo
from rl.train.config import config_from_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def run_config(model_dir, steps=4):
    """Everything that carries state across steps is on: Adam moments, a warm-up + cosine schedule, mu = 2 with
    clipping, the KL reference, and a 3-item dataset so the prompt stream wraps into a new epoch mid-run."""
    return config_from_dict({
        "model": str(model_dir), "seed": 3, "threads": 1,
        "grpo": {"num_generations": 2, "batch_size": 2, "max_new_tokens": 5, "num_iterations": 2, "beta": 0.05,
                 "epsilon_high": 0.28, "allow_truncated_chains": True},
        "optim": {"lr": 3e-3, "lr_schedule": "cosine", "warmup_steps": 2, "weight_decay": 0.01},
        "checkpoint": {"every": 1, "keep_last": 0},
        "logging": {"progress_bar": False},
        "stages": [{"name": "a", "steps": 2, "rewards": {"test_tokens": 1.0, "format": 0.1},
                    "data": {"n_items": 3, "seed": 2, "families": ["count_events"]}},
                   {"name": "b", "steps": steps - 2, "rewards": {"test_tokens": 1.0}, "lr": 1e-3,
                    "data": {"n_items": 3, "seed": 4, "families": ["pitch_compare"]}}]})


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_dir):
    out = tmp_path_factory.mktemp("full")
    model = grpo.train(run_config(tiny_dir), out)
    return out, {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("stop", [1, 2, 3])  # inside stage a, at its end (stage boundary), inside stage b
def test_resume_is_exact(tmp_path, tiny_dir, uninterrupted, stop, capsys):
    full_out, full_params = uninterrupted
    grpo.train(run_config(tiny_dir), tmp_path, stop_after=stop)
    with pytest.raises(FileExistsError, match="--resume"):
        grpo.train(run_config(tiny_dir), tmp_path)
    model = grpo.train(run_config(tiny_dir), tmp_path, resume=True)
    assert f"resuming from step-{stop:06d}" in capsys.readouterr().err
    for name, p in model.named_parameters():
        assert torch.equal(p, full_params[name]), name
    # the log of the resumed run is the uninterrupted run's, step for step (wall time aside)
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if k != "seconds"}  # noqa: E731
                          for line in path.read_text().splitlines()]
    assert strip(tmp_path / "log.jsonl") == strip(full_out / "log.jsonl")


def test_checkpoint_layout_and_manifest(uninterrupted):
    out, params = uninterrupted
    folder = out / "checkpoints" / "step-000004"
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "manifest.json", "trainer_state/state.json",
            "trainer_state/optimizer.safetensors", "trainer_state/optimizer.json",
            "trainer_state/rng-rank0.safetensors", "trainer_state/rng-rank0.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]  # no pickle
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == files - {"manifest.json"}
    assert all(manifest["files"][f]["sha256"] == sha256(folder / f) for f in manifest["files"])
    state = json.loads((folder / "trainer_state" / "state.json").read_text())
    assert (state["step"], state["stage"], state["stage_step"]) == (4, 1, 2)
    assert state["data_position"] == {"epoch": 1, "position": 1}  # 2 steps x 2 prompts over 3 items
    from rl.organism import load_organism

    model, processor = load_organism(folder)  # a plain from_pretrained folder
    for name, p in model.named_parameters():
        assert torch.equal(p, params[name]), name
    assert processor.tokenizer.eos_token == "<|im_end|>"


def test_corrupted_checkpoint_is_skipped(tmp_path, uninterrupted):
    root = tmp_path / "checkpoints"
    shutil.copytree(uninterrupted[0] / "checkpoints", root)
    target = root / "step-000004" / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    target.write_bytes(bytes(data))
    messages = []
    assert ckpt.find_latest(root, messages.append) == root / "step-000003"
    assert messages == [f"skipping checkpoint {root / 'step-000004'} (step 4): model.safetensors differs from what "
                        "was written (sha256 mismatch)"]
    (root / "step-000003" / "trainer_state" / "optimizer.json").unlink()
    messages.clear()
    assert ckpt.find_latest(root, messages.append) == root / "step-000002"
    assert "trainer_state/optimizer.json is missing" in messages[-1]


def test_half_written_checkpoints_are_never_loaded(tmp_path, uninterrupted):
    root = tmp_path / "checkpoints"
    shutil.copytree(uninterrupted[0] / "checkpoints" / "step-000002", root / "step-000002")
    # a crash during a save leaves the temp folder (even with every file in it) ...
    shutil.copytree(root / "step-000002", root / ".tmp-step-000009")
    # ... and a folder with the right name but no manifest is incomplete
    shutil.copytree(root / "step-000002", root / "step-000007")
    (root / "step-000007" / "manifest.json").unlink()
    messages = []
    assert ckpt.find_latest(root, messages.append) == root / "step-000002"
    assert messages == [f"skipping checkpoint {root / 'step-000007'} (step 7): no manifest.json (incomplete, or not "
                        "written by adt-probe)"]
    ckpt.remove_temp_dirs(root, messages.append)
    assert not (root / ".tmp-step-000009").exists() and "removing incomplete checkpoint .tmp-step-000009" in \
        messages[-1]


def test_keep_last_and_resave(tmp_path, tiny_organism, processor):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        ckpt.save_checkpoint(root, ckpt.TrainerState(step=step), tiny_organism, processor, opt, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [2, 3]
    ckpt.save_checkpoint(root, ckpt.TrainerState(step=3, stage=1), tiny_organism, processor, opt, keep_last=2)
    assert ckpt.load_trainer_state(root / "step-000003").stage == 1
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]


def test_optimizer_and_rng_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.8, 0.95))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = ckpt.optimizer_state_to_files(opt.state_dict())
    json.dumps(meta)  # plain JSON
    restored = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    restored.load_state_dict(ckpt.optimizer_state_from_files(tensors, json.loads(json.dumps(meta))))
    a, b = opt.state_dict(), restored.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for pid in a["state"]:
        for k, v in a["state"][pid].items():
            assert torch.equal(v, b["state"][pid][k]), k

    tensors, meta = ckpt.rng_state()
    meta = json.loads(json.dumps(meta))
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(tensors, meta)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]
