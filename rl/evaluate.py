"""Evaluate an audio model on items: direct-answer accuracy, and what it writes when asked to think first.

Run ``python -m rl.evaluate --help``. Direct-answer accuracy is measured with greedy decoding of the ``answer``
prompt; the think-rate (fraction of completions with a non-empty ``<think>`` block) and the similarity of the think
text to the reference chain are measured on the ``think`` prompt, greedy and sampled at temperature 1.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rl import collate, prompts
from rl.items import Item


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (well-behaved at 0 and 1, unlike the normal approximation)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


@torch.no_grad()
def generate(model, processor, items: Sequence[Item], mode: prompts.Mode, *, max_new_tokens: int = 48,
             temperature: float = 0.0, batch_size: int = 32, seed: int = 0, written_facts: bool = False) -> list[str]:
    """Completions (decoded text, special tokens kept, padding dropped) for ``items`` prompted in ``mode``.

    ``temperature == 0`` decodes greedily; otherwise samples with ``torch.manual_seed(seed)`` set per batch, so the
    result does not depend on what ran before. ``written_facts`` puts each clip's facts in the prompt as text
    instead of the audio (how well the model answers once the facts are written out).
    """
    tok = processor.tokenizer
    out: list[str] = []
    model.eval()
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        if written_facts:
            texts = collate.prompt_texts(processor, chunk, mode, contexts=[it.meta["description"] for it in chunk])
            batch = collate.encode(processor, texts, None)
        else:
            batch = collate.encode_prompts(processor, chunk, mode)
        torch.manual_seed(seed + start)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else \
            dict(do_sample=False)
        ids = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, **sampling)
        new = ids[:, batch["input_ids"].shape[1]:]
        out += [tok.decode(row[row != tok.pad_token_id], skip_special_tokens=False) for row in new]
    return out


@dataclass
class Scores:
    """Per-item scores of one prompting mode."""

    correct: np.ndarray  # (n,) bool: parsed answer equals the item's answer
    thought: np.ndarray  # (n,) bool: non-empty think block
    similarity: np.ndarray  # (n,) float: cosine(think text, reference chain); 0 when no think text
    well_formed: np.ndarray  # (n,) bool
    completions: list[str]


def score(items: Sequence[Item], completions: Sequence[str], *, with_similarity: bool = True) -> Scores:
    """Parse completions and score them against the items."""
    parsed = [prompts.parse_completion(c) for c in completions]
    correct = np.array([p.answer == it.answer for p, it in zip(parsed, items)])
    thought = np.array([p.thought for p in parsed])
    sims = np.zeros(len(items), dtype=np.float32)
    if with_similarity and thought.any():
        from rl.embedding import similarity

        idx = np.flatnonzero(thought)
        refs = [" ".join(items[i].reference_chain or []) for i in idx]
        sims[idx] = similarity([parsed[i].think for i in idx], refs)
    return Scores(correct, thought, sims, np.array([p.well_formed for p in parsed]), list(completions))


def proportion(mask: np.ndarray) -> dict:
    """``{"value", "lo", "hi", "n"}`` of a boolean array, with a 95% Wilson interval."""
    lo, hi = wilson_interval(int(mask.sum()), len(mask))
    return {"value": float(mask.mean()) if len(mask) else math.nan, "lo": lo, "hi": hi, "n": int(len(mask))}


def mean_ci(x: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean with a 95% percentile-bootstrap interval over items."""
    if len(x) == 0:
        return {"value": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    rng = np.random.default_rng(seed)
    boots = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(1)
    return {"value": float(x.mean()), "lo": float(np.quantile(boots, 0.025)), "hi": float(np.quantile(boots, 0.975)),
            "n": int(len(x))}


def accuracy_table(items: Sequence[Item], correct: np.ndarray) -> dict:
    """Accuracy per family and difficulty (and overall), each with a Wilson interval and the chance level."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        groups[(it.family, it.difficulty)].append(i)
        groups[(it.family, "all")].append(i)
        groups[("all", it.difficulty)].append(i)
        groups[("all", "all")].append(i)
    table = {}
    for (family, difficulty), idx in sorted(groups.items()):
        chance = float(np.mean([1.0 / len(items[i].choices) for i in idx]))
        table.setdefault(family, {})[difficulty] = dict(proportion(correct[idx]), chance=chance)
    return table


def evaluate(model, processor, items: Sequence[Item], *, batch_size: int = 32, sample_seed: int = 0,
             think_samples: bool = True) -> dict:
    """Direct-answer accuracy table, and think-rate / reference similarity under the think-first prompt.

    Returns a JSON-serialisable dict: ``accuracy`` (family -> difficulty -> value, lo, hi, n, chance),
    ``think_prompt`` (greedy and sampled: accuracy, think_rate, reference_similarity with intervals) and
    a few example completions.
    """
    direct = score(items, generate(model, processor, items, "answer", max_new_tokens=16, batch_size=batch_size),
                   with_similarity=False)
    result = {"n_items": len(items), "accuracy": accuracy_table(items, direct.correct),
              "accuracy_written_facts": None,
              "direct_well_formed": proportion(direct.well_formed), "think_prompt": {}}
    if all("description" in it.meta for it in items):  # synthetic items: the facts can be written out
        facts = score(items, generate(model, processor, items, "answer", max_new_tokens=16, batch_size=batch_size,
                                      written_facts=True), with_similarity=False)
        result["accuracy_written_facts"] = accuracy_table(items, facts.correct)
    settings = {"greedy": 0.0, "sampled_t1": 1.0} if think_samples else {"greedy": 0.0}
    for name, temperature in settings.items():
        s = score(items, generate(model, processor, items, "think", temperature=temperature, max_new_tokens=96,
                                  batch_size=batch_size, seed=sample_seed))
        result["think_prompt"][name] = {
            "temperature": temperature, "accuracy": proportion(s.correct), "think_rate": proportion(s.thought),
            "reference_similarity": mean_ci(s.similarity),
            "reference_similarity_when_thinking": mean_ci(s.similarity[s.thought]),
            "examples": s.completions[:3]}
    result["examples_direct"] = direct.completions[:3]
    return result


def main(argv: Sequence[str] | None = None) -> None:
    from rl.items import load_items
    from rl.organism import ORGANISM_DIR, load_organism
    from rl.tasks import generate_items

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ORGANISM_DIR), help="model folder (default: the shipped organism)")
    ap.add_argument("--data", help="JSONL items; default: a held-out synthetic set")
    ap.add_argument("--n-per-cell", type=int, default=20, help="synthetic items per family x difficulty")
    ap.add_argument("--seed", type=int, default=10_007, help="seed of the synthetic held-out set")
    ap.add_argument("--out", help="write the JSON report here")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model, processor = load_organism(args.model)
    if args.data:
        items = load_items(args.data)
    else:
        from rl.tasks import FAMILIES
        items = generate_items(args.n_per_cell * len(FAMILIES) * 3, seed=args.seed, prefix="heldout")
    report = evaluate(model, processor, items)
    text = json.dumps(report, indent=2)
    if args.out:
        from pathlib import Path
        Path(args.out).write_text(text)
    print(format_table(report))


def format_table(report: dict) -> str:
    """The accuracy table (direct answers from the audio; last column: with the facts written out) and the
    think-prompt figures, as Markdown."""
    acc, facts = report["accuracy"], report.get("accuracy_written_facts")
    diffs = ["easy", "medium", "hard", "all"]
    head = "| family | chance | " + " | ".join(diffs) + " |" + (" facts written out |" if facts else "")
    lines = [head, "|---|---|" + "---|" * (len(diffs) + bool(facts))]

    def cell(c: dict) -> str:
        return f"{c['value']:.2f} [{c['lo']:.2f}, {c['hi']:.2f}]"

    for family in [f for f in acc if f != "all"] + ["all"]:
        cells = [cell(acc[family][d]) if d in acc[family] else "" for d in diffs]
        extra = f" {cell(facts[family]['all'])} |" if facts else ""
        lines.append(f"| {family} | {acc[family]['all']['chance']:.2f} | " + " | ".join(cells) + " |" + extra)
    for name, t in report["think_prompt"].items():
        tr, sim = t["think_rate"], t["reference_similarity"]
        lines.append(f"\nThink-first prompt, {name}: think-rate {tr['value']:.3f} [{tr['lo']:.3f}, {tr['hi']:.3f}], "
                     f"similarity to reference {sim['value']:.3f} [{sim['lo']:.3f}, {sim['hi']:.3f}], "
                     f"accuracy {t['accuracy']['value']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
