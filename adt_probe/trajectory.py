"""Drift along an RL run: record the base and every checkpoint on the same inputs, measure drift from the base.

A run directory holds checkpoints as ``step-NNNNNN`` folders (directly or under ``checkpoints/``), each loadable by
``from_pretrained``. The base model is step 0.

Examples
--------
>>> traj = drift_trajectory("runs/demo", batch, base="rl/assets/organism")   # doctest: +SKIP
>>> traj.js.sel(segment="think").plot.line(x="step")                         # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import xarray as xr

from adt_probe.drift import gating_drift
from adt_probe.recording import record
from adt_probe.weights import load_model, router_weight_drift

_STEP = re.compile(r"step-(\d+)$")


def find_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every complete checkpoint in ``run_dir``, by step.

    A checkpoint counts when its folder name is ``step-N`` and it holds ``config.json``; temporary folders of a
    checkpoint still being written (other names) are skipped.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    found = []
    for folder in [*run_dir.glob("step-*"), *run_dir.glob("checkpoints/step-*")]:
        m = _STEP.search(folder.name)
        if m and (folder / "config.json").exists():
            found.append((int(m.group(1)), folder))
    return sorted(found)


def drift_trajectory(run_dir: str | Path, inputs: Mapping, *, base: str | Path | object, tokenizer=None,
                     routing: str = "topk", n_boot: int = 200, seed: int = 0, batch_size: int = 8,
                     steps: list[int] | None = None) -> xr.Dataset:
    """Gating drift (and router weight drift) from the base at every checkpoint of a run.

    Parameters
    ----------
    run_dir : the run's output folder.
    inputs : processor output, recorded through every model (teacher-forced).
    base : the base model or its folder (step 0).
    steps : only these checkpoint steps (default: all).

    Returns
    -------
    xarray.Dataset with a ``step`` dimension (0 = base, where every drift is 0 by construction) over the variables
    of ``gating_drift`` plus ``rel_change`` and ``cosine`` of the router weights.
    """
    base_model = load_model(base) if isinstance(base, (str, Path)) else base
    base_rec = record(base_model, inputs, routing=routing, lens=None, tokenizer=tokenizer, batch_size=batch_size)
    checkpoints = [(s, p) for s, p in find_checkpoints(run_dir) if steps is None or s in steps]
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir}: no checkpoint folders step-N with a config.json")
    per_step = []
    for step, folder in [(0, None), *checkpoints]:
        model = base_model if folder is None else load_model(folder)
        rec = base_rec if folder is None else record(model, inputs, routing=routing, lens=None, tokenizer=tokenizer,
                                                     batch_size=batch_size)
        d = gating_drift(base_rec, rec, n_boot=n_boot, seed=seed)
        w = router_weight_drift(base_model, model)
        per_step.append(xr.merge([d, w[["rel_change", "cosine"]]], compat="override").expand_dims(step=[step]))
    out = xr.concat(per_step, dim="step")
    out.attrs = {**per_step[-1].attrs, "kind": "drift_trajectory", "run_dir": str(run_dir)}
    return out
