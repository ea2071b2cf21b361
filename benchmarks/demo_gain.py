"""RL's gain in a finished demo, measured again on held-out items of another seed.

    python -m benchmarks.demo_gain runs/demo [--per-cell 20] [--seed 40011] [--out runs/demo/gain_40011]

The demo reads RL's change on its held-out items (84, plus 168 for the greedy columns since the demo's ``extra``
items); at 84 one model's accuracy carries a Wilson interval of about +-0.09, as wide as issue 17's target (+0.08).
This evaluates the demo's base model and every seed's final checkpoint on ``21 x per_cell`` items of another seed
(``rl.evaluate`` without judge, sampling, written facts or notes: greedy think-first and direct answers, as the
demo's table) and pools the seeds as the demo does (``analyses.reproduce.pooled_headline``: a hierarchical interval
over seeds, then items; paired with the base item by item). The models run one process each, two at a time on one
thread; a report already in ``--out`` is reused (delete it to measure again).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from analyses.reproduce import Plan, base_path, final_checkpoint, over_base_direct, pooled_headline
from rl import evaluate


def models_of(demo: Path) -> dict[str, Path]:
    """``{"base": path, "seed-0": checkpoint, ...}`` of a finished ``adt-probe reproduce`` folder."""
    if not (demo / "plan.json").is_file():
        raise SystemExit(f"{demo}: no plan.json; name a folder written by `adt-probe reproduce --out` (e.g. demo)")
    plan = Plan(**json.loads((demo / "plan.json").read_text()))
    return {"base": base_path(plan), **{f"seed-{s}": final_checkpoint(plan, s) for s in plan.seeds}}


def measure(model: Path, out: Path, per_cell: int, seed: int) -> dict:
    """One model's ``rl.evaluate`` report on the synthetic held-out set of ``seed`` (written to ``out``)."""
    if not out.is_file():
        evaluate.main(["--model", str(model), "--n-per-cell", str(per_cell), "--seed", str(seed), "--judge", "none",
                       "--no-sampled", "--no-facts-and-notes", "--out", str(out)])
    return json.loads(out.read_text())


def gain(reports: dict[str, dict]) -> dict:
    """Base, pooled RL, their paired change and RL over the base's direct answer (think-first accuracy, greedy),
    each with its interval (``*_ci``)."""
    base = reports["base"]
    by_seed = {name: r for name, r in reports.items() if name != "base"}
    seeds = list(by_seed.values())
    greedy = base["think_prompt"]["greedy"]["accuracy"]
    final, change = pooled_headline(seeds), pooled_headline(seeds, minus=base)
    direct = over_base_direct(seeds, base)
    return {"n_items": base["n_items"], "base": greedy["value"], "base_ci": [greedy["lo"], greedy["hi"]],
            "final": final["accuracy"], "final_ci": final["accuracy_ci"],
            "change": change["accuracy"], "change_ci": change["accuracy_ci"],
            "over_base_direct": direct["accuracy"], "over_base_direct_ci": direct["accuracy_ci"],
            "seeds": {name: r["think_prompt"]["greedy"]["accuracy"]["value"] for name, r in by_seed.items()}}


def _with_ci(result: dict, key: str) -> str:
    return f"{result[key]:+.3f} [{result[key + '_ci'][0]:+.3f}, {result[key + '_ci'][1]:+.3f}]"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo", help="a folder written by `adt-probe reproduce --out`")
    ap.add_argument("--per-cell", type=int, default=20, help="held-out items per family x difficulty")
    ap.add_argument("--seed", type=int, default=40_011, help="seed of the held-out set (the demo's is 30011)")
    ap.add_argument("--out", help="where the reports go (default: DEMO/gain_SEED)")
    args = ap.parse_args(argv)
    demo = Path(args.demo)
    models = models_of(demo)
    out = Path(args.out or demo / f"gain_{args.seed}")
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        futures = {name: pool.submit(measure, path, out / f"{name}.json", args.per_cell, args.seed)
                   for name, path in models.items()}
        reports = {name: f.result() for name, f in futures.items()}
    result = gain(reports)
    (out / "gain.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{demo}: {result['n_items']} items (seed {args.seed}); base {result['base']:.3f}, RL pooled "
          f"{result['final']:.3f} (seeds {', '.join(f'{v:.3f}' for v in result['seeds'].values())}); change "
          f"{_with_ci(result, 'change')}; over the base's direct answer {_with_ci(result, 'over_base_direct')}")


if __name__ == "__main__":
    main()
