"""Where one model's evaluation in the demo goes: each part of ``rl.evaluate.evaluate``, timed on one thread.

    python -m benchmarks.eval_parts demo/runs/seed-0/checkpoints/step-000030 [--repeats 3] [--json out.json]

On the demo's held-out items (``analyses.record_pair.heldout``: 4 per family x difficulty, seeds from 30011), in the
order the demo's evaluation runs them: direct answers, greedy and sampled think-first completions (up to 144 tokens),
scoring them (the MiniLM similarity to the reference chains; its first call loads the embedder, timed apart), the
think-block probabilities, and the judge's process score (SmolLM2-135M, loaded apart). Medians over ``--repeats``;
the judge's share depends on how many answers are right and think, so time an RL model, not the base.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from analyses.models import load_pretrained
from analyses.record_pair import heldout
from rl.data.prompts import MAX_NEW_TOKENS
from rl.evaluate import generate, make_eval_judge, process_scores, score, think_propensity
from rl.organism import calibrated_audio


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def one_pass(model, processor, items, judge) -> tuple[dict[str, float], int]:
    """Seconds of each part, in the demo's order, and how many items the judge read."""
    seconds = {}
    seconds["direct"], _ = timed(lambda: generate(model, processor, items, "answer", max_new_tokens=16))
    seconds["think, greedy"], greedy_texts = timed(
        lambda: generate(model, processor, items, "think", max_new_tokens=MAX_NEW_TOKENS))
    seconds["think, sampled"], sampled_texts = timed(
        lambda: generate(model, processor, items, "think", max_new_tokens=MAX_NEW_TOKENS, temperature=1.0))
    seconds["score greedy (similarity)"], greedy = timed(lambda: score(items, greedy_texts))
    seconds["score sampled (similarity)"], _ = timed(lambda: score(items, sampled_texts))
    seconds["think-block probabilities"], _ = timed(lambda: think_propensity(model, processor, items))
    seconds["judge (process score)"], _ = timed(lambda: process_scores(judge, items, greedy))
    return seconds, int((greedy.correct & greedy.thought).sum())


def measure(model_path: str, repeats: int = 1, per_cell: int = 4, seed: int = 30_011) -> dict:
    """Seconds per part (median over ``repeats``; the model, embedder and judge load once, timed apart)."""
    torch.set_num_threads(1)
    model, processor = load_pretrained(model_path)
    items = heldout(per_cell, seed, None, calibrated=calibrated_audio(model_path))
    once = {"load embedder": timed(lambda: score(items[:1], ["<think>\na tone\n</think>"]))[0]}
    once["load judge"], _ = timed(lambda: make_eval_judge("smollm2"))
    # a judge of its own per pass: a judge caches its scores by content, so a second pass would read them back
    passes = [one_pass(model, processor, items, make_eval_judge("smollm2")) for _ in range(repeats)]
    seconds = {name: statistics.median(p[0][name] for p in passes) for name in passes[0][0]}
    return {"model": str(model_path), "n_items": len(items), "items_judged": passes[0][1], "repeats": repeats,
            "seconds": seconds, "total": sum(seconds.values()), "once": once}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a model folder (an RL checkpoint of the demo: demo/runs/seed-0/checkpoints/...)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args(argv)
    result = measure(args.model, args.repeats)
    print(f"{result['model']}: {result['n_items']} items, {result['items_judged']} judged, one thread, "
          f"median of {result['repeats']}")
    for name, s in result["seconds"].items():
        print(f"  {name:28s} {s:6.1f} s  ({100 * s / result['total']:.0f}%)")
    print(f"  {'total':28s} {result['total']:6.1f} s; once: " + ", ".join(f"{k} {v:.1f} s"
                                                                         for k, v in result["once"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
