"""Gating and router weight drift from the base at every checkpoint of a run (``adt-probe trajectory``).

    adt-probe trajectory --run demo/run --base rl/assets/organism --recordings demo/recordings --out demo/trajectory

The sequences are those of ``--recordings`` (``adt-probe record``'s folder: ``items.jsonl`` + ``completions.jsonl``),
teacher-forced through the base and every checkpoint. Writes ``trajectory.nc`` and the figure.
"""

from __future__ import annotations

import json
from pathlib import Path

import adt_probe
from adt_probe import plot
from adt_probe.outputs import output_dir
from analyses import checkpoints
from analyses.cli import command_parser
from analyses.models import load_pretrained
from analyses.sequences import recorded_inputs

WRITES = ["trajectory.nc", "trajectory.nc.sha256.json", "drift_trajectory.png", "drift_trajectory.pdf"]


def run(run_dir, base_path, recordings, out: Path, *, n_boot: int = 200, allow_unverified: bool = False,
        overwrite: bool = False) -> dict:
    """Compute, save and plot the trajectory; returns the steps and the layer-mean JS per step.

    Every checkpoint of ``run_dir`` is verified against its manifest first (damaged ones are skipped, with the file
    and the check named); the base folder too (``allow_unverified`` for one without a manifest).
    """
    base_path = checkpoints.model_folder(base_path, allow_unverified=allow_unverified)
    found = checkpoints.run_checkpoints(run_dir)
    with output_dir(out, tool="adt-probe trajectory", writes=WRITES, overwrite=overwrite,
                    inputs=[recordings, run_dir, base_path]):
        base, processor = load_pretrained(base_path)
        traj = adt_probe.drift_trajectory(found, recorded_inputs(recordings, processor), base=base,
                                          tokenizer=processor.tokenizer, routing="full", n_boot=n_boot)
        traj.attrs["run_dir"] = str(run_dir)
        adt_probe.save(traj, out / "trajectory.nc", overwrite=overwrite)
        segment = "think" if int(traj.n_tokens.sel(segment="think").max()) > 0 else "all"
        fig = plot.drift_trajectory(traj, "js", segment=segment)
        plot.save(fig, out / "drift_trajectory")
    return {"steps": [int(s) for s in traj.step.values], "segment": segment,
            "js_mean_over_layers": [round(float(v), 6) for v in traj.js.sel(segment=segment).mean("layer").values]}


def main(argv=None) -> None:
    args = command_parser("trajectory", __doc__).parse_args(argv)
    print(json.dumps(run(args.run, args.base, args.recordings, Path(args.out), n_boot=args.n_boot,
                         allow_unverified=args.allow_unverified, overwrite=args.overwrite), indent=1))


if __name__ == "__main__":
    main()
