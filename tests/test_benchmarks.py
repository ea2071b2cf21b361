"""The benchmarks' own machinery (their figures are in the README, measured on a quiet machine, never here)."""

import json
import subprocess
import sys

import pytest

from benchmarks.record_bench import PINNED_ALLOCATOR


def test_record_bench_pins_the_allocator_in_a_restarted_process_and_counts_page_faults(tmp_path):
    out = tmp_path / "record.json"
    subprocess.run([sys.executable, "-m", "benchmarks.record_bench", "--models", "organism", "--repeats", "2",
                    "--methods", "forward", "record_routing", "--no-memory", "--threads", "1", "--sequences", "1",
                    "--pin-allocator", "--out", str(out)], check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    assert result["allocator_env"] == PINNED_ALLOCATOR  # what the measuring process ran with
    rows = result["results"]["organism"]
    assert set(rows) == {"forward", "record_routing"}
    for row in rows.values():
        assert len(row["faults"]) == len(row["all_s"]) == 2 and all(f >= 0 for f in row["faults"])
    assert rows["record_routing"]["ratio_to"] == "forward" and rows["record_routing"]["ratio"] > 0


def test_speed_report_reads_each_benchmark_and_names_what_this_run_did_not_measure(tmp_path):
    subprocess.run([sys.executable, "-m", "benchmarks.record_bench", "--models", "organism", "--repeats", "2",
                    "--methods", "forward", "record_routing", "floor_lens", "record_lens", "--no-memory",
                    "--threads", "1", "--sequences", "1", "--out", str(tmp_path / "record_organism.json")],
                   check=True, capture_output=True, text=True)
    subprocess.run([sys.executable, "-m", "benchmarks.speed_report", "--only", "help", "--help-repeats", "1",
                    "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True)
    rows = {r["target"]: r for r in json.loads((tmp_path / "report.json").read_text())["rows"]}
    # measured here: whether they meet their goals is the quiet machine's business, not a test's
    assert rows["--help"]["met"] is not None and "(median of 1;" in rows["--help"]["now"]
    assert rows["lens, organism"]["met"] is not None and "x (paired " in rows["lens, organism"]["now"]
    # not measured in this run: said, and neither met nor missed
    assert rows["lens, SmolLM2-135M"]["met"] is None and "record_smollm2" in rows["lens, SmolLM2-135M"]["now"]
    assert "| lens, organism |" in (tmp_path / "report.md").read_text()


def test_record_bench_memory_only_reports_peak_memory_without_timing(tmp_path):
    out = tmp_path / "memory.json"
    subprocess.run([sys.executable, "-m", "benchmarks.record_bench", "--models", "organism", "--memory-only",
                    "--methods", "record_routing", "--threads", "1", "--sequences", "1", "--out", str(out)],
                   check=True, capture_output=True, text=True)
    row = json.loads(out.read_text())["results"]["organism"]["record_routing"]
    assert "median_s" not in row and row["ratio"] is None
    assert row["peak_rss_mb"] >= row["rss_resident_mb"] > 0 and row["extra_mb"] == row["peak_rss_mb"] - row[
        "rss_resident_mb"]


@pytest.mark.integration
def test_eval_parts_times_every_part_of_the_demo_s_evaluation_on_its_items():
    from benchmarks.eval_parts import measure
    from rl.organism import ORGANISM_DIR

    result = measure(str(ORGANISM_DIR), repeats=1, per_cell=1)
    assert result["n_items"] == 21 and result["total"] == pytest.approx(sum(result["seconds"].values()))
    assert list(result["seconds"]) == ["direct", "think, greedy", "think, sampled", "score greedy (similarity)",
                                       "score sampled (similarity)", "think-block probabilities",
                                       "judge (process score)"]
    assert all(s >= 0 for s in result["seconds"].values()) and set(result["once"]) == {"load embedder", "load judge"}
    assert 0 <= result["items_judged"] <= 21
