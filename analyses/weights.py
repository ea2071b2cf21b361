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
from analyses.cli import command_parser
from analyses.models import load_pretrained


def run(base, rl, out: Path) -> dict:
    """Compute, save and plot; returns per-layer ``rel_change``, ``rel_change_other`` and ``cosine``."""
    ds = adt_probe.router_weight_drift(base, rl)
    adt_probe.save(ds, out / "router_weight_drift.nc")
    fig = plot.router_weight_drift(ds)
    plot.save(fig, out / "router_weight_drift")
    plot.plt.close(fig)
    return {name: [None if not np.isfinite(v) else round(float(v), 6) for v in ds[name].values]
            for name in ("rel_change", "rel_change_other", "cosine")}


def main(argv=None) -> None:
    args = command_parser("weights", __doc__).parse_args(argv)
    base, _ = load_pretrained(args.base, dtype=args.dtype, device_map=args.device_map)
    rl, _ = load_pretrained(args.rl, dtype=args.dtype, device_map=args.device_map)
    print(json.dumps(run(base, rl, Path(args.out)), indent=1))


if __name__ == "__main__":
    main()
