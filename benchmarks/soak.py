"""Soak: a long GRPO run on the organism with its memory sampled every few seconds; does it grow after warm-up?

    python -m benchmarks.soak --minutes 30          # what the README reports

Trains with ``rl/configs/smoke.toml`` (hybrid reward, so the judge and the embedding model are in the loop too)
for as many steps as fit in ``--minutes``, a checkpoint every 10 steps (keep 2), and samples the training process's
resident set size (``/proc/PID/status`` VmRSS) every ``--every`` seconds. Reports the RSS after warm-up (the first
``--warmup`` minutes), at the end, the growth between them and the least-squares slope in MB per hour. Writes
``benchmarks/results/soak.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "rl" / "configs" / "smoke.toml"
OVERRIDES = ["stages.0.steps=100000", "checkpoint.every=10", "checkpoint.keep_last=2", "stages.0.data.n_items=256",
             "stages.0.data.difficulties=[\"easy\", \"medium\"]", "logging.progress_bar=false",
             "stages.0.rewards={accuracy = 1.0, format = 0.25, hybrid_reasoning = 1.0}"]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=3.0, help="minutes before memory counts as warmed up")
    ap.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--work", default="/tmp/adt-probe-soak")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak.json"))
    args = ap.parse_args(argv)
    shutil.rmtree(args.work, ignore_errors=True)
    cmd = [sys.executable, "-m", "rl.train.grpo", "--config", str(CONFIG), "--out", args.work]
    for o in OVERRIDES:
        cmd += ["--set", o]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0, samples = time.time(), []
    try:
        while time.time() - t0 < args.minutes * 60 and proc.poll() is None:
            mb = rss_mb(proc.pid)
            if mb is not None:
                samples.append((time.time() - t0, mb))
            time.sleep(args.every)
    finally:
        proc.kill()
        err = proc.communicate()[1]
    if proc.returncode not in (None, -9, 0) and len(samples) < 3:
        raise SystemExit(f"the training run failed:\n{err[-2000:]}")
    log = Path(args.work) / "log.jsonl"
    steps = len(log.read_text().splitlines()) if log.exists() else 0
    t, mb = np.array(samples).T
    warm = t >= args.warmup * 60
    slope = float(np.polyfit(t[warm] / 3600, mb[warm], 1)[0]) if warm.sum() > 2 else float("nan")
    result = {"minutes": round(float(t[-1]) / 60, 1), "steps": steps, "samples": len(samples),
              "rss_mb_after_warmup": round(float(mb[warm][0]), 1), "rss_mb_end": round(float(mb[-1]), 1),
              "rss_mb_max": round(float(mb.max()), 1),
              "growth_after_warmup_mb": round(float(mb[-1] - mb[warm][0]), 1),
              "slope_mb_per_hour_after_warmup": round(slope, 1), "warmup_minutes": args.warmup,
              "config": str(CONFIG.relative_to(ROOT)), "overrides": OVERRIDES,
              "trace": [[round(float(a), 1), round(float(b), 1)] for a, b in samples]}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "trace"}, indent=2))
    return result


if __name__ == "__main__":
    main()
