"""The GRPO loop on a tiny random organism: config, rewards, rollouts, a whole run, bad input, data parallel."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from rl.data import collate
from rl.data.items import Item, write_items
from rl.rewards import accuracy_reward, format_reward
from rl.rewards.registry import (
    REWARDS,
    check_requirements,
    compute_rewards,
    get_reward,
    register_reward,
    resolve_rewards,
)
from rl.train import grpo, rollout
from rl.train.config import ConfigError, config_from_dict, load_config
from tests.helpers import tiny_config, to_toml, tokens_reward

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "rl" / "configs"


pytestmark = pytest.mark.usefixtures("one_thread")


# --- config --------------------------------------------------------------------------------------------------------

def test_shipped_configs_parse():
    cfgs = {p.stem: load_config(p) for p in sorted(CONFIGS.glob("*.toml"))}
    assert set(cfgs) >= {"smoke", "stage1", "stage2", "two_stage"}
    two = cfgs["two_stage"]
    assert [s.name for s in two.stages] == ["stage1", "stage2"]
    assert two.stages[1].data.source == "mined" and two.mining.pass_band == [0.125, 0.625] and two.mining.keep_hard
    assert cfgs["smoke"].checkpoint.every == 1 and cfgs["smoke"].model == "organism"


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text('[grpo]\ntemprature = 0.7\n[[stages]]\nname = "a"\n')
    with pytest.raises(ConfigError, match=r"typo\.toml: unknown key 'grpo\.temprature' \(did you mean "
                                          r"'grpo\.temperature'\?\)"):
        load_config(path)
    path.write_text('[[stages]]\nname = "a"\n[stages.data]\nn_itms = 3\n')
    with pytest.raises(ConfigError, match=r"unknown key 'stages\[0\]\.data\.n_itms'"):
        load_config(path)
    path.write_text('[mining]\nk_rollout = 4\n[[stages]]\nname = "a"\n')  # inside an optional table
    with pytest.raises(ConfigError, match=r"unknown key 'mining\.k_rollout' \(did you mean 'mining\.k_rollouts'"):
        load_config(path)
    path.write_text('[judge]\nbatch_sise = 4\n[[stages]]\nname = "a"\n')  # the judge's settings are typed too
    with pytest.raises(ConfigError, match=r"unknown key 'judge\.batch_sise' \(did you mean 'judge\.batch_size'"):
        load_config(path)


@pytest.mark.parametrize("text, match", [
    ('[grpo]\nmulti_reward = "gdpo"\n', r"'grpo\.multi_reward' is now 'grpo\.multi_objective_aggregation'.*'gdpo' is "
                                        r"now 'normalize_then_sum'"),
    ('[reward_kwargs.llm_judge]\njudge_model = "smollm2"\n', r"'reward_kwargs\.llm_judge\.judge_model' is a judge "
                                                             r"setting: it now lives in the \[judge\] table, as "
                                                             r"'judge\.model'"),
    ('[reward_kwargs.hybrid_reasoning]\nw = 0.3\n', r"'reward_kwargs\.hybrid_reasoning\.w' .* as 'judge\.weight'"),
])
def test_old_keys_name_their_new_place(tmp_path, text, match):
    path = tmp_path / "old.toml"
    path.write_text(text + '[[stages]]\nname = "a"\n')
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_wrong_type_names_key_and_type(tmp_path):
    path = tmp_path / "types.toml"
    path.write_text('[grpo]\nnum_generations = "8"\n[[stages]]\nname = "a"\n')
    with pytest.raises(ConfigError, match=r"key 'grpo\.num_generations' must be an integer, got str"):
        load_config(path)
    path.write_text('[grpo]\nscale_rewards = "global"\n[[stages]]\nname = "a"\n')
    with pytest.raises(ConfigError, match=r"'grpo\.scale_rewards' must be one of 'group', 'batch', 'none'"):
        load_config(path)
    path.write_text('[[stages]]\nname = "a"\nrewards = { accuracy = "high" }\n')
    with pytest.raises(ConfigError, match=r"'stages\[0\]\.rewards\.accuracy' must be a float"):
        load_config(path)
    # an integer where a float is expected is fine; a boolean where an integer is expected is not
    assert config_from_dict({"grpo": {"temperature": 1}, "stages": [{}]}).grpo.temperature == 1.0
    with pytest.raises(ConfigError, match="must be an integer, got bool"):
        config_from_dict({"grpo": {"batch_size": True}, "stages": [{}]})


def test_yaml_and_overrides(tmp_path):
    (tmp_path / "run.yaml").write_text(textwrap.dedent("""\
        model: weights/base
        grpo: {num_generations: 4, multi_objective_aggregation: normalize_then_sum}
        stages:
          - name: only
            steps: 3
            rewards: {accuracy: 1.0}
            data: {source: jsonl, path: data/train.jsonl}
        """))
    cfg = load_config(tmp_path / "run.yaml", ["grpo.temperature=0.5", "stages.0.steps=7", "optim.lr_schedule=linear"])
    assert cfg.grpo.num_generations == 4 and cfg.grpo.temperature == 0.5
    assert cfg.grpo.multi_objective_aggregation == "normalize_then_sum"
    assert cfg.stages[0].steps == 7 and cfg.optim.lr_schedule == "linear"
    # relative paths in a file are relative to the file's folder
    assert cfg.model == str(tmp_path / "weights" / "base")
    assert cfg.stages[0].data.path == str(tmp_path / "data" / "train.jsonl")


@pytest.mark.parametrize("raw, match", [
    ({"grpo": {"num_generations": 1}, "stages": [{}]}, "grpo.num_generations' must be >= 2"),
    ({"stages": []}, "'stages' must list at least one stage"),
    ({"stages": [{"data": {"source": "mined"}}]}, "is 'mined' but there is no \\[mining\\] table"),
    ({"mining": {"pass_band": [0.8, 0.2]}, "stages": [{}]}, "mining.pass_band' must be \\[lo, hi\\]"),
    ({"stages": [{"data": {"n_items": 0}}]}, "n_items' must be >= 1"),
    ({"stages": [{"data": {"source": "jsonl"}}]}, "data.path' is required"),
    ({"stages": [{"data": {"families": ["pitch"]}}]}, "unknown families \\['pitch'\\]"),
    ({"stages": [{"rewards": {}}]}, "must name at least one reward"),
    ({"stages": [{"steps": 0}]}, r"stages\[0\]\.steps' must be >= 1 \(a stage of 0 steps trains nothing"),
    ({"judge": {"prompt": "be-nice"}, "stages": [{}]}, "judge.prompt' must be one of"),
    ({"judge": {"weight": 1.5}, "stages": [{}]}, "judge.weight' must lie in"),
    ({"judge": {"timeout": 0}, "stages": [{}]}, "judge.timeout' must be > 0"),
    ({"judge": {"backend": "openai"}, "stages": [{}]}, "judge.base_url' is required when backend = 'openai'"),
    ({"judge": {"backend": "openai", "base_url": "http://x", "prompt": "restate-likelihood"}, "stages": [{}]},
     "judge.endpoint' must be 'completions'"),
])
def test_invalid_values(raw, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(raw)


# --- rewards -------------------------------------------------------------------------------------------------------

def test_basic_rewards():
    good = "<think>\nSound 1 is high.\n</think>\n\n<answer>the first</answer>"
    empty = "<think>\n\n</think>\n\n<answer>the second</answer>"
    broken = "the first"
    assert accuracy_reward([""] * 3, [good, empty, broken], [[]] * 3, answer=["the first"] * 3) == [1.0, 0.0, 0.0]
    assert format_reward([""] * 3, [good, empty, broken], [[]] * 3) == [1.0, 0.5, 0.0]


def test_registry():
    assert get_reward("accuracy") is accuracy_reward and get_reward("format") is format_reward
    assert get_reward("tests.helpers:tokens_reward") is tokens_reward
    with pytest.raises(ValueError, match="unknown reward 'acuracy'; registered rewards: .*'accuracy'"):
        get_reward("acuracy")

    @register_reward("test_scaled", requires=("reference_chain",))
    def scaled(prompts, completions, completion_ids, *, factor=1.0, **kwargs):
        return [factor] * len(completions)

    try:
        (r,) = resolve_rewards({"test_scaled": 0.5}, {"test_scaled": {"factor": 3.0}})
        assert r.weight == 0.5 and r.requires == ("reference_chain",)
        assert r.func(prompts=[""], completions=["x"], completion_ids=[[1]]) == [3.0]
    finally:
        REWARDS.pop("test_scaled")


def _rewards_of(fn, name="bad"):
    REWARDS[name] = fn
    try:
        return resolve_rewards({name: 1.0})
    finally:
        REWARDS.pop(name)


def test_compute_rewards_none_is_nan_and_errors_name_the_function():
    cols = {"answer": ["a", "b"]}
    ok = _rewards_of(lambda prompts, completions, completion_ids, **kw: [1.0, None], "half")
    assert np.isnan(compute_rewards(ok, ["p"] * 2, ["x", "y"], [[1], [2]], cols)).tolist() == [[False], [True]]
    short = _rewards_of(lambda prompts, completions, completion_ids, **kw: [1.0], "too_short")
    with pytest.raises(ValueError, match="reward 'too_short' returned 1 values for 2 completions"):
        compute_rewards(short, ["p"] * 2, ["x", "y"], [[1], [2]], cols)
    nan = _rewards_of(lambda prompts, completions, completion_ids, **kw: [1.0, float("nan")], "nan_reward")
    with pytest.raises(ValueError, match="reward 'nan_reward' returned nan for completion 1; return None"):
        compute_rewards(nan, ["p"] * 2, ["x", "y"], [[1], [2]], cols)
    text = _rewards_of(lambda prompts, completions, completion_ids, **kw: ["1", 0.0], "stringy")
    with pytest.raises(ValueError, match="reward 'stringy' returned '1' \\(str\\)"):
        compute_rewards(text, ["p"] * 2, ["x", "y"], [[1], [2]], cols)


def test_requirements_are_checked(items):
    def zero(prompts, completions, completion_ids, **kwargs):
        return [0.0] * len(completions)

    zero.requires = ("reference_chain",)
    needs = _rewards_of(zero, "needs_chain")
    check_requirements(needs, items)  # synthetic items all have chains
    bare = [Item(id="x-1", question="q", choices=["a", "b"], answer="a")]
    with pytest.raises(ValueError, match="reward 'needs_chain' requires 'reference_chain' on every item, but 1 of 1"):
        check_requirements(needs, bare)


# --- rollouts and log-probs ----------------------------------------------------------------------------------------

def test_rollout_repeats_every_input_per_completion(tiny_organism, processor, items):
    cfg = config_from_dict(tiny_config("x", grpo={"num_generations": 3, "max_new_tokens": 5}))
    torch.manual_seed(0)
    ro = grpo.sample_completions(tiny_organism, processor, items[:2], cfg, torch.device("cpu"))
    prompt = collate.encode_prompts(processor, items[:2], "think")
    assert ro.completion_ids.shape[0] == 6 and ro.completion_ids.shape[1] <= 5
    for key in ("input_ids", "attention_mask", "input_features", "feature_attention_mask"):
        assert torch.equal(ro.inputs[key], prompt[key].repeat_interleave(3, dim=0)), key
    assert [it.id for it in ro.items] == [items[0].id] * 3 + [items[1].id] * 3
    assert len(ro.texts) == len(ro.prompts) == 6


def test_logprobs_are_those_of_the_sampling_distribution(tiny_organism, processor, items):
    """The teacher-forced log-probs at the temperature equal generate's own log-softmax of its processed scores."""
    tok = processor.tokenizer
    batch = {k: v.repeat_interleave(2, 0) for k, v in collate.encode_prompts(processor, items[:2], "think").items()}
    torch.manual_seed(1)
    suppress = rollout.suppressed_token_ids(tok)
    assert tok.audio_token_id in suppress and tok.eos_token_id not in suppress
    out = tiny_organism.generate(**batch, do_sample=True, temperature=0.7, top_k=0, top_p=1.0, max_new_tokens=6,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                 suppress_tokens=suppress, output_scores=True, return_dict_in_generate=True)
    comp = out.sequences[:, batch["input_ids"].shape[1]:]
    mask, _ = rollout.eos_mask(comp, tok.eos_token_id)
    expected = torch.stack(out.scores, 1).log_softmax(-1).gather(-1, comp.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        logp, entropy = rollout.token_logprobs(tiny_organism, batch, comp, mask, 0.7, suppress)
    assert torch.allclose(logp[mask.bool()], expected[mask.bool()], atol=1e-4)
    assert (entropy >= 0).all()


# --- a whole run ---------------------------------------------------------------------------------------------------

def test_training_run_through_the_cli(tmp_path, tiny_dir, tiny_organism):
    cfg = tiny_config(tiny_dir, grpo={"num_generations": 2, "batch_size": 2, "max_new_tokens": 6,
                                      "num_iterations": 2, "beta": 0.1, "micro_batch_size": 3,
                                      "epsilon_high": 0.28, "loss_type": "grpo"},
                      optim={"lr": 1e-3, "lr_schedule": "cosine", "warmup_steps": 1})
    path = tmp_path / "run.toml"
    path.write_text(to_toml(cfg))
    grpo.main(["--config", str(path), "--out", str(tmp_path / "out")])

    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    for key in ("reward", "reward_std", "rewards/accuracy/mean", "rewards/format/std", "rewards/test_tokens/mean",
                "frac_reward_zero_std", "kl", "entropy", "clip_ratio/region", "completion_length", "think_rate",
                "accuracy", "loss", "grad_norm", "lr"):
        assert key in log[0] and log[0][key] is not None, key
    assert log[1]["kl"] >= 0 and log[0]["lr"] == pytest.approx(1e-3)
    samples = (tmp_path / "out" / "completions.jsonl").read_text().splitlines()
    assert len(samples) == 6 and set(json.loads(samples[0])["rewards"]) == {"accuracy", "format", "test_tokens"}

    from rl.organism import load_organism

    ckpts = sorted((tmp_path / "out" / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step-000001", "step-000002"]
    trained, _ = load_organism(ckpts[-1])
    before = dict(tiny_organism.named_parameters())
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, before[n])]
    assert any(".mlp.gate." in n for n in changed)  # the routers learn
    assert not any(n.startswith("model.visual") for n in changed)  # frozen by default


def test_mined_stage_uses_the_curriculum_hook(tmp_path, tiny_dir, monkeypatch):
    calls = []

    def mine_boundary_items(policy, processor, pool, mining, *, cfg, accelerator):
        calls.append(len(pool))
        return pool[1:3]

    monkeypatch.setattr(grpo, "mine_boundary_items", mine_boundary_items)
    cfg = tiny_config(tiny_dir, mining={"k_rollouts": 2, "pool": {"n_items": 4, "seed": 9, "prefix": "pool"}},
                      stages=[{"name": "s1", "steps": 1, "rewards": {"accuracy": 1.0}, "data": {"n_items": 2}},
                              {"name": "s2", "steps": 1, "rewards": {"test_tokens": 1.0},
                               "data": {"source": "mined"}}])
    grpo.train(config_from_dict(cfg), tmp_path / "out")
    assert calls == [4]
    state = json.loads((tmp_path / "out/checkpoints/step-000002/trainer_state/state.json").read_text())
    assert state["stage"] == 1 and state["mined_item_ids"] == ["pool-9-000001", "pool-9-000002"]


# --- bad input -----------------------------------------------------------------------------------------------------

def test_missing_reference_chains_fail_before_training(tmp_path, tiny_dir):
    @register_reward("test_needs_chain", requires=("reference_chain",))
    def needs_chain(prompts, completions, completion_ids, **kwargs):
        return [0.0] * len(completions)

    bare = [Item(id=f"b-{i}", question="Which tone is higher?", choices=["the first", "the second"],
                 answer="the first", audio=np.zeros(16000, dtype=np.float32)) for i in range(2)]
    data = write_items(bare, tmp_path / "bare.jsonl")
    cfg = tiny_config(tiny_dir, stages=[{"name": "s", "steps": 1, "rewards": {"test_needs_chain": 1.0},
                                         "data": {"source": "jsonl", "path": str(data)}}])
    try:
        with pytest.raises(ValueError, match="'test_needs_chain' requires 'reference_chain' on every item, but 2 of 2"):
            grpo.train(config_from_dict(cfg), tmp_path / "out")
    finally:
        REWARDS.pop("test_needs_chain")
    assert not (tmp_path / "out" / "log.jsonl").exists()


def test_a_budget_that_cuts_the_reference_chains_fails_before_training(tmp_path, tiny_dir):
    # 6 tokens cut every chain: without the opt-out the stage refuses, naming the key and the length it needs
    cfg = tiny_config(tiny_dir, grpo={"allow_truncated_chains": False})
    with pytest.raises(ValueError, match=r"grpo\.max_new_tokens.*3 of 3 items reason in more than max_new_tokens = 6 "
                                         r"tokens.*Raise max_new_tokens to at least \d+"):
        grpo.train(config_from_dict(cfg), tmp_path / "out")
    assert not (tmp_path / "out" / "log.jsonl").exists()


def test_empty_dataset(tmp_path, tiny_dir):
    (tmp_path / "empty.jsonl").write_text("")
    cfg = tiny_config(tiny_dir, stages=[{"name": "s", "steps": 1, "data": {"source": "jsonl",
                                                                           "path": str(tmp_path / "empty.jsonl")}}])
    with pytest.raises(ValueError, match="stage 's': the dataset is empty"):
        grpo.train(config_from_dict(cfg), tmp_path / "out")


def test_bad_reward_stops_the_run_naming_it(tmp_path, tiny_dir):
    REWARDS["test_wrong_length"] = lambda prompts, completions, completion_ids, **kw: [0.0]
    try:
        cfg = tiny_config(tiny_dir, stages=[{"name": "s", "steps": 1, "rewards": {"test_wrong_length": 1.0}}])
        with pytest.raises(ValueError, match="reward 'test_wrong_length' returned 1 values for 4 completions"):
            grpo.train(config_from_dict(cfg), tmp_path / "out")
    finally:
        REWARDS.pop("test_wrong_length")


def test_stop_after_stops_after_exactly_n_steps_and_zero_is_an_error(tmp_path, tiny_dir):
    cfg = tiny_config(tiny_dir, stages=[{"name": "s1", "steps": 3, "rewards": {"test_tokens": 1.0},
                                         "data": {"n_items": 3, "seed": 5, "families": ["pitch_compare"]}}])
    path = tmp_path / "run.toml"
    path.write_text(to_toml(cfg))
    grpo.main(["--config", str(path), "--out", str(tmp_path / "out"), "--stop-after", "2"])
    assert [json.loads(line)["step"] for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()] == [1, 2]
    grpo.train(config_from_dict(cfg), tmp_path / "out", resume=True, stop_after=2)  # already there: nothing more
    assert len((tmp_path / "out" / "log.jsonl").read_text().splitlines()) == 2
    with pytest.raises(SystemExit):
        grpo.main(["--config", str(path), "--out", str(tmp_path / "zero"), "--stop-after", "0"])
    with pytest.raises(ValueError, match="stop_after must be >= 1.*0 would train nothing"):
        grpo.train(config_from_dict(cfg), tmp_path / "zero", stop_after=0)
    assert not (tmp_path / "zero").exists()  # refused before anything was written


def test_cli_reports_config_errors(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[optim]\nlearning_rate = 1e-4\n")
    with pytest.raises(SystemExit, match="unknown key 'optim.learning_rate'"):
        grpo.main(["--config", str(path), "--out", str(tmp_path / "out")])


def test_train_subcommand_is_registered():
    from analyses.cli import COMMANDS

    assert COMMANDS["train"][0] == "rl.train.grpo"


def test_one_process_is_plain_pytorch(tiny_organism):
    """Without a launcher the accelerator adds nothing: the model is not wrapped, backward is loss.backward()."""
    from accelerate import Accelerator

    acc = Accelerator()
    assert acc.num_processes == 1 and acc.prepare_model(tiny_organism) is tiny_organism
    assert acc.unwrap_model(tiny_organism) is tiny_organism


# --- data parallel -------------------------------------------------------------------------------------------------

DDP_SCRIPT = """
import hashlib, sys, torch
from rl.train import grpo, rollout
from rl.train.config import load_config
from rl.rewards.registry import register_reward

@register_reward("test_tokens")
def tokens_reward(prompts, completions, completion_ids, **kwargs):
    return [sum(ids) / max(len(ids), 1) / 400 for ids in completion_ids]

cfg = load_config(sys.argv[1])
model = grpo.train(cfg, sys.argv[2])
from accelerate import PartialState
h = hashlib.sha256()
for name, p in sorted(model.state_dict().items()):
    h.update(name.encode()); h.update(p.detach().cpu().contiguous().numpy().tobytes())
open(f"{sys.argv[2]}/params-rank{PartialState().process_index}.sha256", "w").write(h.hexdigest())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_two_processes(tmp_path, tiny_dir):
    cfg = tiny_config(tiny_dir, grpo={"num_generations": 2, "batch_size": 2, "max_new_tokens": 5,
                                      "scale_rewards": "batch"},
                      stages=[{"name": "s", "steps": 2, "rewards": {"test_tokens": 1.0}, "data": {"n_items": 4}}])
    (tmp_path / "ddp.toml").write_text(to_toml(cfg))
    (tmp_path / "ddp_run.py").write_text(DDP_SCRIPT)
    out = tmp_path / "out"
    # accelerate 1.15: `launch --cpu --num_processes 2` starts ONE process unless MPI is set up; torchrun-based
    # multi-process on CPU (gloo) is `--multi_gpu` with ACCELERATE_USE_CPU=true.
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", ACCELERATE_USE_CPU="true")
    accelerate = Path(sys.executable).with_name("accelerate")
    proc = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", str(_free_port()), str(tmp_path / "ddp_run.py"),
                           str(tmp_path / "ddp.toml"), str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hashes = [(out / f"params-rank{r}.sha256").read_text() for r in (0, 1)]
    assert hashes[0] == hashes[1]
    initial = hashlib.sha256()
    from rl.organism import load_organism

    model, _ = load_organism(tiny_dir)
    for name, p in sorted(model.state_dict().items()):
        initial.update(name.encode())
        initial.update(p.detach().contiguous().numpy().tobytes())
    assert hashes[0] != initial.hexdigest()  # it trained
    assert len((out / "log.jsonl").read_text().splitlines()) == 2


# --- helpers -------------------------------------------------------------------------------------------------------

def test_text_only_model_trains_with_the_same_loop(tok):
    """A text LM (tiny Llama) on items without audio: the loop's text path (used by benchmarks/grpo_bench.py)."""
    from accelerate import Accelerator

    from rl import testing as tiny_lm
    from rl.data.collate import TextProcessor
    from rl.data.tasks import generate_items
    from rl.rewards.registry import resolve_rewards

    cfg = config_from_dict({"grpo": {"num_generations": 2, "batch_size": 2, "max_new_tokens": 5},
                            "stages": [{"name": "s", "steps": 1, "rewards": {"accuracy": 1.0, "test_tokens": 1.0}}]})
    policy = tiny_lm.build_model(tok, seed=1)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    items = [Item(id=it.id, question=it.question, choices=it.choices, answer=it.answer, audio=None)
             for it in generate_items(2, seed=1)]
    processor = TextProcessor(tok)
    assert "<|audio" not in collate.prompt_texts(processor, items, "think")[0]
    optimizer, scheduler = grpo.build_optimizer(policy, cfg, 1e-2, 1)
    run = grpo.Run(cfg, policy, policy, None, processor, Accelerator(cpu=True),
                   resolve_rewards(cfg.stages[0].rewards), optimizer, scheduler, rollout.suppressed_token_ids(tok))
    metrics, _ = grpo.train_step(run, items, step=0, max_steps=1)
    assert metrics["completion_length"] > 0
    assert any(not torch.equal(p, before[n]) for n, p in policy.named_parameters())
    with pytest.raises(ValueError, match="reads text only"):
        processor(text=["x"], audio=[np.zeros(10)])
