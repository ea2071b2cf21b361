"""The demo on the embedded organism: what `make demo` runs.

Today it evaluates the shipped base organism on a fresh held-out synthetic set (direct-answer accuracy per family and
difficulty, think-rate and reference similarity under a think-first prompt) and writes ``DIR/organism_eval.json``
and ``DIR/report.md``. The end-to-end pipeline (RL, recording, drift, crystallization) plugs in here as it lands.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> None:
    from rl.evaluate import evaluate, format_table
    from rl.organism import ORGANISM_DIR, load_organism, read_manifest
    from rl.tasks import DIFFICULTY_BANDS, FAMILIES, generate_items

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo", help="output folder")
    ap.add_argument("--model", default=str(ORGANISM_DIR), help="model folder (default: the shipped organism)")
    ap.add_argument("--n-per-cell", type=int, default=10, help="held-out items per family x difficulty")
    ap.add_argument("--seed", type=int, default=20_011, help="seed of the held-out set (not a training seed)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model, processor = load_organism(args.model)
    items = []
    for band in DIFFICULTY_BANDS:
        items += generate_items(args.n_per_cell * len(FAMILIES), seed=args.seed, difficulty=band,
                                prefix=f"demo-{band}")
    print(f"evaluating {args.model} on {len(items)} held-out items ...", flush=True)
    report = evaluate(model, processor, items)
    report["seconds"] = round(time.time() - t0, 1)
    report["model"] = str(args.model)
    (out / "organism_eval.json").write_text(json.dumps(report, indent=2) + "\n")
    table = format_table(report)
    manifest = read_manifest(args.model) if Path(args.model, "manifest.json").exists() else {}
    (out / "report.md").write_text(
        f"# adt-probe demo\n\nModel: `{args.model}` ({manifest.get('parameters', '?')} parameters, trained in "
        f"{manifest.get('training_seconds', '?')} s).\n\nHeld-out items: {len(items)} (seed {args.seed}). "
        f"Direct-answer accuracy with 95% Wilson intervals:\n\n{table}\n")
    print(table)
    print(f"\nwrote {out / 'report.md'} and {out / 'organism_eval.json'} in {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
