"""Which part of the gating drift the routers made and which their inputs made (``adt-probe decompose``).

    adt-probe decompose --base rl/assets/organism --rl demo/run/checkpoints/step-000045 \\
        --recordings demo/recordings --out demo/decompose

Uses ``base.zarr`` and ``rl.zarr`` of ``--recordings`` (routing="full") and one extra pass of the RL model per MoE
layer with the base router in that layer (``adt_probe.decompose``). Writes ``decomposition.nc``, the per-layer
views ``rl_streams_base_routers.zarr``, the figure, and the upper-minus-lower band contrast of each effect.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import adt_probe
from adt_probe import plot
from adt_probe.decompose import base_router_views, effect_pairs, router_decomposition
from adt_probe.drift import band_contrast
from adt_probe.outputs import output_dir
from analyses import checkpoints

WRITES = ["rl_streams_base_routers.zarr", "decomposition.nc", "decomposition.nc.sha256.json",
          "drift_decomposition.png", "drift_decomposition.pdf"]


def run(base_path, rl_path, recordings, out: Path, *, n_boot: int = 1000, allow_unverified: bool = False,
        overwrite: bool = False) -> dict:
    """Decompose, save and plot; both model folders are verified first (see ``analyses.checkpoints``)."""
    base_path = checkpoints.model_folder(base_path, allow_unverified=allow_unverified)
    rl_path = checkpoints.model_folder(rl_path, allow_unverified=allow_unverified)
    with output_dir(out, tool="adt-probe decompose", writes=WRITES, overwrite=overwrite,
                    inputs=[recordings, base_path, rl_path]):
        return _run(base_path, rl_path, Path(recordings), out, n_boot=n_boot, overwrite=overwrite)


def _run(base_path, rl_path, recordings: Path, out: Path, *, n_boot: int, overwrite: bool) -> dict:
    from analyses.findings import halves
    from analyses.sequences import recorded_inputs
    from rl.organism import load_organism

    base, processor = load_organism(base_path)
    rl, _ = load_organism(rl_path)
    inputs = recorded_inputs(recordings, processor)
    base_rec = adt_probe.open(recordings / "base.zarr").load()
    rl_rec = adt_probe.open(recordings / "rl.zarr").load()
    views = base_router_views(rl, base, inputs, rl_recording=rl_rec, tokenizer=processor.tokenizer)
    adt_probe.save(views, out / "rl_streams_base_routers.zarr", overwrite=overwrite)
    dec = router_decomposition(base, rl, inputs, base_recording=base_rec, rl_recording=rl_rec, views=views,
                               n_boot=n_boot)
    adt_probe.save(dec, out / "decomposition.nc", overwrite=overwrite)
    total = dec.sel(effect="total")
    lower, upper = halves(total)
    segment = "think" if int(total.n_tokens.sel(segment="think")) > 0 else "all"
    fig = plot.drift_decomposition(dec, "js", segment)
    plot.save(fig, out / "drift_decomposition")
    plot.plt.close(fig)
    return {"segment": segment, "bands": {"lower": lower, "upper": upper},
            **{f"js_band_contrast_{k}": band_contrast(a, b, lower=lower, upper=upper, segment=segment, n_boot=n_boot)
               for k, (a, b) in effect_pairs(base_rec, rl_rec, views).items()}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--rl", required=True)
    ap.add_argument("--recordings", required=True, help="an `adt-probe record --routing full` folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-boot", type=int, default=1000)
    checkpoints.add_arguments(ap)
    args = ap.parse_args(argv)
    result = run(args.base, args.rl, args.recordings, Path(args.out), n_boot=args.n_boot,
                 allow_unverified=args.allow_unverified, overwrite=args.overwrite)
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
