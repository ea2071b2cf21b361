"""The benchmarks' own machinery (their figures are in the README, measured on a quiet machine, never here)."""

import json
import subprocess
import sys

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
