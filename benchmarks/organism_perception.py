"""What an organism hears, and whether thinking from its own notes can pay: the ceiling RL works under.

    python -m benchmarks.organism_perception runs/v13/organism [--per-cell 10] [--json out.json]
    python -m benchmarks.organism_perception --oracle

RL can only raise accuracy by thinking if answering from the notes the model writes itself beats answering
directly. On the held-out items of ``rl.organism.train_base.heldout_items`` (the model's own config: its clips
calibrated or not), greedy, it measures:

* **describe**: the model's description of each clip against the true one: exactly right, the number of sounds, and
  per sound (matched by position) its pitch, duration and loudness, per difficulty band;
* **think open**: the same description scores for what the model writes in its think block when the think-first
  prompt's block is forced open at its first word (``prompts.notes_prefill(item, "own")``): the notes thinking
  actually starts from, which RL samples (a model can describe well when asked and badly when thinking);
* **accuracy** per family under four prompts: *direct* (answer only), *own notes* (the think block pre-filled with
  the model's own description from the describe prompt, then the model goes on: what thinking earns when the think
  text starts with perception), *think open* (the block forced open, the model writes its notes and goes on: the
  ceiling of what RL's thinking can reach without better perception), *true notes* (the block pre-filled with the
  clip's correct facts); with Wilson intervals, and own notes and think open minus direct paired on the same items
  (Newcombe interval, McNemar's p).

``--oracle`` needs no model: it asks whether a sound's loudness level is in the audio at all. Per difficulty band it
reads each tone's RMS over its true extent and reports the accuracy of the best two-threshold rule naming its level
from it, for peak-normalised clips (every organism up to v13) and calibrated ones (``render(calibrated=True)``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import re

import numpy as np
import torch

from adt_probe.stats import paired_proportions, wilson
from rl import organism
from rl.data.items import SAMPLE_RATE
from rl.data.prompts import MAX_NEW_TOKENS, notes_prefill
from rl.data.tasks import DIFFICULTY_BANDS, FAMILIES, generate_items
from rl.evaluate import generate, score
from rl.organism.train_base import config_of, heldout_items

#: one perception sentence: "Sound 2: a very high tone, long, loud." or "Sound 3: noise, short, quiet."
SENTENCE = re.compile(r"Sound (\d+): (?:noise|a (.+?) tone), (\w+), ([\w-]+)\.")
FIELDS = ("pitch", "duration", "loudness")


def sound_facts(text: str) -> list[tuple[str, str, str]]:
    """The (pitch or "noise", duration, loudness) of each sound a description states, in order."""
    return [(m.group(2) or "noise", m.group(3), m.group(4)) for m in SENTENCE.finditer(text)]


def describe_scores(items: list, descriptions: list[str]) -> dict[str, np.ndarray]:
    """Per item: ``exact`` and ``count`` (bool, (n,)); per field the share of the item's sounds named right (float,
    (n,); sounds matched by position, a missing or extra sound counts as wrong)."""
    out = {"exact": [], "count": [], **{f: [] for f in FIELDS}}
    for it, text in zip(items, descriptions):
        got, want = sound_facts(text), sound_facts(it.meta["description"])
        out["exact"].append(got == want)
        out["count"].append(len(got) == len(want))
        for k, field in enumerate(FIELDS):
            right = sum(g[k] == w[k] for g, w in zip(got, want))
            out[field].append(right / max(len(got), len(want)))
    return {k: np.asarray(v) for k, v in out.items()}


def clean_description(completion: str) -> str:
    """A describe completion without its empty think block and end of turn."""
    return completion.split("<|im_end|>")[0].replace("<think>", "").replace("</think>", "").strip()


def measure(model, processor, items: list, answers: bool = True) -> tuple[dict[str, dict[str, np.ndarray]],
                                                                          dict[str, np.ndarray]]:
    """({"describe": describe scores, "think_open": the same for the think block's own notes}, per-item correctness
    under "direct", "own_notes", "think_open" and "true_notes"; with ``answers`` False only the describe scores, and
    an empty dict), all greedy."""
    with torch.no_grad():
        descriptions = [clean_description(c) for c in generate(model, processor, items, "describe",
                                                                max_new_tokens=64)]
        if not answers:
            return {"describe": describe_scores(items, descriptions)}, {}
        own = [dataclasses.replace(it, meta={**it.meta, "description": d}) for it, d in zip(items, descriptions)]
        opened = generate(model, processor, items, "think", max_new_tokens=MAX_NEW_TOKENS, notes="own")
        think_notes = [(notes_prefill(it, "own") + c).split("</think>")[0] for it, c in zip(items, opened)]
        correct = {
            "direct": score(items, generate(model, processor, items, "answer", max_new_tokens=16),
                            with_similarity=False).correct,
            "own_notes": score(own, generate(model, processor, own, "think", max_new_tokens=MAX_NEW_TOKENS,
                                             notes="given"), with_similarity=False).correct,
            "think_open": score(items, opened, with_similarity=False).correct,
            "true_notes": score(items, generate(model, processor, items, "think", max_new_tokens=MAX_NEW_TOKENS,
                                                notes="given"), with_similarity=False).correct,
        }
    return {"describe": describe_scores(items, descriptions), "think_open": describe_scores(items, think_notes)}, \
        correct


def band_table(items: list, described: dict[str, np.ndarray]) -> dict:
    """Describe scores per difficulty band and overall: exact and count with Wilson intervals, fields as means."""
    bands = np.array([it.difficulty for it in items])
    table = {}
    for band in [*DIFFICULTY_BANDS, "all"]:
        keep = np.ones(len(items), bool) if band == "all" else bands == band
        if not keep.any():
            continue
        table[band] = {"exact": wilson(int(described["exact"][keep].sum()), int(keep.sum())),
                       "count": wilson(int(described["count"][keep].sum()), int(keep.sum())),
                       **{f: float(described[f][keep].mean()) for f in FIELDS}}
    return table


def report(items: list, described: dict[str, dict[str, np.ndarray]], correct: dict[str, np.ndarray]) -> dict:
    """The JSON-serialisable tables: describe (and think-open notes) per band, accuracy per family and prompt, own
    notes - direct and think open - direct."""
    families = np.array([it.family for it in items])
    accuracy = {}
    for family in [*FAMILIES, "all"] if correct else []:
        keep = np.ones(len(items), bool) if family == "all" else families == family
        accuracy[family] = {name: wilson(int(c[keep].sum()), int(keep.sum())) for name, c in correct.items()}
        for name in ("own_notes", "think_open"):
            accuracy[family][f"{name}_minus_direct"] = paired_proportions(correct["direct"][keep], correct[name][keep])
    return {"n_items": len(items), **{name: band_table(items, d) for name, d in described.items()},
            "accuracy": accuracy}


def print_report(result: dict) -> None:
    for name, what in (("describe", "describe prompt"), ("think_open", "think block forced open")):
        if name not in result:
            continue
        print(f"{what} ({result['n_items']} clips): exact, sound count, and per sound pitch / duration / loudness")
        for band, r in result[name].items():
            print(f"  {band:7s} exact {r['exact']['value']:.2f}  count {r['count']['value']:.2f}  "
                  + "  ".join(f"{f} {r[f]:.2f}" for f in FIELDS))
    if result["accuracy"]:
        print("accuracy: direct / own notes / think open / true notes; own notes - direct, think open - direct "
              "[95% intervals]")
    for family, r in result["accuracy"].items():
        d, t = r["own_notes_minus_direct"], r["think_open_minus_direct"]
        print(f"  {family:18s} {r['direct']['value']:.2f} / {r['own_notes']['value']:.2f} / "
              f"{r['think_open']['value']:.2f} / {r['true_notes']['value']:.2f};  "
              f"{d['value']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}], {t['value']:+.2f} [{t['lo']:+.2f}, {t['hi']:+.2f}]")


def tone_levels(items: list) -> tuple[np.ndarray, np.ndarray]:
    """Every tone's RMS over its true extent (dB, (m,)) and its loudness level ((m,) int)."""
    db, level = [], []
    for it in items:
        for ev, (kind, _, _, loudness) in zip(it.meta["events"], it.meta["levels"]):
            if kind == "tone":
                start = int(ev["onset_s"] * SAMPLE_RATE)
                x = it.audio[start:start + int(ev["duration_s"] * SAMPLE_RATE)].astype(np.float64)
                db.append(10 * np.log10(np.mean(x**2) + 1e-12))
                level.append(loudness)
    return np.asarray(db), np.asarray(level)


def best_threshold_accuracy(db: np.ndarray, level: np.ndarray) -> float:
    """The accuracy of the best rule ``level = (db >= t1) + (db >= t2)`` over thresholds at quantiles of ``db``."""
    grid = np.quantile(db, np.linspace(0, 1, 61))
    return max(float(np.mean((db >= t1).astype(int) + (db >= t2) == level)) for t1, t2 in
               itertools.combinations(grid, 2))


def oracle(n_items: int, seed: int = 0) -> dict:
    """Per rendering and band, the best threshold rule's loudness accuracy from true-extent tone RMS."""
    return {name: {band: best_threshold_accuracy(*tone_levels(generate_items(
                n_items, seed=seed, difficulty=band, calibrated=calibrated))) for band in DIFFICULTY_BANDS}
            for name, calibrated in (("peak-normalised", False), ("calibrated", True))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="an organism folder or a base-training checkpoint")
    ap.add_argument("--per-cell", type=int, default=10, help="held-out items per family x difficulty")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--oracle", action="store_true", help="loudness in the audio itself, no model")
    ap.add_argument("--describe-only", action="store_true",
                    help="only the descriptions (a checkpoint before base training teaches answers)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.oracle:
        result = oracle(70 * 3)
        for name, per_band in result.items():
            print(f"{name}: loudness level from tone RMS, best threshold rule: "
                  + "  ".join(f"{b} {v:.2f}" for b, v in per_band.items()))
    elif args.model:
        torch.set_num_threads(args.threads)
        items = heldout_items(dataclasses.replace(config_of(args.model), eval_per_cell=args.per_cell))
        model, processor = organism.load_organism(args.model)
        result = {"model": args.model, **report(items, *measure(model, processor, items, not args.describe_only))}
        print_report(result)
    else:
        ap.error("name a model (an organism folder or a checkpoint), or pass --oracle")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
