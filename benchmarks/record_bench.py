"""Cost of ``adt_probe.record`` against its floors and against TransformerLens, side by side in one run.

    python -m benchmarks.record_bench [--models organism smollm2] [--repeats 3] [--methods ...] [--no-memory]
                                      [--out benchmarks/results/record.json]

Time: every method runs in one process, interleaved, ``--repeats`` times; the table shows medians and the ratio to
the method's floor. Peak memory: each method runs once more in a fresh subprocess, which reports its peak RSS
(``VmHWM``, see benchmarks/memory.py) and its RSS with the model resident (after loading it and a 4-token forward, which
faults in the memory-mapped weights); the method's extra memory is the difference.
The first call of each method is a warm-up (kernels allocate, and the fused lens statistics compile: its seconds are
reported as ``warmup_s``). Each timed call's minor page faults are counted too (``faults``): glibc's malloc returns
large freed blocks to the system and adapts its mmap threshold to what the process freed before, so how many fresh
pages a call touches depends on the process' history (the organism's plain forward: 0 to 3,552 faults per call in
separate processes; 125,000 with only ``MALLOC_TRIM_THRESHOLD_`` set). ``--pin-allocator`` reruns the benchmark with
``PINNED_ALLOCATOR`` in the environment (no mmap'd blocks, no trimming): every method then reuses its pages.

Methods (2,048 tokens: 4 sequences x 512):
  forward          plain ``model(**inputs)`` under no_grad (floor of routing-only recording)
  record_routing   ``record(routing="topk", lens=None)``
  floor_lens       forward with hidden states (final logits of the last position only, where the model allows it)
                   + one unembedding per layer into a reused buffer: the strict floor of any per-layer lens
  floor_lens_plain the same with each unembedding into a fresh tensor, as ``unembed(norm(h))`` is usually written
  record_lens      ``record(routing="topk", lens=LogitLens())``
  record_lens_eager the same with ``RecordOptions(fused=False)`` (the statistics unfused)
  tl_lens          TransformerLens ``run_with_cache`` + the same lens statistics on its cached residuals
  record_lens_25   ``record(lens=LogitLens(), options=RecordOptions(lens_segments=["think"]))`` with a quarter of the
                   tokens labelled think
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import adt_probe
from adt_probe import LogitLens, RecordOptions
from adt_probe.lens import chunk_slices, default_chunk_tokens, lens_statistics
from benchmarks.memory import peak_rss_mb, rss_mb

METHODS = ("forward", "record_routing", "floor_lens", "floor_lens_plain", "record_lens", "record_lens_eager", "tl_lens",
           "record_lens_25")
N_SEQ, SEQ_LEN = 4, 512
#: ``--pin-allocator``: glibc's malloc keeps every freed block (it reads these when the process starts)
PINNED_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**30)}


def load(name: str, n_seq: int = N_SEQ):
    """(model, input dict) for the benchmark: the shipped organism or SmolLM2-135M, ``n_seq`` x 512 tokens."""
    gen = torch.Generator().manual_seed(0)
    if name == "organism":
        from rl.organism import load_organism

        model, processor = load_organism()
        vocab = model.config.text_config.vocab_size
    else:
        from rl.judge.packaged import load_smollm2

        model, _ = load_smollm2()
        vocab = model.config.vocab_size
    ids = torch.randint(0, vocab - 20, (n_seq, SEQ_LEN), generator=gen)
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def run(method: str, model, inputs, bridge=None) -> None:
    """One call of ``method`` on the model and inputs (``bridge``: TransformerLens' bridge for ``tl_lens``)."""
    spec = adt_probe.architecture(model)
    n_seq = inputs["input_ids"].shape[0]
    options = RecordOptions(batch_size=n_seq)
    with torch.no_grad():
        if method == "forward":
            model(**inputs, use_cache=False)
        elif method == "record_routing":
            adt_probe.record(model, inputs, routing="topk", lens=None, options=options)
        elif method in ("floor_lens", "floor_lens_plain"):
            # The same chunks as record's lens; the strict floor writes each into one reused buffer, the plain one
            # allocates a fresh tensor each time, as a user would write it.
            keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
            hidden = model(**inputs, use_cache=False, output_hidden_states=True, **keep).hidden_states[1:]
            norm, unembed = adt_probe.get_module(model, spec.final_norm), adt_probe.get_module(model, spec.unembed)
            chunk_tokens = default_chunk_tokens(unembed.weight.shape[0])
            z = torch.empty(chunk_tokens, unembed.weight.shape[0]) if method == "floor_lens" else None
            for h in hidden:
                flat = h.reshape(-1, h.shape[-1])
                for chunk in (flat[sl] for sl in chunk_slices(len(flat), chunk_tokens)):
                    if z is None:
                        unembed(norm(chunk))
                    else:
                        torch.mm(norm(chunk), unembed.weight.T, out=z[: len(chunk)])
        elif method in ("record_lens", "record_lens_eager"):
            fused = None if method == "record_lens" else False
            adt_probe.record(model, inputs, routing="topk", lens=LogitLens(),
                             options=RecordOptions(batch_size=n_seq, fused=fused))
        elif method == "record_lens_25":
            segments = np.full(tuple(inputs["input_ids"].shape), "other", dtype="<U6")
            segments[:, : SEQ_LEN // 4] = "think"
            adt_probe.record(model, inputs, routing="topk", lens=LogitLens(), segments=segments,
                             options=RecordOptions(batch_size=n_seq, lens_segments=["think"]))
        elif method == "tl_lens":
            _, cache = bridge.run_with_cache(inputs["input_ids"])
            n_layers = len(adt_probe.get_module(model, spec.layers))
            resid = [cache[f"blocks.{i}.hook_out"].reshape(-1, cache[f"blocks.{i}.hook_out"].shape[-1])
                     for i in range(n_layers)]
            targets = torch.cat([inputs["input_ids"][:, 1:], torch.full((n_seq, 1), -1)], 1).reshape(-1)
            lens_statistics(resid, targets, spec, model)
        else:
            raise ValueError(method)


def boot_bridge(model, name: str):
    """TransformerLens' bridge around the same weights (None for the organism, which it does not support)."""
    if name == "organism":
        return None
    import transformer_lens.model_bridge.sources.transformers.helpers as tl_helpers
    from transformer_lens.model_bridge import TransformerBridge

    from rl.judge.packaged import packaged_folder

    tl_helpers._ensure_torchvision = lambda: False  # it would pip-install torchvision over the pinned torch
    path = packaged_folder("smollm2")
    from transformers import AutoTokenizer

    return TransformerBridge.boot_transformers(str(path), hf_model=model, tokenizer=AutoTokenizer.from_pretrained(path))


def methods_for(name: str, chosen: list[str] | None = None) -> list[str]:
    return [m for m in (chosen or METHODS) if not (name == "organism" and m == "tl_lens")]


def one(name: str, method: str, threads: int, n_seq: int) -> dict:
    """Run one method once in this (fresh) process and report peak RSS; used by the memory pass."""
    torch.set_num_threads(threads)
    model, inputs = load(name, n_seq)
    bridge = boot_bridge(model, name) if method == "tl_lens" else None
    loaded = peak_rss_mb()
    # The weights load as a memory map whose pages fault in on first use: a 4-token forward makes them resident, so
    # that the extra memory is the method's own (SmolLM2: 546 MB after loading, 1,052 MB after that forward)
    with torch.no_grad():
        model(input_ids=inputs["input_ids"][:1, :4])
    resident = rss_mb()
    t = time.perf_counter()
    run(method, model, inputs, bridge)
    return {"seconds": time.perf_counter() - t, "rss_after_load_mb": loaded, "rss_resident_mb": resident,
            "peak_rss_mb": peak_rss_mb()}


def minor_faults() -> int:
    """Minor page faults of this process so far (a fresh page touched for the first time)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timing(name: str, repeats: int, methods: list[str] | None = None, threads: int = 2, n_seq: int = N_SEQ
           ) -> tuple[dict[str, list[float]], dict, dict[str, list[int]]]:
    """Seconds of each method per repeat, interleaved in this process, the warm-up seconds of each (on half the
    sequences: it loads lazily imported modules and compiles the fused statistics, which ``fused=None`` chooses by
    size: a warm-up on 128 tokens took the eager path, and SmolLM2's first timed call then compiled), and the minor
    page faults of each timed call."""
    torch.set_num_threads(threads)
    model, inputs = load(name, n_seq)
    small = {k: v[: max(1, n_seq // 2)] for k, v in inputs.items()}
    chosen = methods_for(name, methods)
    # TransformerLens' bridge replaces the model's modules in place (lm_head becomes an UnembeddingBridge), which
    # would put every other method on its wrappers: it gets a copy of its own (the memory pass runs it alone)
    bridge = boot_bridge(load(name, n_seq)[0], name) if "tl_lens" in chosen else None
    times: dict[str, list[float]] = {m: [] for m in chosen}
    warmup = {}
    for m in times:  # warm-up: first calls allocate and compile kernels
        t = time.perf_counter()
        run(m, model, small, bridge)
        warmup[m] = time.perf_counter() - t
    faults: dict[str, list[int]] = {m: [] for m in chosen}
    for _ in range(repeats):
        for m in times:
            t, f = time.perf_counter(), minor_faults()
            run(m, model, inputs, bridge)
            times[m].append(time.perf_counter() - t)
            faults[m].append(minor_faults() - f)
    return times, warmup, faults


FLOOR = {"forward": None, "record_routing": "forward", "floor_lens": None, "floor_lens_plain": "floor_lens",
         "record_lens": "floor_lens", "record_lens_eager": "floor_lens", "tl_lens": "floor_lens",
         "record_lens_25": "record_lens"}


def timed_rows(name: str, args) -> dict[str, dict]:
    """One row per method: the median and every repeat's seconds, the warm-up, the load and page faults."""
    times, warmup, faults = timing(name, args.repeats, args.methods, args.threads, args.sequences)
    return {m: {"median_s": statistics.median(ts), "all_s": ts, "warmup_s": warmup[m],
                "load_1min": os.getloadavg()[0], "faults": faults[m]} for m, ts in times.items()}


def memory_row(name: str, method: str, args) -> dict:
    """``method``'s peak RSS from a fresh process (see ``one``), and its extra memory beyond the resident model."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.record_bench", "--one", name, method,
                           "--threads", str(args.threads), "--sequences", str(args.sequences)],
                          capture_output=True, text=True, check=True)
    mem = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**mem, "extra_mb": mem["peak_rss_mb"] - mem["rss_resident_mb"]}


def add_ratios(rows: dict[str, dict]) -> None:
    """Each timed row's ratio to its floor (``FLOOR``): of the medians, and the median of the per-round ratios (each
    round runs every method once, back to back, so a pair shares the machine's state of that moment: steadier than a
    ratio of medians for 0.2 s calls)."""
    for m, row in rows.items():
        floor = FLOOR[m]
        timed = "all_s" in row and floor in rows and "all_s" in rows[floor]
        row["ratio_to"] = floor
        row["ratio"] = row["median_s"] / rows[floor]["median_s"] if timed else None
        row["paired_ratio"] = (statistics.median(t / f for t, f in zip(row["all_s"], rows[floor]["all_s"]))
                               if timed else None)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["organism", "smollm2"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/record.json")
    ap.add_argument("--methods", nargs="+", choices=METHODS, help="a subset of the methods (default: all)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (1 on a shared machine: OpenMP threads that wait for a busy core spin)")
    ap.add_argument("--sequences", type=int, default=N_SEQ, help="sequences of 512 tokens")
    ap.add_argument("--no-memory", action="store_true", help="skip the fresh-process peak-memory pass")
    ap.add_argument("--memory-only", action="store_true", help="only the fresh-process peak-memory pass, no timing")
    ap.add_argument("--pin-allocator", action="store_true",
                    help="run with PINNED_ALLOCATOR in the environment: glibc keeps freed memory (see above)")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.pin_allocator and any(os.environ.get(k) != v for k, v in PINNED_ALLOCATOR.items()):
        # glibc reads them at start-up only: start again with them (the memory pass' subprocesses inherit them)
        argv = sys.argv[1:] if argv is None else list(argv)
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.record_bench", *argv],
                  {**os.environ, **PINNED_ALLOCATOR})
    if args.one:
        print(json.dumps(one(*args.one, args.threads, args.sequences)))
        return
    results = {}
    for name in args.models:
        rows = {} if args.memory_only else timed_rows(name, args)
        if not args.no_memory:
            for m in methods_for(name, args.methods):
                rows.setdefault(m, {}).update(memory_row(name, m, args))
        add_ratios(rows)
        results[name] = rows
        print(table(name, rows, args.sequences), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    allocator = {k: os.environ.get(k) for k in PINNED_ALLOCATOR}  # what this process started with
    out.write_text(json.dumps({"tokens": args.sequences * SEQ_LEN, "repeats": args.repeats, "threads": args.threads,
                               "allocator_env": allocator, "results": results}, indent=2) + "\n")


def table(name: str, rows: dict, n_seq: int = N_SEQ) -> str:
    """A Markdown table of one model's rows."""
    lines = [f"\n{name}, {n_seq} x {SEQ_LEN} tokens, medians",
             "| method | time (s) | repeats (s) | ratio (paired) | vs | page faults per call | peak RSS (MB) "
             "| beyond resident model (MB) |",
             "|---|---|---|---|---|---|---|---|"]
    for m, r in rows.items():
        ratio = f"{r['ratio']:.2f}x ({r['paired_ratio']:.2f}x)" if r["ratio"] else ""
        spread = ", ".join(f"{t:.2f}" for t in r.get("all_s", []))
        median = f"{r['median_s']:.3f}" if "median_s" in r else ""
        mem = f"{r['peak_rss_mb']:.0f} | {r['extra_mb']:.0f}" if "peak_rss_mb" in r else " | "
        faults = f"{statistics.median(r['faults']):,.0f}" if r.get("faults") else ""
        lines.append(f"| {m} | {median} | {spread} | {ratio} | {r['ratio_to'] or ''} | {faults} | {mem} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
