"""Gating drift at the real model's size, streamed from zarr: peak memory and throughput.

    python -m benchmarks.drift_bench [--tokens 200000] [--out benchmarks/results/drift.json]

Two synthetic top-k recordings shaped like Qwen3-Omni-30B-A3B's thinker (48 MoE layers, 128 experts, top-8) are
written to zarr chunk by chunk (the RL one is the base with perturbed router logits), then ``gating_drift`` reads
them lazily in a fresh subprocess that reports its wall time and peak RSS (``VmHWM``, see benchmarks/memory.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.memory import peak_rss_mb

LAYERS, EXPERTS, TOP_K, SEQ_LEN = 48, 128, 8, 1000


def write_pair(folder: Path, n_tokens: int, chunk: int = 10_000) -> tuple[Path, Path]:
    """Write base.zarr and rl.zarr (top-k only) of ``n_tokens`` tokens, ``chunk`` tokens at a time."""
    from adt_probe.testing import synthetic_recording

    paths = folder / "base.zarr", folder / "rl.zarr"
    rng = np.random.default_rng(0)
    for start in range(0, n_tokens, chunk):
        n = min(chunk, n_tokens - start)
        logits = rng.standard_normal((n, LAYERS, EXPERTS)).astype(np.float32) * 2
        # RL: upper layers (24+) perturbed more than lower ones
        delta = rng.standard_normal((n, LAYERS, EXPERTS)).astype(np.float32) * np.linspace(0.1, 1.5, LAYERS)[:, None]
        for path, z in zip(paths, (logits, logits + delta)):
            ds = synthetic_recording(n_sequences=n // SEQ_LEN, seq_len=SEQ_LEN, n_layers=LAYERS, n_experts=EXPERTS,
                                     top_k=TOP_K, logits=z, full=False, lens=False, seed=1)
            ds = ds.assign_coords(token=np.arange(start, start + n),
                                  sequence=("token", start // SEQ_LEN + np.repeat(np.arange(n // SEQ_LEN), SEQ_LEN)))
            encoding = {v: {"chunks": (8192, LAYERS, TOP_K)} for v in ("topk_experts", "topk_weights")}
            if start == 0:
                ds.to_zarr(path, mode="w", encoding=encoding, consolidated=False)
            else:
                ds.drop_vars(["layer", "expert", "k", "moe_layer"]).to_zarr(path, append_dim="token",
                                                                            consolidated=False)
    for path in paths:
        import zarr

        zarr.consolidate_metadata(str(path))
    return paths


def measure(base: str, rl: str, n_boot: int) -> dict:
    """Run in a fresh process: open lazily, compute drift, report time and peak RSS."""
    import adt_probe
    from adt_probe.drift import gating_drift

    t = time.perf_counter()
    a, b = adt_probe.open(base, verify=False), adt_probe.open(rl, verify=False)
    drift = gating_drift(a, b, n_boot=n_boot)
    seconds = time.perf_counter() - t
    js = drift.js.sel(segment="all").values
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(),
            "tokens": int(a.sizes["token"]), "token_layers_per_s": a.sizes["token"] * LAYERS / seconds,
            "js_lower_half": float(np.nanmean(js[: LAYERS // 2])), "js_upper_half": float(np.nanmean(js[LAYERS // 2:]))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/results/drift.json")
    ap.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(*args.measure, args.n_boot)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        base, rl = write_pair(Path(tmp), args.tokens)
        write_s = time.perf_counter() - t
        proc = subprocess.run([sys.executable, "-m", "benchmarks.drift_bench", "--n-boot", str(args.n_boot),
                               "--measure", str(base), str(rl)], capture_output=True, text=True, check=True)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result.update(write_seconds=write_s, layers=LAYERS, experts=EXPERTS, top_k=TOP_K, n_boot=args.n_boot,
                      store_mb=sum(f.stat().st_size for p in (base, rl) for f in p.rglob("*") if f.is_file()) / 1e6)
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
