"""Crash safety: SIGKILL the GRPO trainer at random moments (some while a checkpoint is being written), resume each
time, and compare the final parameters with an uninterrupted run's; the same for ``adt-probe record`` and
``adt-probe trajectory`` (``--target``), whose outputs must never open as silently wrong data.

    python -m benchmarks.crash_safety --kills 10            # about 3 minutes on 2 cores
    python -m benchmarks.crash_safety --target record --kills 4
    python -m benchmarks.crash_safety --target trajectory --kills 4

Each attempt starts ``python -m rl.train.grpo --resume`` on the same output folder and kills it with SIGKILL
either after a
random delay or the moment a temporary checkpoint folder (``.tmp-step-*``) appears, i.e. in the middle of a
checkpoint write. After each kill it checks that no half-written checkpoint is listed as complete. Once ``--kills``
kills landed, the run is resumed to the end. Writes ``benchmarks/results/crash_safety.json``: the kills, the
resume log lines, and whether the final parameters equal the uninterrupted run's bit for bit.

With ``--target record`` / ``trajectory`` the command runs once uninterrupted (the reference), then is killed
``--kills`` times on another ``--out`` (after a random delay, or the moment a temporary of a save appears) and
re-run there. After each kill every output under its final name is opened with verification: it must either equal
the reference or be refused with a message (never open with other data). The last re-run must finish, leave no
temporary behind, and produce outputs equal to the reference. Writes ``benchmarks/results/crash_safety_<target>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr
from safetensors.numpy import load_file

import adt_probe
from rl.train.checkpoint import list_checkpoints, verify

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "rl" / "configs" / "smoke.toml"
OVERRIDES = ["stages.0.steps=24", "checkpoint.every=1", "checkpoint.keep_last=3"]


def command(out: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "rl.train.grpo", "--config", str(CONFIG), "--out", str(out)]
    for o in OVERRIDES:
        cmd += ["--set", o]
    return cmd + (["--resume"] if resume else [])


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}


def final_params(out: Path) -> dict[str, np.ndarray]:
    return load_file(str(list_checkpoints(out / "checkpoints")[-1][1] / "model.safetensors"))


def kill_when(proc: subprocess.Popen, delay: float | None, in_save: Callable[[], bool]) -> tuple[float, bool] | None:
    """SIGKILL ``proc`` once ``delay`` seconds have passed (None: never) or the moment ``in_save()`` is true.

    Returns (seconds after start, whether it was inside a save), or None if the process ended by itself first."""
    t0 = time.time()
    while proc.poll() is None:
        elapsed, saving = time.time() - t0, in_save()
        if (delay is not None and elapsed >= delay) or saving:
            proc.send_signal(signal.SIGKILL)
            return round(elapsed, 3), saving
        time.sleep(0.002)
    return None


def attempt(out: Path, rng: np.random.Generator, mode: str, max_delay: float) -> dict:
    """Start a resuming run and kill it (mode "random": after a random delay; "checkpoint": inside a save)."""
    root = out / "checkpoints"
    def newest() -> int:
        found = list_checkpoints(root)
        return found[-1][0] if found else -1

    before = newest()
    proc = subprocess.Popen(command(out, resume=True), cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    delay = float(rng.uniform(2.0, 0.6 * max_delay)) if mode == "random" else None
    # "checkpoint": kill inside the second save of this attempt (after one more step got saved, so the run moves on)
    hit = kill_when(proc, delay, lambda: (mode == "checkpoint" and root.is_dir() and newest() > before
                                          and any(p.name.startswith(".tmp-") for p in root.iterdir())))
    killed = hit and {"mode": mode, "after_s": hit[0], "during_checkpoint_write": hit[1]}
    output = proc.communicate()[0]
    return {"killed": killed, "returncode": proc.returncode,
            "resume_lines": [ln for ln in output.splitlines() if "resuming" in ln or "skipping" in ln
                             or "removing incomplete" in ln or "no complete checkpoint" in ln]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=["train", "record", "trajectory"], default="train")
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/adt-probe-crash")
    ap.add_argument("--out", help="result JSON (default: benchmarks/results/crash_safety[_TARGET].json)")
    args = ap.parse_args(argv)
    suffix = "" if args.target == "train" else f"_{args.target}"
    args.out = args.out or str(ROOT / "benchmarks" / "results" / f"crash_safety{suffix}.json")
    work = Path(args.work) / args.target
    shutil.rmtree(work, ignore_errors=True)
    if args.target == "train":
        train_kills(args, work)
    else:
        analysis_kills(args, work)


def train_kills(args, work: Path) -> None:
    """SIGKILL the trainer ``args.kills`` times, resume, compare with the uninterrupted run."""
    t0 = time.time()
    subprocess.run(command(work / "clean", resume=False), cwd=ROOT, env=env(), check=True, capture_output=True)
    clean_seconds = time.time() - t0
    reference = final_params(work / "clean")
    rng = np.random.default_rng(args.seed)
    crashed, attempts = work / "crashed", []
    while sum(a["killed"] is not None for a in attempts) < args.kills:
        mode = "checkpoint" if len(attempts) % 2 else "random"
        a = attempt(crashed, rng, mode, max_delay=clean_seconds)
        root = crashed / "checkpoints"
        a["complete_checkpoints"] = [p.name for _, p in list_checkpoints(root)]
        # a checkpoint listed under its final name must verify: a half-written one never looks complete
        a["unverified_listed"] = [p.name for _, p in list_checkpoints(root) if verify(p) is not None]
        attempts.append(a)
        print(json.dumps(a), flush=True)
        if a["killed"] is None and a["returncode"] == 0:
            break  # the run finished before the kill: start counting again on a fresh folder
    finish = subprocess.run(command(crashed, resume=True), cwd=ROOT, env=env(), capture_output=True, text=True)
    got = final_params(crashed)
    equal = set(got) == set(reference) and all(np.array_equal(got[k], reference[k]) for k in reference)
    result = {"kills": sum(a["killed"] is not None for a in attempts),
              "kills_during_checkpoint_write": sum(bool(a["killed"] and a["killed"]["during_checkpoint_write"])
                                                   for a in attempts),
              "final_parameters_equal_uninterrupted": equal,
              "max_abs_difference": float(max(np.abs(got[k] - reference[k]).max() for k in reference)),
              "any_unverified_checkpoint_listed": any(a["unverified_listed"] for a in attempts),
              "finish_returncode": finish.returncode, "attempts": attempts,
              "uninterrupted_seconds": round(clean_seconds, 1), "config": str(CONFIG.relative_to(ROOT)),
              "overrides": OVERRIDES}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "attempts"}, indent=2))



# --- record and trajectory ------------------------------------------------------------------------------------------

ORGANISM = ROOT / "rl" / "assets" / "organism"
#: the run record and trajectory read: 4 smoke steps, a checkpoint every 2
RUN_OVERRIDES = ["stages.0.steps=4", "checkpoint.every=2"]
OUTPUTS = {"record": ["base.zarr", "rl.zarr", "base_noise.zarr"], "trajectory": ["trajectory.nc"]}


def analysis_command(target: str, work: Path, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "analyses.cli", target, "--base", str(ORGANISM), "--out", str(out)]
    if target == "record":
        return cmd + ["--rl", str(work / "run"), "--n-per-cell", "1"]
    return cmd + ["--run", str(work / "run"), "--recordings", str(work / "reference-record"), "--n-boot", "20"]


def _values(ds: xr.Dataset) -> dict[str, np.ndarray]:
    return {k: np.asarray(v.values) for k, v in {**ds.data_vars, **ds.coords}.items()}


def _equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return set(a) == set(b) and all(a[k].shape == b[k].shape and
                                    (np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f")) for k in a)


def inspect(target: str, out: Path, reference: dict[str, dict[str, np.ndarray]]) -> dict:
    """Open every output of ``target`` in ``out`` with verification: equal to the reference, refused, or wrong."""
    state: dict = {"equal": [], "refused": {}, "silently_wrong": [], "absent": []}
    for name in OUTPUTS[target]:
        path = out / name
        if not path.exists():
            state["absent"].append(name)
            continue
        try:
            got = _values(adt_probe.open(path).load())
        except (adt_probe.SchemaError, OSError) as err:
            state["refused"][name] = str(err)[:200]
            continue
        (state["equal"] if _equal(got, reference[name]) else state["silently_wrong"]).append(name)
    state["temporaries"] = sorted(p.name for p in out.rglob("*") if ".tmp-" in p.name) if out.is_dir() else []
    return state


def temporaries(out: Path) -> set[str]:
    """Names of save temporaries directly in ``out``."""
    return {p.name for p in out.iterdir() if ".tmp-" in p.name} if out.is_dir() else set()


def kill_analysis(target: str, work: Path, out: Path, rng: np.random.Generator, mode: str, seconds: float) -> dict:
    """Start ``target`` on ``out`` and SIGKILL it after a random delay ("random") or inside a save ("save")."""
    proc = subprocess.Popen(analysis_command(target, work, out), cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    delay = float(rng.uniform(0.4, 1.0) * seconds) if mode == "random" else None
    stale = temporaries(out)  # left by an earlier kill: only a new one means a save is under way

    def saving() -> bool:
        return mode == "save" and bool(temporaries(out) - stale)

    hit = kill_when(proc, delay, saving)
    killed = hit and {"mode": mode, "after_s": hit[0], "during_save": hit[1]}
    err = proc.communicate()[1]
    return {"killed": killed, "returncode": proc.returncode, "stderr_tail": err.strip().splitlines()[-1:]}


def analysis_kills(args, work: Path) -> None:
    """Kill ``record`` or ``trajectory`` ``args.kills`` times, check what each kill left, finish, compare."""
    subprocess.run(command(work / "run", resume=False) + [a for o in RUN_OVERRIDES for a in ("--set", o)],
                   cwd=ROOT, env=env(), check=True, capture_output=True)
    if args.target == "trajectory":
        subprocess.run(analysis_command("record", work, work / "reference-record"), cwd=ROOT, env=env(), check=True,
                       capture_output=True)
    t0 = time.time()
    subprocess.run(analysis_command(args.target, work, work / "reference"), cwd=ROOT, env=env(), check=True,
                   capture_output=True)
    seconds = time.time() - t0
    reference = {name: _values(adt_probe.open(work / "reference" / name).load()) for name in OUTPUTS[args.target]}
    rng, out, attempts = np.random.default_rng(args.seed), work / "crashed", []
    while sum(a["killed"] is not None for a in attempts) < args.kills and len(attempts) < 3 * args.kills:
        a = kill_analysis(args.target, work, out, rng, "save" if len(attempts) % 2 else "random", seconds)
        a["after"] = inspect(args.target, out, reference)
        attempts.append(a)
        print(json.dumps(a), flush=True)
    finish = subprocess.run(analysis_command(args.target, work, out), cwd=ROOT, env=env(), capture_output=True,
                            text=True)
    final = inspect(args.target, out, reference)
    result = {"target": args.target, "kills": sum(a["killed"] is not None for a in attempts),
              "kills_during_save": sum(bool(a["killed"] and a["killed"]["during_save"]) for a in attempts),
              "outputs_refused_after_a_kill": sum(len(a["after"]["refused"]) for a in attempts),
              "outputs_silently_wrong_after_a_kill": sum(len(a["after"]["silently_wrong"]) for a in attempts),
              "finish_returncode": finish.returncode, "finish_stderr_tail": finish.stderr.strip().splitlines()[-3:],
              "final_outputs_equal_uninterrupted": final["equal"] == OUTPUTS[args.target],
              "temporaries_left_after_finish": final["temporaries"], "uninterrupted_seconds": round(seconds, 1),
              "command": " ".join(analysis_command(args.target, work, out)[2:]), "attempts": attempts}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "attempts"}, indent=2))


if __name__ == "__main__":
    main()
