"""Curriculum mining: the selection rule, rollouts of the tiny organism (think mode, seeded, RNG-neutral, the same
counts however the pool is split over processes), and a two-stage run of
rl.train.grpo (stage 1 -> mining -> stage 2)."""

import json
import types

import numpy as np
import pytest
import torch

from rl import testing as tiny_lm
from rl.data.items import Item
from rl.train import curriculum, grpo
from rl.train.config import config_from_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(model_dir, **mining):
    return config_from_dict({
        "model": str(model_dir), "seed": 3, "threads": 1,
        "grpo": {"num_generations": 2, "batch_size": 3, "max_new_tokens": 6, "temperature": 1.0,
                 "allow_truncated_chains": True},
        "mining": {"k_rollouts": 4, "pass_band": [0.125, 0.625], "keep_hard": True, "max_items": 0, **mining},
        "stages": [{"name": "s", "steps": 1, "data": {"source": "mined"}}]})


def _acc(rank=0, world=1):
    return types.SimpleNamespace(process_index=rank, num_processes=world, device=torch.device("cpu"),
                                 is_main_process=rank == 0)


def _items(difficulties):
    return [Item(id=f"i{k}", question="q", choices=["a", "b"], answer="a", audio=np.zeros(1600, np.float32),
                 difficulty=d) for k, d in enumerate(difficulties)]


def test_selection_rule():
    pool = _items(["easy", "hard", "medium", "hard", "easy", "medium"])
    rates = [0.0, 0.0, 0.25, 0.5, 0.75, 0.625]
    sel = curriculum.select_items
    assert sel(pool, rates, pass_band=[0.125, 0.625], keep_hard=False, max_items=0) == [2, 3, 5]
    assert sel(pool, rates, pass_band=[0.125, 0.625], keep_hard=True, max_items=0) == [1, 2, 3, 5]
    assert sel(pool, rates, pass_band=[0.125, 0.625], keep_hard=True, max_items=3) == [2, 3, 5]  # band first
    assert sel(pool, rates, pass_band=[0.7, 1.0], keep_hard=True, max_items=2) == [1, 4]
    assert sel(pool, rates, pass_band=[0.9, 1.0], keep_hard=False, max_items=0) == []


def test_a_pool_whose_chains_the_budget_cuts_is_refused_before_any_rollout(tiny_organism, processor, tiny_dir,
                                                                         monkeypatch):
    cfg = _cfg(tiny_dir)
    cfg.grpo.allow_truncated_chains = False  # 6 tokens cut every reference chain of the pool

    def never(*args, **kwargs):
        raise AssertionError("mining rolled out a pool the budget cuts")

    monkeypatch.setattr(grpo, "mine_boundary_items", never)
    with pytest.raises(ValueError, match=r"mining\.pool \(grpo\.max_new_tokens.*items reason in more than "
                                         r"max_new_tokens = 6 tokens"):
        grpo.mine_items(tiny_organism, processor, cfg, _acc())


