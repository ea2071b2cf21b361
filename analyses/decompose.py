"""The router-logit change of every MoE layer split exactly into what the routers and what their inputs made
(``adt-probe decompose``).

    adt-probe decompose --base rl/assets/organism --rl demo/run/checkpoints/step-000045 \\
        --recordings demo/recordings --out demo/decompose

On the token sequences of ``--recordings`` (its ``items.jsonl`` and ``completions.jsonl``), one pass per model:
``z_r - z_b = (ΔW x̄ + Δb) + W̄ Δx`` exactly (``adt_probe.decompose``). Writes ``decomposition.nc`` (segment x
layer x effect), the figure, and the upper and lower band means of the router and the input term.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import adt_probe
from adt_probe import plot
from adt_probe.decompose import band_mean, band_sums, router_decomposition, router_effects
from adt_probe.outputs import output_dir
from adt_probe.stats import bca_interval
from analyses import checkpoints

WRITES = ["decomposition.nc", "decomposition.nc.sha256.json", "drift_decomposition.png", "drift_decomposition.pdf"]


def run(base_path, rl_path, recordings, out: Path, *, n_boot: int = 1000, allow_unverified: bool = False,
        overwrite: bool = False) -> dict:
    """Decompose, save and plot; both model folders are verified first (see ``analyses.checkpoints``)."""
    base_path = checkpoints.model_folder(base_path, allow_unverified=allow_unverified)
    rl_path = checkpoints.model_folder(rl_path, allow_unverified=allow_unverified)
    with output_dir(out, tool="adt-probe decompose", writes=WRITES, overwrite=overwrite,
                    inputs=[recordings, base_path, rl_path]):
        return _run(base_path, rl_path, Path(recordings), out, n_boot=n_boot, overwrite=overwrite)


def _run(base_path, rl_path, recordings: Path, out: Path, *, n_boot: int, overwrite: bool) -> dict:
    """Per band, the relative router and input terms and their shares with BCa intervals."""
    from analyses.compare import halves, load, segment_for
    from analyses.sequences import recorded_inputs

    base, processor = load(base_path)
    rl, _ = load(rl_path)
    inputs = recorded_inputs(recordings, processor)
    dec = router_decomposition(base, rl, inputs, tokenizer=processor.tokenizer, n_boot=n_boot)
    adt_probe.save(dec, out / "decomposition.nc", overwrite=overwrite)
    effects = router_effects(base, rl, inputs, tokenizer=processor.tokenizer)
    segment = segment_for([effects])
    lower, upper = halves(effects["layer"].values)
    fig = plot.drift_decomposition(dec, "rel_change", segment)
    plot.save(fig, out / "drift_decomposition")
    plot.plt.close(fig)
    result = {"segment": segment, "bands": {"lower": lower, "upper": upper},
              "max_residual": float(effects.attrs["max_residual"])}
    for q in ("rel_router", "rel_input", "share_router", "share_input"):
        sums = band_sums(effects, q, lower=lower, upper=upper, segment=segment)
        result[q] = {b: bca_interval(sums, band_mean(b), n_boot=n_boot) for b in ("lower", "upper")}
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--rl", required=True)
    ap.add_argument("--recordings", required=True, help="an `adt-probe record` folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-boot", type=int, default=1000)
    checkpoints.add_arguments(ap)
    args = ap.parse_args(argv)
    result = run(args.base, args.rl, args.recordings, Path(args.out), n_boot=args.n_boot,
                 allow_unverified=args.allow_unverified, overwrite=args.overwrite)
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
