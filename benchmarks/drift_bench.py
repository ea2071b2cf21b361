"""Gating drift at the real model's size, streamed from zarr: throughput and peak memory, in one process and on a
pool of worker processes (1 and 2 workers).

    python -m benchmarks.drift_bench [--tokens 200000] [--workers 1 2] [--data DIR] [--out results/drift.json]

Two synthetic top-k recordings shaped like Qwen3-Omni-30B-A3B's thinker (48 MoE layers, 128 experts, top-8) are
written to zarr chunk by chunk (the RL one is the base with perturbed router logits; ``--data`` keeps them for the
next run), then ``gating_drift`` reads them lazily in a fresh subprocess per row that reports its wall time and peak
RSS (``VmHWM``, see benchmarks/memory.py):

- in one process (``client=None``: blocks read once, the next one prefetched while this one is computed);
- on ``--workers`` worker processes: a ``dask.distributed`` ``LocalCluster(n_workers=k, threads_per_worker=1,
  processes=True)`` when ``distributed`` is installed (the path to many machines), otherwise a
  ``concurrent.futures.ProcessPoolExecutor`` running the same block tasks. Start-up is timed apart; each worker's
  peak RSS is reported; the result must be identical to the in-process one.

The machine's load average is recorded beside each row: on a shared machine the scaling from 1 to 2 workers is
bounded by the cores that are free.
"""

from __future__ import annotations

import argparse
import json
import os
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
    import zarr

    from adt_probe.storage import ZARR_FORMAT  # the library's own format (zarr 3 warns on its string dtypes)
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
                ds.to_zarr(path, mode="w", encoding=encoding, consolidated=False, zarr_format=ZARR_FORMAT)
            else:
                ds.drop_vars(["layer", "expert", "k", "moe_layer"]).to_zarr(path, append_dim="token",
                                                                            consolidated=False)
    for path in paths:
        zarr.consolidate_metadata(str(path))
    return paths


def _pool(workers: int):
    """(client, backend name, workers' peak RSS function, close) for ``workers`` local worker processes."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
        list(pool.map(_warm, range(2 * workers)))  # start the workers and import drift there

        def peaks() -> list[tuple[float, float]]:
            return [(_proc_peak_mb(pid), _proc_cpu_s(pid)) for pid in pool._processes]

        return pool, "concurrent.futures.ProcessPoolExecutor (spawn; dask.distributed not installed)", peaks, \
            pool.shutdown
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    client.run(_warm, 0)

    def close() -> None:
        client.close()
        cluster.close()

    return client, "dask.distributed LocalCluster (processes, 1 thread each)", \
        lambda: list(client.run(lambda: (peak_rss_mb(), time.process_time())).values()), close


def _warm(_: int) -> int:
    import adt_probe.drift  # noqa: F401

    time.sleep(0.2)
    return os.getpid()


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(base: str, rl: str, n_boot: int, workers: int = 0, save: str | None = None) -> dict:
    """Run in a fresh process: open lazily, compute drift (here, or on ``workers`` worker processes), report time
    and peak RSS."""
    import adt_probe
    from adt_probe.drift import gating_drift

    row: dict = {"workers": workers, "load_average_before": os.getloadavg()[0]}
    client = close = peaks = None
    if workers:
        t = time.perf_counter()
        client, row["backend"], peaks, close = _pool(workers)
        row["startup_seconds"] = time.perf_counter() - t
    cpu_before = [cpu for _, cpu in peaks()] if workers else None
    t, cpu = time.perf_counter(), time.process_time()
    a, b = adt_probe.open(base, verify=False), adt_probe.open(rl, verify=False)
    drift = gating_drift(a, b, n_boot=n_boot, client=client)
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    row.update(seconds=seconds, cpu_seconds=cpu, peak_rss_mb=peak_rss_mb(), tokens=int(a.sizes["token"]),
               token_layers_per_s=a.sizes["token"] * LAYERS / seconds, load_average_after=os.getloadavg()[0])
    if workers:
        after = peaks()
        row["worker_peak_rss_mb"] = [peak for peak, _ in after]
        row["worker_cpu_seconds"] = [c - c0 for (_, c), c0 in zip(after, cpu_before)]
        close()
    js = drift.js.sel(segment="all").values
    row.update(js_lower_half=float(np.nanmean(js[: LAYERS // 2])), js_upper_half=float(np.nanmean(js[LAYERS // 2:])))
    if save:
        drift.to_netcdf(save)
    return row


def _run(base: Path, rl: Path, n_boot: int, workers: int, save: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.drift_bench", "--n-boot", str(n_boot), "--measure",
                           str(base), str(rl), str(workers), str(save)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"the measuring process failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="worker-process rows (none: skip them)")
    ap.add_argument("--data", help="folder for the two stores, kept and reused when they hold --tokens tokens")
    ap.add_argument("--out", default="benchmarks/results/drift.json")
    ap.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        base, rl, workers, save = args.measure
        print(json.dumps(measure(base, rl, args.n_boot, int(workers), save)))
        return
    import xarray as xr

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.data or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        base, rl = folder / "base.zarr", folder / "rl.zarr"
        reuse = args.data and all((p / "zarr.json").exists() or (p / ".zmetadata").exists() for p in (base, rl)) \
            and xr.open_zarr(base).sizes["token"] == args.tokens
        if not reuse:
            base, rl = write_pair(folder, args.tokens)
        write_s = time.perf_counter() - t
        result = _run(base, rl, args.n_boot, 0, Path(tmp) / "in_process.nc")
        reference = xr.open_dataset(Path(tmp) / "in_process.nc").load()
        rows = []
        for k in args.workers:
            row = _run(base, rl, args.n_boot, k, Path(tmp) / f"workers{k}.nc")
            row["identical_to_in_process"] = bool(xr.open_dataset(Path(tmp) / f"workers{k}.nc").load().identical(
                reference))
            rows.append(row)
        result.update(write_seconds=None if reuse else write_s, layers=LAYERS, experts=EXPERTS, top_k=TOP_K,
                      n_boot=args.n_boot, cores=os.cpu_count(),
                      store_mb=sum(f.stat().st_size for p in (base, rl) for f in p.rglob("*") if f.is_file()) / 1e6,
                      parallel=rows)
        by_k = {r["workers"]: r["seconds"] for r in rows}
        if 1 in by_k and 2 in by_k:
            result["speedup_1_to_2_workers"] = by_k[1] / by_k[2]
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
