"""The router-logit change of every MoE layer split exactly into what the routers and what their inputs made
(``adt-probe decompose``).

    adt-probe decompose --base rl/assets/organism --rl demo/run/checkpoints/step-000045 \\
        --recordings demo/recordings --out demo/decompose

On the token sequences of ``--recordings`` (its ``items.jsonl`` and ``completions.jsonl``), one pass per model:
``z_r - z_b = (ΔW x̄ + Δb) + W̄ Δx`` exactly (``adt_probe.decompose``). Writes ``decomposition.nc`` (segment x
layer x effect), the figure, and the upper and lower band means of the router and the input term.
"""

from __future__ import annotations

import json
from pathlib import Path

import adt_probe
from adt_probe import plot
from adt_probe.decompose import band_mean, band_sums, router_decomposition, router_effects
from adt_probe.outputs import output_dir
from adt_probe.stats import bca_interval
from analyses import checkpoints
from analyses.cli import command_parser
from analyses.compare import halves, segment_for
from analyses.models import load_pretrained
from analyses.sequences import recorded_inputs

WRITES = ["decomposition.nc", "decomposition.nc.sha256.json", "drift_decomposition.png", "drift_decomposition.pdf"]


def run(base_path, rl_path, recordings, out: Path, *, n_boot: int = 1000, allow_unverified: bool = False,
        overwrite: bool = False, batch_size: int = 8, dtype: str = "float32", device_map: str | None = None) -> dict:
    """Decompose, save and plot; both model folders are verified first (see ``analyses.checkpoints``), then any
    pair of model folders of one MoE architecture loads (``analyses.models``; ``dtype``, ``device_map`` as there)."""
    base_path = checkpoints.model_folder(base_path, allow_unverified=allow_unverified)
    rl_path = checkpoints.model_folder(rl_path, allow_unverified=allow_unverified)
    with output_dir(out, tool="adt-probe decompose", writes=WRITES, overwrite=overwrite,
                    inputs=[recordings, base_path, rl_path]):
        base, processor = load_pretrained(base_path, dtype=dtype, device_map=device_map)
        rl, _ = load_pretrained(rl_path, dtype=dtype, device_map=device_map)
        return _run(base, rl, processor, Path(recordings), out, n_boot=n_boot, overwrite=overwrite,
                    batch_size=batch_size)


def _run(base, rl, processor, recordings: Path, out: Path, *, n_boot: int, overwrite: bool, batch_size: int) -> dict:
    """Per band, the relative router and input terms and their shares with BCa intervals."""
    inputs = recorded_inputs(recordings, processor)
    dec = router_decomposition(base, rl, inputs, tokenizer=processor.tokenizer, n_boot=n_boot, batch_size=batch_size)
    adt_probe.save(dec, out / "decomposition.nc", overwrite=overwrite)
    effects = router_effects(base, rl, inputs, tokenizer=processor.tokenizer, batch_size=batch_size)
    segment = segment_for([effects])
    lower, upper = halves(effects["layer"].values)
    fig = plot.drift_decomposition(dec, "rel_change", segment, bands={"lower": lower, "upper": upper})
    plot.save(fig, out / "drift_decomposition")
    result = {"segment": segment, "bands": {"lower": lower, "upper": upper},
              "max_residual": float(effects.attrs["max_residual"])}
    for q in ("rel_router", "rel_input", "share_router", "share_input"):
        sums = band_sums(effects, q, lower=lower, upper=upper, segment=segment)
        result[q] = {b: bca_interval(sums, band_mean(b), n_boot=n_boot) for b in ("lower", "upper")}
    return result


def main(argv=None) -> None:
    args = command_parser("decompose", __doc__).parse_args(argv)
    result = run(args.base, args.rl, args.recordings, Path(args.out), n_boot=args.n_boot,
                 allow_unverified=args.allow_unverified, overwrite=args.overwrite, batch_size=args.batch_size,
                 dtype=args.dtype, device_map=args.device_map)
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
