"""Accuracy from written facts per task family of an organism checkpoint (a quick look during base training).

    python -m benchmarks.organism_facts_probe runs/v4/checkpoints/step-002600 [--per-cell 10]
    python -m benchmarks.organism_facts_probe runs/v6/ckpt/step-004100 --against runs/v7/organism --per-cell 20

The facts of each clip are written in the prompt instead of the audio (``rl.evaluate.generate(written_facts=True)``),
greedy, on the held-out items of ``rl.organism.train_base.heldout_items`` (seed 10,007, ``--per-cell`` items per
family x difficulty). Prints accuracy per family and the answers given to the two multi-step families; with
``--skills`` also the base-training sub-skills (``rl.data.tasks.SKILLS``, per skill x attribute, ``--per-cell`` x 3
items each, their own held-out seed). With ``--think`` every prompt is the think-first one (the model may write its
chain from the facts before answering) instead of the direct question. With ``--against B`` it measures a second
checkpoint on the same items and prints, per family, the paired difference (B - first) with its Newcombe interval and
McNemar's exact p (``adt_probe.stats.paired_proportions``): whether a phase of training changed what it seems to.
With ``--think``, ``--chains`` prints where the written chains of the multi-step families break: the share of items
whose think text states each inference step of the reference word for word, counted from the chain's end (the
conclusion, the step before it, ...), and ``--show N`` prints N chains per multi-step family beside their references.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses

import numpy as np
import torch

from adt_probe.stats import paired_proportions, wilson
from rl import organism
from rl.data import prompts
from rl.data.tasks import ATTRIBUTES, DIFFICULTY_BANDS, FAMILIES, MULTI_STEP, SKILLS, make_item
from rl.evaluate import generate, inference_steps, score
from rl.organism.train_base import config_of, heldout_items


def facts_answers(model, processor, items: list, mode: str, max_new_tokens: int) -> tuple[np.ndarray, list[str]]:
    """Greedy completions of ``model`` from written facts on ``items``: (correct (n,) bool, completions)."""
    with torch.no_grad():
        outs = generate(model, processor, items, mode, max_new_tokens=max_new_tokens, written_facts=True)
    return np.asarray(score(items, outs, with_similarity=False).correct, bool), outs


def print_accuracy(items: list, correct: np.ndarray, outs: list[str]) -> None:
    """Accuracy per family (with its Wilson interval) and the answers given to the multi-step families."""
    families = np.array([it.family for it in items])
    for family in FAMILIES:
        w = wilson(int(correct[families == family].sum()), int((families == family).sum()))
        print(f"{family}: {w['value']:.2f} [{w['lo']:.2f}, {w['hi']:.2f}] ({w['n']} items)")
    print(f"all: {correct.mean():.3f}")
    for family in MULTI_STEP:
        answers = [prompts.parse_completion(o).answer for o, it in zip(outs, items) if it.family == family]
        print(f"{family} answers: {collections.Counter(answers).most_common()}")


def print_paired(items: list, a: np.ndarray, b: np.ndarray) -> None:
    """Per family and over all items: b - a on the same items, Newcombe interval, McNemar's exact p."""
    families = np.array([it.family for it in items])
    for family in [*FAMILIES, "all"]:
        keep = np.ones(len(items), bool) if family == "all" else families == family
        d = paired_proportions(a[keep], b[keep])
        print(f"{family}: {a[keep].mean():.2f} -> {b[keep].mean():.2f}, difference {d['value']:+.2f} "
              f"[{d['lo']:+.2f}, {d['hi']:+.2f}], McNemar p = {d['mcnemar_p']:.3f} ({d['n']} items)")