def test_mining_with_the_tiny_organism(tiny_organism, processor, items, tiny_dir, monkeypatch):
    cfg = _cfg(tiny_dir, pass_band=[0.0, 1.0], keep_hard=False)
    seen = []
    real = curriculum.sample

    def spy(policy, proc, chunk, sampling, *, mode, device):
        seen.append((mode, sampling.num_generations, sampling.temperature, len(chunk)))
        return real(policy, proc, chunk, sampling, mode=mode, device=device)

    monkeypatch.setattr(curriculum, "sample", spy)
    rng_before = torch.get_rng_state()
    kept = curriculum.mine_boundary_items(tiny_organism, processor, items, cfg.mining, cfg=cfg, accelerator=_acc())
    assert torch.equal(torch.get_rng_state(), rng_before)  # the training RNG stream is untouched
    assert [it.id for it in kept] == [it.id for it in items]  # band [0, 1] keeps everything, in pool order
    assert seen == [("think", 4, 1.0, 3)] * 4 + [("think", 4, 1.0, 2)]  # 14 items in chunks of batch_size = 3
    rates = np.array(curriculum.LAST_MINING["pass_rates"])
    assert rates.shape == (14,) and set(np.round(rates * 4, 6)) <= {0, 1, 2, 3, 4}

    counts = curriculum.pass_counts(tiny_organism, processor, items, k=4, cfg=cfg, device="cpu")
    assert np.array_equal(counts / 4, rates)  # deterministic given the seed
    shards = [curriculum.pass_counts(tiny_organism, processor, items, k=4, cfg=cfg, device="cpu", rank=r, world=2)
              for r in (0, 1)]
    assert np.array_equal(shards[0] + shards[1], counts)  # any number of processes sums to the same counts
    owned_by_1 = np.zeros(14, bool)
    owned_by_1[[3, 4, 5, 9, 10, 11]] = True  # chunks 1 and 3 of size 3
    assert shards[0][owned_by_1].sum() == 0 and shards[1][~owned_by_1].sum() == 0

    hard_only = _cfg(tiny_dir, pass_band=[1.0, 1.0], keep_hard=True, max_items=2)
    expected = [it.id for it, r in zip(items, rates) if r == 1.0] + [it.id for it, r in zip(items, rates)
                                                                     if it.difficulty == "hard" and r != 1.0]
    kept = curriculum.mine_boundary_items(tiny_organism, processor, items, hard_only.mining, cfg=hard_only,
                                          accelerator=_acc())
    assert sorted(it.id for it in kept) == sorted(expected[:2])


TWO_STAGE = """
model = "{model}"
seed = 0
threads = 1
prompt_mode = "think"

[grpo]
num_generations = 2
batch_size = 2
max_new_tokens = 6
allow_truncated_chains = true

[optim]
lr = 1e-3

[checkpoint]
every = 10
keep_last = 0

[logging]
progress_bar = false

[judge]
model = "{judge}"
weight = 0.5

[mining]
k_rollouts = 2
pass_band = [0.5, 1.0]
keep_hard = true
max_items = 3
[mining.pool]
source = "synthetic"
n_items = 9
seed = 21
difficulties = ["medium", "hard"]
prefix = "pool"

[[stages]]
name = "stage1"
steps = 1
rewards = {{ accuracy = 1.0, format = 0.25, consistency = 0.25, hybrid_reasoning = 1.0 }}
[stages.data]
n_items = 2
seed = 5
difficulties = ["easy"]

[[stages]]
name = "stage2"
steps = 1
rewards = {{ accuracy = 1.0, llm_judge = 1.0, adaptive_think_accuracy = 0.5 }}
[stages.data]
source = "mined"
"""


def test_two_stage_run_end_to_end(tmp_path, tiny_dir):
    tok = tiny_lm.build_tokenizer()
    judge = tiny_lm.save(tiny_lm.build_model(tok, seed=4), tok, tmp_path / "judge")
    cfg_path = tmp_path / "two_stage.toml"
    cfg_path.write_text(TWO_STAGE.format(model=tiny_dir, judge=judge))
    out = tmp_path / "out"
    grpo.main(["--config", str(cfg_path), "--out", str(out)])

    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["stage"]) for r in log] == [(1, "stage1"), (2, "stage2")]
    assert "rewards/hybrid_reasoning/mean" in log[0] and "rewards/llm_judge/mean" in log[1]
    state = json.loads((out / "checkpoints/step-000002/trainer_state/state.json").read_text())
    mined = state["mined_item_ids"]
    rates = curriculum.LAST_MINING["pass_rates"]
    from rl.data.tasks import generate_items

    pool = generate_items(9, seed=21, difficulty=["medium", "hard"], prefix="pool")
    expected = curriculum.select_items(pool, rates, pass_band=[0.5, 1.0], keep_hard=True, max_items=3)
    assert mined == [pool[i].id for i in expected] and 0 < len(mined) <= 3
