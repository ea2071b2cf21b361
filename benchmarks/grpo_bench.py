"""Completions per second: this repository's GRPO loop (``rl/train/grpo.py``) vs ``trl.GRPOTrainer``, side by side.

    python -m benchmarks.grpo_bench                      # both models, about 10 minutes on one core
    python -m benchmarks.grpo_bench --models moe --repeats 1

Two tiny models from ``rl/testing.py``: ``llama`` (2 layers, hidden 32, the model the TRL reward test uses; 32 new
tokens) and ``moe`` (Qwen3-MoE, 8 layers, hidden 128, 8 experts, top-2, every layer sparse; 48 new tokens). Same
prompts for both trainers (8 per step, chat-templated by ``rl.data.collate``), G = 8 completions each, pure sampling
at T = 1, DAPO loss, one update per rollout, no KL term, the same two rewards (accuracy and format from
``rl.rewards.registry``), one torch thread. Each trainer runs ``--steps`` steps; the first ``--warmup`` are dropped and
the median step time of the rest gives completions/s. The two run alternately ``--repeats`` times in one process so
that load on the machine hits both (``--unshared`` adds our loop with prompt sharing off, as it was before it). Our
loop's step is also split into phases (``Run.timings``: generation, rewards, log-probs, backward, optimizer; medians
over the measured steps). Writes ``benchmarks/results/grpo_vs_trl.json``.

``--models organism`` times our loop alone (TRL's trainer takes no audio) on the shipped organism
(``rl/assets/organism``, the Qwen3-Omni-MoE thinker) with the demo's GRPO and optimiser settings
(``rl/configs/demo.toml``: G = 8, 8 prompts, 96 new tokens, KL to the frozen base with beta 0.1, so the reference's
log-probs are a phase) on audio prompts, with prompt sharing and (always) without it: the loop before the audio
thinker shared its prompts. Rewards are accuracy and format (the demo's MiniLM chain reward is its own phase and does
not change with prompt sharing). Results go to ``benchmarks/results/grpo_organism.json`` unless ``--out`` is given.

    python -m benchmarks.grpo_bench --models organism --steps 4 --warmup 1 --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS, G, LR = 8, 8, 1e-5
MODELS = {  # name -> (rl.testing builder, new tokens, description)
    "llama": ("build_model", 32, "rl/testing.py Llama (2 layers, hidden 32)"),
    "moe": ("build_moe_model", 48, "rl/testing.py Qwen3-MoE (8 layers, hidden 128, 8 experts, top-2, all layers MoE)"),
    "organism": (None, 96, "the shipped organism (rl/assets/organism, Qwen3-Omni-MoE thinker), audio prompts, "
                           "rl/configs/demo.toml's GRPO settings (beta 0.1: a reference pass)"),
}
PHASES = ("generation", "rewards", "logprobs_old_ref", "logprobs_policy", "backward", "optimizer")


def build(model: str, tok):
    from rl import testing as tiny_lm

    return getattr(tiny_lm, MODELS[model][0])(tok, seed=1)


def items(audio: bool = False):
    from rl.data.items import Item
    from rl.data.tasks import generate_items

    if audio:
        return generate_items(PROMPTS, seed=4)
    out = []
    for it in generate_items(PROMPTS, seed=4):  # text-only copies: the tiny Llama reads no audio
        out.append(Item(id=it.id, question=it.question, choices=it.choices, answer=it.answer, audio=None,
                        family=it.family, difficulty=it.difficulty))
    return out


def ours(tok, steps: int, model: str, phases: dict[str, list[float]] | None = None, *,
         share_prompts: bool = True) -> list[float]:
    """Seconds per step of rl.train.grpo.train_step; each step's seconds per phase are appended to ``phases``.
    ``share_prompts=False`` turns prompt sharing off (``generate`` and the one-pass forward: the loop before it)."""
    from unittest import mock

    from accelerate import Accelerator

    from rl.data.collate import TextProcessor
    from rl.rewards.registry import resolve_rewards
    from rl.train.config import config_from_dict
    from rl.train.grpo import Run, build_optimizer, suppressed_token_ids, train_step

    stages = [{"name": "bench", "steps": steps, "rewards": {"accuracy": 1.0, "format": 0.25}}]
    if model == "organism":  # the demo's settings, the shipped model and its processor, audio prompts
        from rl.organism import load_organism
        from rl.train.config import read_raw

        demo = read_raw(ROOT / "rl" / "configs" / "demo.toml")
        cfg = config_from_dict({"grpo": demo["grpo"], "optim": demo["optim"], "stages": stages})
        policy, processor = load_organism()
        for name, p in policy.named_parameters():  # as rl.train.grpo's session: frozen prefixes
            p.requires_grad_(not any(name.startswith(prefix) for prefix in cfg.optim.freeze))
        ref = load_organism()[0].requires_grad_(False) if cfg.grpo.beta > 0 else None
        lr, tok = cfg.optim.lr, processor.tokenizer
    else:
        cfg = config_from_dict({"grpo": {"num_generations": G, "batch_size": PROMPTS,
                                         "max_new_tokens": MODELS[model][1], "temperature": 1.0, "loss_type": "dapo",
                                         "num_iterations": 1, "beta": 0.0, "mask_truncated_completions": False},
                                "optim": {"lr": LR, "lr_schedule": "constant", "warmup_steps": 0}, "stages": stages})
        policy, processor, ref, lr = build(model, tok), TextProcessor(tok), None, LR
    acc = Accelerator(cpu=True)
    optimizer, scheduler = build_optimizer(policy, cfg, lr, steps)
    run = Run(cfg, policy, policy, ref, processor, acc, resolve_rewards(cfg.stages[0].rewards),
              optimizer, scheduler, suppressed_token_ids(tok))
    batch, times = items(audio=model == "organism"), []
    torch.manual_seed(0)
    off = mock.patch("rl.train.rollout.shares_prompts", lambda *a: False)
    for step in range(steps):
        run.timings = {}
        t0 = time.perf_counter()
        with contextlib.nullcontext() if share_prompts else off:
            train_step(run, batch, step=step, max_steps=steps)
        times.append(time.perf_counter() - t0)
        if phases is not None:
            for k in PHASES:
                phases.setdefault(k, []).append(run.timings.get(k, 0.0))
            phases.setdefault("other", []).append(times[-1] - sum(run.timings.values()))
    return times


def trl_times(tok, steps: int, model: str) -> list[float]:
    """Seconds per step of trl.GRPOTrainer (generation included: it happens inside the training step)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rl.data import collate
    from rl.data.collate import TextProcessor
    from rl.rewards import accuracy_reward, format_reward

    its = items()
    texts = collate.prompt_texts(TextProcessor(tok), its, "think")
    data = Dataset.from_dict({"prompt": texts * steps, "answer": [it.answer for it in its] * steps})

    class Clock(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(output_dir=tmp, per_device_train_batch_size=PROMPTS * G, num_generations=G,
                          max_completion_length=MODELS[model][1], max_steps=steps, learning_rate=LR, loss_type="dapo",
                          beta=0.0, num_iterations=1, temperature=1.0, top_k=0, top_p=1.0, shuffle_dataset=False,
                          reward_weights=[1.0, 0.25], report_to="none", save_strategy="no", use_cpu=True,
                          bf16=False, seed=0, disable_tqdm=True, logging_steps=10_000, lr_scheduler_type="constant")
        trainer = GRPOTrainer(model=build(model, tok), reward_funcs=[accuracy_reward, format_reward],
                              args=args, train_dataset=data, processing_class=tok, callbacks=[clock])
        trainer.train()
    return clock.times


def bench(tok, model: str, args) -> dict:
    """Both trainers on ``model``, alternating ``args.repeats`` times: completions/s, ratio, our step's phases."""
    if model == "organism":  # TRL's trainer takes no audio: our loop with and without prompt sharing
        names = ("adt_probe", "adt_probe_unshared")
    else:
        names = ("adt_probe", "trl") + (("adt_probe_unshared",) if args.unshared else ())
    runs: dict[str, list[float]] = {name: [] for name in names}
    phases: dict[str, dict[str, list[float]]] = {}
    for r in range(args.repeats):
        for name in names:
            step_phases: dict[str, list[float]] = {}
            if name == "trl":
                times = trl_times(tok, args.steps, model)
            else:
                times = ours(tok, args.steps, model, step_phases, share_prompts=name == "adt_probe")
            times = times[args.warmup:]
            runs[name].append(statistics.median(times))
            for k, v in step_phases.items():
                phases.setdefault(name, {}).setdefault(k, []).extend(v[args.warmup:])
            print(f"{model} repeat {r}: {name} median step {runs[name][-1]:.3f} s", flush=True)
    per_s = {name: PROMPTS * G / statistics.median(v) for name, v in runs.items()}
    step_phases = {name: {k: statistics.median(v) for k, v in ph.items()} for name, ph in phases.items()}
    ratio = ("ratio_adt_probe_over_trl", per_s["adt_probe"] / per_s["trl"]) if "trl" in per_s else \
        ("ratio_shared_over_unshared", per_s["adt_probe"] / per_s["adt_probe_unshared"])
    return {"completions_per_second": per_s, ratio[0]: ratio[1],
            "median_step_seconds_per_repeat": runs,
            "step_phases": {name: {"median_seconds": ph, "share": {k: v / sum(ph.values()) for k, v in ph.items()}}
                            for name, ph in step_phases.items()},
            "setting": {"model": MODELS[model][2], "prompts_per_step": PROMPTS, "G": G,
                        "max_new_tokens": MODELS[model][1], "loss_type": "dapo", "num_iterations": 1,
                        "beta": 0.1 if model == "organism" else 0.0,
                        "steps": args.steps, "warmup_dropped": args.warmup, "repeats": args.repeats,
                        "threads": args.threads}}


def main(argv=None) -> None:
    from rl import testing as tiny_lm

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["llama", "moe"])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--unshared", action="store_true",
                    help="also time our loop with prompt sharing off (generate + one-pass forward: the loop before)")
    ap.add_argument("--note", default="", help="written into the result (for example the machine's load)")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/grpo_vs_trl.json (grpo_organism.json "
                                                "for --models organism alone)")
    args = ap.parse_args(argv)
    if args.out is None:
        name = "grpo_organism.json" if args.models == ["organism"] else "grpo_vs_trl.json"
        args.out = str(ROOT / "benchmarks" / "results" / name)
    torch.set_num_threads(args.threads)
    tok = tiny_lm.build_tokenizer()
    import transformers
    import trl

    result = {"models": {m: bench(tok, m, args) for m in args.models}, "note": args.note,
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "trl": trl.__version__}}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for m, r in result["models"].items():
        print(m, json.dumps({k: r[k] for k in r if k == "completions_per_second" or k.startswith("ratio")}),
              json.dumps({name: {k: round(v, 3) for k, v in ph["median_seconds"].items()}
                          for name, ph in r["step_phases"].items()}))


if __name__ == "__main__":
    main()