def print_chain_steps(items: list, outs: list[str], show: int = 0) -> None:
    """Per multi-step family, the share of items whose think text states the reference's inference step at each
    position from the chain's end (-1: the conclusion), with Wilson intervals; then ``show`` chains per family."""
    for family in MULTI_STEP:
        pairs = [(it, prompts.parse_completion(o)) for it, o in zip(items, outs) if it.family == family]
        steps = [inference_steps(it) for it, _ in pairs]
        print(f"\n{family}, inference steps stated word for word ({len(pairs)} items):")
        for k in range(1, min(map(len, steps)) + 1):
            hits = sum(st[-k] in c.think for st, (_, c) in zip(steps, pairs))
            w = wilson(hits, len(pairs))
            print(f"  step {-k} (e.g. {steps[0][-k]!r}): {w['value']:.2f} [{w['lo']:.2f}, {w['hi']:.2f}]")
        every = sum(all(s in c.think for s in st) for st, (_, c) in zip(steps, pairs))
        print(f"  every step: {every / len(pairs):.2f}")
        for it, c in pairs[:show]:
            print(f"  FACTS {it.meta['description']}\n  REF   {' '.join(inference_steps(it))} -> {it.answer}\n"
                  f"  OUT   {c.think.strip()} -> {c.answer}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="an organism folder or a base-training checkpoint")
    ap.add_argument("--per-cell", type=int, default=10, help="held-out items per family x difficulty")
    ap.add_argument("--skills", action="store_true", help="also the sub-skills of the multi-step families")
    ap.add_argument("--think", action="store_true", help="the think-first prompt: the chain may come before the answer")
    ap.add_argument("--against", help="a second checkpoint, measured on the same items and compared pair by pair")
    ap.add_argument("--chains", action="store_true", help="with --think: which inference steps the chains state")
    ap.add_argument("--show", type=int, default=0, help="with --chains: print this many chains per multi-step family")
    args = ap.parse_args(argv)
    if (args.chains or args.show) and not args.think:
        ap.error("--chains and --show read the think text: add --think")
    mode, max_new_tokens = ("think", 96) if args.think else ("answer", 16)
    torch.set_num_threads(1)
    items = heldout_items(dataclasses.replace(config_of(args.checkpoint), eval_per_cell=args.per_cell))
    model, processor = organism.load_organism(args.checkpoint)
    correct, outs = facts_answers(model, processor, items, mode, max_new_tokens)
    print_accuracy(items, correct, outs)
    if args.chains or args.show:
        print_chain_steps(items, outs, args.show)
    if args.against:
        other, other_outs = facts_answers(*organism.load_organism(args.against), items, mode, max_new_tokens)
        print(f"\n{args.against}:")
        print_accuracy(items, other, other_outs)
        print(f"\n{args.against} - {args.checkpoint}, paired:")
        print_paired(items, correct, other)
    if args.skills:
        skill_accuracy(model, processor, args.per_cell, mode, max_new_tokens)


def skill_accuracy(model, processor, per_cell: int, mode: str = "answer", max_new_tokens: int = 16,
                   seed: int = 20_011) -> None:
    """Print written-facts accuracy on the sub-skills, per skill and attribute (greedy; prompted in ``mode``)."""
    items = [make_item(name, band, np.random.default_rng([seed, i, b, j]), f"skill-{name}-{band}-{j}")
             for i, name in enumerate(sorted(SKILLS)) for b, band in enumerate(DIFFICULTY_BANDS)
             for j in range(per_cell * 3)]
    with torch.no_grad():
        outs = generate(model, processor, items, mode, max_new_tokens=max_new_tokens, written_facts=True)
    correct = score(items, outs, with_similarity=False).correct
    cells, said = collections.defaultdict(list), collections.defaultdict(collections.Counter)
    for it, c, o in zip(items, correct, outs):
        attr = next(a for a, (_, _, most) in ATTRIBUTES.items() if a in it.question or most in it.question)
        cells[(it.family, attr)].append(c)
        said[(it.family, attr)][prompts.parse_completion(o).answer] += 1
    for (name, attr), hits in sorted(cells.items()):
        print(f"{name} {attr}: {np.mean(hits):.2f} ({len(hits)} items; most said: "
              f"{said[(name, attr)].most_common(2)})")


if __name__ == "__main__":
    main()
