"""Router transplant: the causal test of where RL's routing changes matter (``adt-probe transplant``).

    adt-probe transplant --base rl/assets/organism --rl runs/demo/final --out runs/demo/transplant

For each band of layers, the RL model routes with the base model's routers there (``rl <- base``: how much of RL's
gain do those routers carry?) and the base routes with the RL routers (``base <- rl``: do they suffice?). Accuracy,
think-rate and a reward (accuracy + format) are measured on held-out items with the think-first prompt (greedy), and
the change against the unmodified model comes with a paired 95% bootstrap interval over items. Writes
``transplant.nc``, ``transplant.json`` and a figure.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from adt_probe import plot
from adt_probe.architectures import get_module
from adt_probe.weights import check_compatible, transplant
from analyses.cli import command_parser
from analyses.models import for_model, load_pretrained
from analyses.record_pair import heldout
from rl.evaluate import generate, mean_ci, score

log = logging.getLogger(__name__)


def bands_of(n_layers: int, n_bands: int) -> list[list[int]]:
    """``n_bands`` contiguous, equal bands of layers, lowest first."""
    return [list(b) for b in np.array_split(np.arange(n_layers), n_bands)]


def per_item(model, processor, items, max_new_tokens: int, batch_size: int = 32) -> dict[str, np.ndarray]:
    s = score(items, generate(model, processor, items, "think", max_new_tokens=max_new_tokens,
                              batch_size=batch_size), with_similarity=False)
    return {"accuracy": s.correct.astype(float), "think_rate": s.thought.astype(float),
            "reward": s.correct.astype(float) + 0.5 * s.well_formed.astype(float)}


def run(base_path, rl_path, items, *, n_bands: int = 2, n_boot: int = 1000, seed: int = 0,
        max_new_tokens: int = 96, batch_size: int = 32, dtype: str = "float32",
        device_map: str | None = None) -> xr.Dataset:
    """Transplant effects per band and direction; any pair of model folders of one MoE architecture loads, and a
    text model is asked the items' written facts (``analyses.models``)."""
    base, processor = load_pretrained(base_path, dtype=dtype, device_map=device_map)
    rl, _ = load_pretrained(rl_path, dtype=dtype, device_map=device_map)
    spec = check_compatible(base, rl)
    if not spec.is_moe:
        raise ValueError(f"{base_path} is a dense {spec.family} model: a router transplant needs routers")
    items = for_model(items, processor)
    bands = bands_of(len(get_module(base, spec.layers)), n_bands)
    reference = {"rl <- base": per_item(rl, processor, items, max_new_tokens, batch_size),
                 "base <- rl": per_item(base, processor, items, max_new_tokens, batch_size)}
    metrics = ("accuracy", "think_rate", "reward")
    data = {f"{m}_delta{s}": np.full((len(bands), 2), np.nan) for m in metrics for s in ("", "_lo", "_hi")}
    for b, band in enumerate(tqdm(bands, desc="transplant", unit="band")):
        for d, (direction, (model, donor)) in enumerate({"rl <- base": (rl, base), "base <- rl": (base, rl)}.items()):
            with transplant(model, donor, band):
                got = per_item(model, processor, items, max_new_tokens, batch_size)
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
    args = command_parser("transplant", __doc__).parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = run(args.base, args.rl, heldout(args.n_per_cell, args.seed, args.data), n_bands=args.bands,
             n_boot=args.n_boot, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, dtype=args.dtype,
             device_map=args.device_map)
    ds.to_netcdf(out / "transplant.nc", engine="h5netcdf")
    (out / "transplant.json").write_text(json.dumps(ds.to_dict(data="list"), indent=2, default=str) + "\n")
    for metric in ("accuracy", "reward"):
        fig = plot.transplant_effects(ds, metric)
        plot.save(fig, out / f"transplant_{metric}")
        plot.plt.close(fig)
    log.info("%s", ds.to_dataframe().round(3).to_string())


if __name__ == "__main__":
    main()
