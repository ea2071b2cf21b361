"""The paper's two findings, measured on recorded models (``adt-probe findings``).

    adt-probe findings --recordings runs/demo/recordings --out runs/demo/findings

From ``base.zarr``, ``rl.zarr`` and ``base_noise.zarr`` (see ``adt-probe record``) it computes:

1. gating drift per layer x segment with intervals and the noise floor, and the upper-band minus lower-band contrast
   ("RL mostly reshapes the routers of the upper layers");
2. crystallization of think and answer tokens, base vs RL ("reasoning tokens crystallize progressively in the upper
   layers");

and writes ``drift.nc``, ``crystallization_base.nc``, ``crystallization_rl.nc``, ``crystallization_delta.nc``,
``findings.json`` and the figures (PNG and PDF) to ``--out``. Nothing is tuned to make a finding appear: the bands
are the lower and upper halves of the MoE layers, fixed before looking.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import adt_probe
from adt_probe import plot
from adt_probe.crystallize import compare_crystallization, crystallization
from adt_probe.drift import above_noise, band_contrast, gating_drift, rank_layers
from analyses.cli import command_parser


def halves(drift) -> tuple[list[int], list[int]]:
    moe = [int(x) for x in drift["layer"].values[drift["moe_layer"].values]]
    return moe[: len(moe) // 2], moe[len(moe) // 2:]


def findings(recordings: Path, out: Path, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Compute both findings from the recordings folder; write datasets, figures and ``findings.json``."""
    out.mkdir(parents=True, exist_ok=True)
    base, rl = adt_probe.open(recordings / "base.zarr"), adt_probe.open(recordings / "rl.zarr")
    noise = adt_probe.open(recordings / "base_noise.zarr")
    drift = gating_drift(base, rl, noise=(base, noise), n_boot=n_boot, seed=seed)
    adt_probe.save(drift, out / "drift.nc")
    lower, upper = halves(drift)
    result: dict = {"drift": {}, "crystallization": {}}
    for segment in ("all", "think", "answer"):
        if int(drift.n_tokens.sel(segment=segment)) == 0:
            continue
        contrast = band_contrast(base, rl, lower=lower, upper=upper, segment=segment, n_boot=n_boot, seed=seed)
        floor = band_contrast(base, noise, lower=lower, upper=upper, segment=segment, n_boot=n_boot, seed=seed)
        result["drift"][segment] = {
            "js_band_contrast": contrast, "js_band_contrast_noise": floor,
            "ranking_js": rank_layers(drift, "js", segment),
            "layers_above_noise": [int(i) for i in np.flatnonzero(above_noise(drift, "js", segment).values)],
            "n_tokens": int(drift.n_tokens.sel(segment=segment))}
    segments = [s for s in ("think", "answer", "all") if int(drift.n_tokens.sel(segment=s)) > 0]
    bands = {"lower": lower, "upper": upper}
    figures = {
        "drift_js": plot.drift_by_layer(drift, "js", segments, bands=bands),
        "drift_top1": plot.drift_by_layer(drift, "top1_agreement", segments, bands=bands),
        "expert_load": plot.expert_load(drift, "all"),
    }
    c_base, c_rl = crystallization(base, n_boot=n_boot, seed=seed), crystallization(rl, n_boot=n_boot, seed=seed)
    delta = compare_crystallization(base, rl, n_boot=n_boot, seed=seed)
    for name, ds in (("crystallization_base", c_base), ("crystallization_rl", c_rl),
                     ("crystallization_delta", delta)):
        adt_probe.save(ds.drop_vars(["crystallization_layer"], errors="ignore"), out / f"{name}.nc")
    cryst_segments = [s for s in ("think", "answer") if int(c_rl.n_tokens.sel(segment=s)) > 0]
    for seg in cryst_segments:
        result["crystallization"][seg] = {
            "base_mean_layer": _interval(c_base, "mean_crystallization_layer", seg),
            "rl_mean_layer": _interval(c_rl, "mean_crystallization_layer", seg),
            "delta_mean_layer": _interval(delta, "delta_mean_layer", seg),
            "n_tokens": int(c_rl.n_tokens.sel(segment=seg))}
    if cryst_segments:
        figures["crystallization_logprob"] = plot.crystallization_curves({"base": c_base, "RL": c_rl},
                                                                         "lens_logprob", cryst_segments, bands=bands)
        figures["crystallization_kl"] = plot.crystallization_curves({"base": c_base, "RL": c_rl},
                                                                    "lens_kl_final", cryst_segments, bands=bands)
        figures["crystallization_histogram"] = plot.crystallization_histogram({"base": c_base, "RL": c_rl},
                                                                              cryst_segments, bands=bands)
    result["figures"] = {}
    for name, fig in figures.items():
        result["figures"][name] = [str(p) for p in plot.save(fig, out / name)]
    result["bands"] = {"lower": lower, "upper": upper}
    (out / "findings.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _interval(ds, name: str, segment: str) -> dict:
    return {k: float(ds[name + s].sel(segment=segment)) for k, s in (("value", ""), ("lo", "_lo"), ("hi", "_hi"))}


def main(argv=None) -> None:
    args = command_parser("findings", __doc__).parse_args(argv)
    result = findings(Path(args.recordings), Path(args.out), n_boot=args.n_boot)
    print(json.dumps({k: v for k, v in result.items() if k != "figures"}, indent=2))


if __name__ == "__main__":
    main()
