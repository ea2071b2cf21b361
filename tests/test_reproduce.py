"""`adt-probe reproduce --quick` end to end on the shipped organism (integration, about 2 minutes), and what users
do with its output: re-run (finished steps reused), the report's links, the datasets, and the notebooks."""

import dataclasses
import json
import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

import adt_probe
from analyses import verdicts
from analyses.reproduce import Plan, reproduce

pytestmark = pytest.mark.integration
NOTEBOOKS = Path(__file__).parents[1] / "notebooks"


@pytest.fixture(scope="module")
def demo(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("reproduce") / "demo"
    t0 = time.time()
    reproduce(Plan.make(str(out), quick=True), threads=1)
    return out, time.time() - t0


def test_results_json_has_the_before_after_table(demo):
    out, _ = demo
    results = json.loads((out / "results.json").read_text())
    rows = {"base": results["base"], "final": results["final"], **{f"seed {s}": r for s, r in results["seeds"].items()}}
    assert sorted(results["seeds"]) == ["0", "1"] and results["final"]["n_runs"] == 2
    for model, row in rows.items():
        for key in ("accuracy", "think_rate", "reference_similarity", "process_score", "direct_accuracy"):
            value = row[key]
            lo, hi = row[f"{key}_ci"]
            assert 0.0 <= lo <= value <= hi <= 1.0, (model, key, lo, value, hi)
        assert row["n_items"] == 63  # 42 held-out items, 21 extra for the greedy columns
    for key in ("accuracy", "think_rate"):  # the pooled change is the mean of the seeds' paired changes
        seeds = [results["seeds"][s][key] - results["base"][key] for s in ("0", "1")]
        assert np.isclose(results["change"][key], np.mean(seeds))
        lo, hi = results["change"][f"{key}_ci"]
        assert -1.0 <= lo <= results["change"][key] <= hi <= 1.0
    # RL's think-first accuracy against the base's direct answer: the seeds' accuracy minus the base's direct, averaged
    over = [results["seeds"][s]["accuracy"] - results["base"]["direct_accuracy"] for s in ("0", "1")]
    assert np.isclose(results["over_base_direct"]["accuracy"], np.mean(over))
    lo, hi = results["over_base_direct"]["accuracy_ci"]
    assert -1.0 <= lo <= results["over_base_direct"]["accuracy"] <= hi <= 1.0
    assert "Against the base's direct answer" in (out / "report.md").read_text()
    for finding in ("finding_upper_layer_routers", "finding_crystallization"):
        assert results[finding]["verdict"] in verdicts.VERDICTS
        assert results[finding]["rules_hash"] == verdicts.RULES_HASH
    assert results["training_steps"] == 9
    assert results["held_out"]["items"] == {"held_out": 42, "extra": 21}
    report = (out / "report.md").read_text()
    assert "63 synthetic items: 42 (2 per family x difficulty, seeds from 30011, one per band), on which" in report
    assert "and 21 more (1 per cell, seeds from 30014)" in report


def test_the_analyses_read_the_completions_the_table_scored(demo):
    """compare and record take the evaluate step's greedy completions (not generated again): the same texts."""
    out, _ = demo

    def jsonl(path):
        return [json.loads(line) for line in path.read_text().splitlines()]

    scored = {name: json.loads((out / f"eval_{name}.json").read_text())["per_item"]["completion"]
              for name in ("base", "seed-0", "seed-1")}
    rl_rows = jsonl(out / "compare" / "completions_rl.jsonl")
    assert [r["completion"] for r in rl_rows] == scored["seed-0"] + scored["seed-1"]
    assert [r["completion"] for r in jsonl(out / "compare" / "completions_base.jsonl")] == scored["base"]
    assert [r["completion"] for r in jsonl(out / "recordings" / "completions.jsonl")] == scored["seed-0"]
    assert [r["completion"] for r in jsonl(out / "recordings_mirror" / "completions.jsonl")] == scored["base"]
    # the transplant's unmodified models: the accuracy the table scored on the same 42 items
    reference = json.loads((out / "results.json").read_text())["transplant"]["reference"]
    for name, key in (("seed-0", "rl_accuracy"), ("base", "base_accuracy")):
        rows = json.loads((out / f"eval_{name}.json").read_text())["per_item"]["accuracy"]
        assert reference[key] == pytest.approx(np.mean(rows)), name


def test_report_links_resolve_and_figures_exist_as_png_and_pdf(demo):
    out, _ = demo
    report = (out / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert len(links) >= 20
    for link in links:
        assert (out / link).is_file(), link
    assert "adt-probe reproduce --out" in report and "torch" in report


def test_datasets_open_with_the_schema(demo):
    out, _ = demo
    for name in ("base", "rl", "base_noise"):
        ds = adt_probe.open(out / "recordings" / f"{name}.zarr")
        assert {"router_logits", "topk_experts", "lens_logprob"} <= set(ds.data_vars)
    drift = adt_probe.open(out / "findings" / "drift.nc")
    assert {"js", "js_lo", "js_hi", "noise_js"} <= set(drift.data_vars)
    # the bf16 noise pair gives a floor above zero but below the drift RL made in most layers
    floor = drift.noise_js.sel(segment="all").values
    assert (floor > 0).all()
    traj = adt_probe.open(out / "trajectory" / "trajectory.nc")
    assert list(traj.step.values) == [0, 3, 6, 9]
    assert np.allclose(traj.js.sel(step=0, segment="all").values, 0, atol=1e-9)  # think: NaN when none thinks


def test_rerun_reuses_every_step(demo, caplog):
    out, first = demo
    caplog.set_level(logging.INFO, logger="analyses.reproduce")
    t0 = time.time()
    reproduce(Plan.make(str(out), quick=True), threads=1)
    assert time.time() - t0 < 0.2 * first
    assert caplog.text.count("reused") == 10


def test_rerun_with_other_settings_is_refused(demo):
    out, _ = demo
    with pytest.raises(SystemExit, match="other settings.*quick: True there, False now"):
        reproduce(Plan.make(str(out), quick=False), threads=1)


def test_a_run_continues_with_another_schedule_but_not_other_settings(tmp_path):
    from analyses.reproduce import check_plan

    check_plan(Plan.make(str(tmp_path), quick=True))
    saved = json.loads((tmp_path / "plan.json").read_text())
    (tmp_path / "plan.json").write_text(json.dumps({**saved, "jobs": 2}))  # an earlier default: two at a time
    check_plan(Plan.make(str(tmp_path), quick=True))
    with pytest.raises(SystemExit, match="n_boot: 200 there, 300 now"):
        check_plan(dataclasses.replace(Plan.make(str(tmp_path), quick=True), n_boot=300))


@pytest.mark.parametrize("name", ["quickstart", "gating_drift", "crystallization"])
def test_notebook_runs_on_the_demo_output(demo, name):
    import nbclient
    import nbformat

    out, _ = demo
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    for cell in nb.cells:  # committed without outputs
        assert cell.cell_type != "code" or (not cell.outputs and cell.execution_count is None), name
    os.environ["ADT_PROBE_DEMO"] = str(out)
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        del os.environ["ADT_PROBE_DEMO"]
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


def test_demo_gain_measures_the_demo_models_again_on_other_items_and_reuses_its_reports(demo, tmp_path, capsys):
    """``benchmarks.demo_gain``: the demo's base and final checkpoints on another item set, pooled as the demo pools
    them (the paired change is the pooled seeds minus the base); a second run reads the reports it wrote."""
    from benchmarks import demo_gain

    out, _ = demo
    gain_dir = tmp_path / "gain"
    demo_gain.main([str(out), "--per-cell", "1", "--seed", "40011", "--out", str(gain_dir)])
    result = json.loads((gain_dir / "gain.json").read_text())
    assert result["n_items"] == 21 and sorted(result["seeds"]) == ["seed-0", "seed-1"]
    assert result["final"] == pytest.approx(np.mean(list(result["seeds"].values())))
    assert result["change"] == pytest.approx(result["final"] - result["base"])
    for key in ("final", "change", "over_base_direct"):
        lo, hi = result[f"{key}_ci"]
        assert lo <= result[key] <= hi
    base = json.loads((gain_dir / "base.json").read_text())
    assert base["data"] == "synthetic (seed 40011)" and base["per_item"]["id"] != json.loads(
        (out / "eval_base.json").read_text())["per_item"]["id"][:21]  # other items than the demo's
    assert "change" in capsys.readouterr().out
    written = {p.name: p.stat().st_mtime_ns for p in gain_dir.glob("*.json") if p.name != "gain.json"}
    demo_gain.main([str(out), "--per-cell", "1", "--seed", "40011", "--out", str(gain_dir)])
    assert {p.name: p.stat().st_mtime_ns for p in gain_dir.glob("*.json") if p.name != "gain.json"} == written
    with pytest.raises(SystemExit, match="no plan.json"):
        demo_gain.models_of(tmp_path)
