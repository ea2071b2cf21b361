"""Every target of the speed issue (#20) measured in one run, beside the figures measured when the issue was filed.

    python -m benchmarks.speed_report [--out benchmarks/results/speed_report] [--only record_organism help ...]
    python -m benchmarks.speed_report --report-only      # the table again from the JSON files already in --out

Runs the benchmarks one after another (18 minutes on the quiet 2-core machine, 5 December 2026; anything else
running moves the ratios), each writing its JSON into ``--out``:

==================  ==========================================================================================
record_smollm2      ``record_bench --models smollm2``: forward, routing, strict floor, ``record`` with the logit
                    lens, TransformerLens ``run_with_cache`` + the same lens; 3 repeats interleaved, then each
                    method's peak RSS in a fresh process (2,048 tokens)
record_organism     ``record_bench --models organism``: the same without TransformerLens (it does not support the
                    Qwen3-Omni thinker), 21 repeats (0.2 s calls need more), no memory pass
memory_4096         ``record_bench --models smollm2 --sequences 8 --memory-only``: ``record`` and TransformerLens
                    peak RSS at 4,096 tokens
grpo                ``grpo_bench --models llama moe``: completions/s of ``rl/train/grpo.py`` and
                    ``trl.GRPOTrainer``, alternating, 3 repeats, and our step's phases
drift               ``drift_bench``: gating drift on a 200k-token, 48-layer, 128-expert, top-8 synthetic pair, in
                    one process and on 1 and 2 worker processes
help                every ``adt-probe ... --help`` in a fresh interpreter, 5 times each
==================  ==========================================================================================

then writes ``report.md`` (one row per target: at filing, now, met) and ``report.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STEPS: dict[str, list[str]] = {
    "record_smollm2": ["benchmarks.record_bench", "--models", "smollm2", "--repeats", "3", "--methods", "forward",
                       "record_routing", "floor_lens", "record_lens", "tl_lens"],
    "record_organism": ["benchmarks.record_bench", "--models", "organism", "--repeats", "21", "--no-memory",
                        "--methods", "forward", "record_routing", "floor_lens", "record_lens"],
    "memory_4096": ["benchmarks.record_bench", "--models", "smollm2", "--sequences", "8", "--memory-only",
                    "--methods", "record_lens", "tl_lens"],
    "grpo": ["benchmarks.grpo_bench", "--models", "llama", "moe", "--repeats", "3"],
    "drift": ["benchmarks.drift_bench"],
}
HELP_REPEATS = 5


def run_step(name: str, folder: Path, help_repeats: int = HELP_REPEATS) -> float:
    """Run one benchmark of ``STEPS`` (or the --help timing) with its JSON written to ``folder/name.json``; seconds."""
    t = time.perf_counter()
    if name == "help":
        (folder / "help.json").write_text(json.dumps(help_seconds(help_repeats), indent=2) + "\n")
    else:
        subprocess.run([sys.executable, "-m", *STEPS[name], "--out", str(folder / f"{name}.json")], cwd=ROOT,
                       check=True)
    return time.perf_counter() - t


def help_seconds(repeats: int = HELP_REPEATS) -> dict[str, list[float]]:
    """Wall seconds of ``adt-probe --help`` and of every subcommand's ``--help``, each in a fresh interpreter."""
    from analyses.cli import COMMANDS

    script = Path(sys.executable).with_name("adt-probe")
    argvs = [["--help"], *([name, "--help"] for name in COMMANDS)]
    out: dict[str, list[float]] = {}
    for argv in argvs:
        key = " ".join(argv)
        out[key] = []
        for _ in range(repeats):
            t = time.perf_counter()
            subprocess.run([str(script), *argv], capture_output=True, check=True)
            out[key].append(time.perf_counter() - t)
    return out


@dataclass(frozen=True)
class Target:
    """One line of the issue's targets: what it asks, what the issue measured when filed, and how to read it now."""

    name: str
    goal: str
    at_filing: str
    #: the measured figure (as text) and whether it meets the goal (None: no goal), from the JSON files by step name
    measure: Callable[[dict], tuple[str, bool | None]]


def _rows(results: dict, step: str, model: str) -> dict:
    return results[step]["results"][model]


def _spread(seconds: list[float]) -> str:
    """Every repeat when there are a few, else their range."""
    if len(seconds) <= 5:
        return ", ".join(f"{t:.2f}" for t in seconds) + " s"
    return f"{min(seconds):.2f}-{max(seconds):.2f} s over {len(seconds)} repeats"


def _lens_ratio(step: str, model: str) -> Callable[[dict], tuple[str, bool]]:
    def measure(results: dict) -> tuple[str, bool]:
        row = _rows(results, step, model)["record_lens"]
        return (f"{row['ratio']:.2f}x (paired {row['paired_ratio']:.2f}x; record {_spread(row['all_s'])})",
                row["ratio"] <= 1.15)
    return measure


def _faster_than_tl(results: dict) -> tuple[str, bool]:
    rows = _rows(results, "record_smollm2", "smollm2")
    ours, tl = rows["record_lens"]["all_s"], rows["tl_lens"]["all_s"]
    text = f"record {', '.join(f'{t:.1f}' for t in ours)} s; TransformerLens {', '.join(f'{t:.1f}' for t in tl)} s"
    return text, max(ours) < min(tl)


def _routing(results: dict) -> tuple[str, bool]:
    row = _rows(results, "record_organism", "organism")["record_routing"]
    dense = _rows(results, "record_smollm2", "smollm2")["record_routing"]
    return (f"organism {row['ratio']:.2f}x (paired {row['paired_ratio']:.2f}x); SmolLM2 (dense) "
            f"{dense['ratio']:.2f}x", row["ratio"] <= 1.10)


