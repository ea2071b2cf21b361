"""Router transplant: the causal test of where RL's routing changes matter (``adt-probe transplant``).

    adt-probe transplant --base rl/assets/organism --rl runs/demo/final --out runs/demo/transplant

For each band of layers, the RL model routes with the base model's routers there (``rl <- base``: how much of RL's
gain do those routers carry?) and the base routes with the RL routers (``base <- rl``: do they suffice?). Accuracy,
think-rate and a reward (accuracy + format) are measured on held-out items with the think-first prompt (greedy), and
the change against the unmodified model comes with a paired 95% bootstrap interval over items. Writes
``transplant.nc``, ``transplant.json`` and a figure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import xarray as xr

import adt_probe
from adt_probe import plot
from adt_probe.outputs import output_dir
from adt_probe.weights import transplant
from analyses import checkpoints

WRITES = ["transplant.nc", "transplant.nc.sha256.json", "transplant.json", "transplant_accuracy.png",
          "transplant_accuracy.pdf", "transplant_reward.png", "transplant_reward.pdf", "transplant_think_rate.png",
          "transplant_think_rate.pdf"]


def bands_of(n_layers: int, n_bands: int) -> list[list[int]]:
    """``n_bands`` contiguous, equal bands of layers, lowest first."""
    return [list(b) for b in np.array_split(np.arange(n_layers), n_bands)]


def per_item(model, processor, items, max_new_tokens: int) -> dict[str, np.ndarray]:
    from rl.evaluate import generate, score

    s = score(items, generate(model, processor, items, "think", max_new_tokens=max_new_tokens),
              with_similarity=False)
    return {"accuracy": s.correct.astype(float), "think_rate": s.thought.astype(float),
            "reward": s.correct.astype(float) + 0.5 * s.well_formed.astype(float)}


def run(base_path, rl_path, items, *, n_bands: int = 2, n_boot: int = 1000, seed: int = 0,
        max_new_tokens: int = 96, allow_unverified: bool = False) -> xr.Dataset:
    """Transplant effects per band and direction (both model folders verified first: ``analyses.checkpoints``)."""
    from rl.evaluate import mean_ci
    from rl.organism import load_organism

    base, processor = load_organism(checkpoints.model_folder(base_path, allow_unverified=allow_unverified))
    rl, _ = load_organism(checkpoints.model_folder(rl_path, allow_unverified=allow_unverified))
    n_layers = base.config.text_config.num_hidden_layers
    bands = bands_of(n_layers, n_bands)
    reference = {"rl <- base": per_item(rl, processor, items, max_new_tokens),
                 "base <- rl": per_item(base, processor, items, max_new_tokens)}
    metrics = ("accuracy", "think_rate", "reward")
    data = {f"{m}_delta{s}": np.full((len(bands), 2), np.nan) for m in metrics for s in ("", "_lo", "_hi")}
    for b, band in enumerate(bands):
        for d, (direction, (model, donor)) in enumerate({"rl <- base": (rl, base), "base <- rl": (base, rl)}.items()):
            with transplant(model, donor, band):
                got = per_item(model, processor, items, max_new_tokens)
            for m in metrics:
                ci = mean_ci(got[m] - reference[direction][m], n_boot=n_boot, seed=seed)  # paired over items
                est, lo, hi = ci["value"], ci["lo"], ci["hi"]
                data[f"{m}_delta"][b, d], data[f"{m}_delta_lo"][b, d], data[f"{m}_delta_hi"][b, d] = est, lo, hi
    ds = xr.Dataset({k: (("band", "direction"), v) for k, v in data.items()},
                    coords={"band": [f"{band[0]}-{band[-1]}" for band in bands],
                            "direction": ["rl <- base", "base <- rl"]})
    for direction, ref in reference.items():
        for m in metrics:
            ds.attrs[f"{direction.split()[0]}_{m}"] = float(ref[m].mean())
    ds.attrs.update(kind="router_transplant", n_items=len(items), n_boot=n_boot,
                    interval="95% paired bootstrap over items")
    return ds


def main(argv=None) -> None:
    from analyses.record_pair import heldout
    from rl.organism import ORGANISM_DIR

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=str(ORGANISM_DIR))
    ap.add_argument("--rl", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", help="JSONL items (default: synthetic held-out set)")
    ap.add_argument("--n-per-cell", type=int, default=4)
    ap.add_argument("--seed", type=int, default=30_011)
    ap.add_argument("--bands", type=int, default=2, help="number of equal layer bands")
    checkpoints.add_arguments(ap)
    args = ap.parse_args(argv)
    out = Path(args.out)
    with output_dir(out, tool="adt-probe transplant", writes=WRITES, overwrite=args.overwrite,
                    inputs=[args.base, args.rl] + ([args.data] if args.data else [])):
        ds = run(args.base, args.rl, heldout(args.n_per_cell, args.seed, args.data), n_bands=args.bands,
                 allow_unverified=args.allow_unverified)
        adt_probe.save(ds, out / "transplant.nc", overwrite=args.overwrite)
        (out / "transplant.json").write_text(json.dumps(ds.to_dict(data="list"), indent=2, default=str) + "\n")
        for metric in ("accuracy", "reward"):
            fig = plot.transplant_effects(ds, metric)
            plot.save(fig, out / f"transplant_{metric}")
            plot.plt.close(fig)
    print(ds.to_dataframe().round(3).to_string())


if __name__ == "__main__":
    main()
