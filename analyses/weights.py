"""Router weight drift between two checkpoints, next to the drift of the blocks' other weights (``adt-probe weights``).

    adt-probe weights --base rl/assets/organism --rl demo/run/checkpoints/step-000045 --out demo/weights

Writes ``router_weight_drift.nc`` and the figure (PNG and PDF). No data needed: it compares the parameters.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import adt_probe
from adt_probe import plot
from adt_probe.outputs import output_dir
from analyses import checkpoints
from analyses.cli import command_parser
from analyses.models import load_pretrained

WRITES = ["router_weight_drift.nc", "router_weight_drift.nc.sha256.json", "router_weight_drift.png",
          "router_weight_drift.pdf"]


def run(base, rl, out: Path, *, allow_unverified: bool = False, overwrite: bool = False, dtype: str = "float32",
        device_map: str | None = None) -> dict:
    """Compute, save and plot; returns per-layer ``rel_change``, ``rel_change_other`` and ``cosine``.

    Both folders are verified first (a run folder as ``rl`` means its newest complete checkpoint), then loaded with
    ``analyses.models.load_pretrained`` (any transformers model folder; ``dtype``, ``device_map`` as there)."""
    base = checkpoints.model_folder(base, allow_unverified=allow_unverified)
    rl = checkpoints.model_folder(rl, allow_unverified=allow_unverified)
    with output_dir(out, tool="adt-probe weights", writes=WRITES, overwrite=overwrite, inputs=[base, rl]):
        base_model, _ = load_pretrained(base, dtype=dtype, device_map=device_map)
        rl_model, _ = load_pretrained(rl, dtype=dtype, device_map=device_map)
        ds = adt_probe.router_weight_drift(base_model, rl_model)
        adt_probe.save(ds, out / "router_weight_drift.nc", overwrite=overwrite)
        fig = plot.router_weight_drift(ds)
        plot.save(fig, out / "router_weight_drift")
    return {name: [None if not np.isfinite(v) else round(float(v), 6) for v in ds[name].values]
            for name in ("rel_change", "rel_change_other", "cosine")}


def main(argv=None) -> None:
    args = command_parser("weights", __doc__).parse_args(argv)
    print(json.dumps(run(args.base, args.rl, Path(args.out), allow_unverified=args.allow_unverified,
                         overwrite=args.overwrite, dtype=args.dtype, device_map=args.device_map), indent=1))


if __name__ == "__main__":
    main()