def _memory(step: str, key: str) -> Callable[[dict], tuple[str, bool]]:
    def measure(results: dict) -> tuple[str, bool]:
        rows = _rows(results, step, "smollm2")
        ours, tl = rows["record_lens"][key], rows["tl_lens"][key]
        text = f"{tl / ours:.1f}x ({ours:,.0f} vs {tl:,.0f} MB"
        if key == "peak_rss_mb":  # both hold the resident model: the ratio can be no larger than TL over it
            text += f"; ceiling {tl / rows['record_lens']['rss_resident_mb']:.1f}x, TL over the resident model"
        return text + ")", tl / ours >= 8
    return measure


def _grpo(model: str, goal: float | None) -> Callable[[dict], tuple[str, bool | None]]:
    def measure(results: dict) -> tuple[str, bool | None]:
        r = results["grpo"]["models"][model]
        per_s = r["completions_per_second"]
        ratio = r["ratio_adt_probe_over_trl"]
        return (f"{ratio:.2f}x ({per_s['adt_probe']:.1f} vs {per_s['trl']:.1f} completions/s)",
                None if goal is None else ratio >= goal)
    return measure


def _drift(results: dict) -> tuple[str, bool]:
    r = results["drift"]
    text = f"{r['token_layers_per_s']:,.0f} token-layers/s, peak {r['peak_rss_mb']:,.0f} MB"
    if "speedup_1_to_2_workers" in r:
        text += f"; 1 -> 2 workers {r['speedup_1_to_2_workers']:.2f}x"
    return text, r["token_layers_per_s"] >= 200_000 and r["peak_rss_mb"] <= 1024


def _help(results: dict) -> tuple[str, bool]:
    medians = {k: statistics.median(v) for k, v in results["help"].items()}
    slowest = max(medians, key=medians.get)
    repeats = len(results["help"][slowest])
    return (f"slowest `adt-probe {slowest}` {medians[slowest]:.2f} s (median of {repeats}; "
            f"{len(medians)} commands)", medians[slowest] < 1.0)


TARGETS = (
    Target("lens, SmolLM2-135M", "<= 1.15x its strict floor", "1.40x; 1.91x on a second machine",
           _lens_ratio("record_smollm2", "smollm2")),
    Target("lens, organism", "<= 1.15x its strict floor", "not in the issue",
           _lens_ratio("record_organism", "organism")),
    Target("lens against TransformerLens", "faster in every repeat", "73.7 vs 66.9 s: slower (second machine)",
           _faster_than_tl),
    Target("routing-only recording", "<= 1.10x a plain forward", "1.13x", _routing),
    Target("peak memory, beyond the model", ">= 8x less than TransformerLens", "4.6x; 4.2x on a second machine",
           _memory("record_smollm2", "extra_mb")),
    Target("peak memory, in total, 2,048 tokens", ">= 8x less than TransformerLens", "not in the issue",
           _memory("record_smollm2", "peak_rss_mb")),
    Target("peak memory, in total, 4,096 tokens", ">= 8x less than TransformerLens", "not in the issue",
           _memory("memory_4096", "peak_rss_mb")),
    Target("GRPO, Qwen3-MoE 8 layers", ">= 2x trl.GRPOTrainer", "1.19x (14.4 vs 12.2)", _grpo("moe", 2.0)),
    Target("GRPO, toy Llama (kept beside)", "no target", "1.75x", _grpo("llama", None)),
    Target("gating drift, 200k tokens x 48 layers", ">= 200k token-layers/s, <= 1 GB",
           "72,100 token-layers/s, 1,015 MB", _drift),
    Target("--help", "< 1 s each", "not measured", _help),
)


def report(folder: Path) -> tuple[str, list[dict]]:
    """The Markdown table and its rows from the JSON files in ``folder`` (a target whose file is missing says so)."""
    results = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json") if p.stem != "report"}
    rows = []
    for t in TARGETS:
        try:
            measured, met = t.measure(results)
        except KeyError as missing:
            measured, met = f"not measured in this run ({missing} missing)", None
        rows.append({"target": t.name, "goal": t.goal, "at_filing": t.at_filing, "now": measured, "met": met})
    lines = ["| target | goal | at filing (issue 20) | now | |", "|---|---|---|---|---|"]
    lines += [f"| {r['target']} | {r['goal']} | {r['at_filing']} | {r['now']} | "
              f"{'' if r['met'] is None else 'met' if r['met'] else 'missed'} |" for r in rows]
    if "grpo" in results:
        lines += ["", "GRPO step phases, our loop, median seconds per step:", ""]
        for model, r in results["grpo"]["models"].items():
            phases = r["step_phases"]["adt_probe"]["median_seconds"]
            lines.append(f"- {model}: " + ", ".join(f"{k} {v:.3f}" for k, v in phases.items()))
    return "\n".join(lines) + "\n", rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed_report"))
    ap.add_argument("--only", nargs="+", choices=[*STEPS, "help"], help="run these steps only (default: all)")
    ap.add_argument("--help-repeats", type=int, default=HELP_REPEATS, help="times each --help is run")
    ap.add_argument("--report-only", action="store_true", help="run nothing: the table from the files in --out")
    args = ap.parse_args(argv)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    seconds = {}
    if not args.report_only:
        for name in args.only or [*STEPS, "help"]:
            print(f"== {name}", flush=True)
            seconds[name] = run_step(name, folder, args.help_repeats)
    text, rows = report(folder)
    (folder / "report.md").write_text(text)
    previous = json.loads((folder / "report.json").read_text()) if (folder / "report.json").exists() else {}
    (folder / "report.json").write_text(json.dumps(
        {"rows": rows, "step_seconds": {**previous.get("step_seconds", {}), **seconds}}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
