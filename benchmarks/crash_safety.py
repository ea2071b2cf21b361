"""Crash safety: SIGKILL the GRPO trainer at random moments (some while a checkpoint is being written), resume each
time, and compare the final parameters with an uninterrupted run's.

    python -m benchmarks.crash_safety --kills 10            # about 3 minutes on 2 cores

Each attempt starts ``python -m rl.train.grpo --resume`` on the same output folder and kills it with SIGKILL
either after a
random delay or the moment a temporary checkpoint folder (``.tmp-step-*``) appears, i.e. in the middle of a
checkpoint write. After each kill it checks that no half-written checkpoint is listed as complete. Once ``--kills``
kills landed, the run is resumed to the end. Writes ``benchmarks/results/crash_safety.json``: the kills, the
resume log lines, and whether the final parameters equal the uninterrupted run's bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

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
    from rl.train.checkpoint import list_checkpoints

    return load_file(str(list_checkpoints(out / "checkpoints")[-1][1] / "model.safetensors"))


def attempt(out: Path, rng: np.random.Generator, mode: str, max_delay: float) -> dict:
    """Start a resuming run and kill it (mode "random": after a random delay; "checkpoint": inside a save)."""
    from rl.train.checkpoint import list_checkpoints

    root = out / "checkpoints"
    def newest() -> int:
        found = list_checkpoints(root)
        return found[-1][0] if found else -1

    before = newest()
    proc = subprocess.Popen(command(out, resume=True), cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    t0, delay, killed = time.time(), float(rng.uniform(2.0, 0.6 * max_delay)), None
    while proc.poll() is None:
        elapsed = time.time() - t0
        # "checkpoint": kill inside the second save of this attempt (after one more step got saved, so the run moves on)
        writing = (mode == "checkpoint" and root.is_dir() and newest() > before
                   and any(p.name.startswith(".tmp-") for p in root.iterdir()))
        if (mode == "random" and elapsed >= delay) or writing:
            proc.send_signal(signal.SIGKILL)
            killed = {"mode": mode, "after_s": round(elapsed, 3), "during_checkpoint_write": writing}
            break
        time.sleep(0.002)
    output = proc.communicate()[0]
    return {"killed": killed, "returncode": proc.returncode,
            "resume_lines": [ln for ln in output.splitlines() if "resuming" in ln or "skipping" in ln
                             or "removing incomplete" in ln or "no complete checkpoint" in ln]}


def main(argv=None) -> None:
    from rl.train.checkpoint import list_checkpoints, verify

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/adt-probe-crash")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "crash_safety.json"))
    args = ap.parse_args(argv)
    work = Path(args.work)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
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


if __name__ == "__main__":
    main()
