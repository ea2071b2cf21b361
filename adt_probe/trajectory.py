"""Drift along an RL run: record the base and every checkpoint on the same inputs, measure drift from the base.

The checkpoints are given explicitly, as ``(step, folder or model)`` pairs: adt_probe does not decide which folders
of a run are complete (``analyses.checkpoints.run_checkpoints`` lists and verifies them with the run's checkpoint
contract). The base model is step 0.

Examples
--------
>>> ckpts = [(10, "runs/demo/checkpoints/step-000010"), (20, "runs/demo/checkpoints/step-000020")]
>>> traj = drift_trajectory(ckpts, batch, base="rl/assets/organism")     # doctest: +SKIP
>>> traj.js.sel(segment="think").plot.line(x="step")                     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import xarray as xr

from adt_probe.drift import gating_drift
from adt_probe.recording import record
from adt_probe.weights import load_model, router_weight_drift


def drift_trajectory(checkpoints: Sequence[tuple[int, str | Path | object]], inputs: Mapping, *,
                     base: str | Path | object, tokenizer=None, routing: str = "topk", n_boot: int = 200,
                     seed: int = 0, batch_size: int = 8) -> xr.Dataset:
    """Gating drift (and router weight drift) from the base at every given checkpoint.

    Parameters
    ----------
    checkpoints : ``(step, model folder or loaded model)`` pairs, steps > 0 in increasing order. Folders are loaded
        as they are: verify them first (``analyses.checkpoints``) if they may be damaged.
    inputs : processor output, recorded through every model (teacher-forced).
    base : the base model or its folder (step 0).

    Returns
    -------
    xarray.Dataset with a ``step`` dimension (0 = base, where every drift is 0 by construction) over the variables
    of ``gating_drift`` plus ``rel_change`` and ``cosine`` of the router weights.

    Raises
    ------
    ValueError : no checkpoints, or steps not positive and increasing.
    """
    steps = [int(s) for s, _ in checkpoints]
    if not steps:
        raise ValueError("drift_trajectory: no checkpoints given; pass (step, folder) pairs of at least one "
                         "checkpoint")
    if steps[0] <= 0 or any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"drift_trajectory: checkpoint steps must be positive and increasing (step 0 is the base); "
                         f"got {steps}")
    base_model = load_model(base) if isinstance(base, (str, Path)) else base
    base_rec = record(base_model, inputs, routing=routing, lens=None, tokenizer=tokenizer, batch_size=batch_size)
    per_step = []
    for step, ckpt in [(0, None), *checkpoints]:
        model = base_model if ckpt is None else load_model(ckpt) if isinstance(ckpt, (str, Path)) else ckpt
        rec = base_rec if ckpt is None else record(model, inputs, routing=routing, lens=None, tokenizer=tokenizer,
                                                   batch_size=batch_size)
        d = gating_drift(base_rec, rec, n_boot=n_boot, seed=seed)
        w = router_weight_drift(base_model, model)
        per_step.append(xr.merge([d, w[["rel_change", "cosine"]]], compat="override").expand_dims(step=[step]))
    out = xr.concat(per_step, dim="step")
    out.attrs = {**per_step[-1].attrs, "kind": "drift_trajectory",
                 "checkpoints": ", ".join(str(c) if isinstance(c, (str, Path)) else type(c).__name__
                                          for _, c in checkpoints)}
    return out
