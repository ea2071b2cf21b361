"""The validity benchmarks end to end with tiny arguments (integration: the packaged SmolLM2 judge and MiniLM).

The judge path of ``benchmarks.reasoning_validity`` takes about two minutes even on one item per style: only its
embedding scorers (``--no-judge``) run here.
"""

import json

import pytest

from benchmarks import judge_validity, reasoning_validity

pytestmark = pytest.mark.integration


def _in_unit_interval(x: float) -> bool:
    return 0.0 <= x <= 1.0


def test_judge_validity_chooses_a_hybrid_on_dev_and_writes_its_tables(tmp_path, capsys, one_thread):
    path = tmp_path / "jv.json"
    out = judge_validity.main(["--items", "4", "--judge-models", "smollm2", "--prompts", "restate-likelihood",
                               "--threads", "1", "--out", str(path)])
    assert json.loads(path.read_text()) == json.loads(json.dumps(out))
    assert out["items"] == 4 and out["candidates"] == 4 * (1 + len(judge_validity.KINDS))
    chosen = out["chosen"]
    assert (chosen["model"], chosen["prompt"], chosen["method"]) == ("smollm2", "restate-likelihood", "likelihood")
    assert chosen["w"] in judge_validity.W_GRID
    assert len(out["hybrid_dev_pooled"]) == len(judge_validity.W_GRID)
    assert chosen["dev_pooled_auroc"] == max(out["hybrid_dev_pooled"].values())
    names = list(out["aurocs"])
    assert names[:2] == ["embedding (MiniLM cosine)", "judge smollm2 restate-likelihood"]
    assert names == list(out["within_item_aurocs"])
    for tables in (out["aurocs"], out["within_item_aurocs"]):
        for by_split in tables.values():
            assert set(by_split) == {"dev", "test", "all"}
            for table in by_split.values():
                assert set(table) == {*judge_validity.KINDS, "pooled"}
                assert all(_in_unit_interval(v) for v in table.values())
    # both scorers tell the paraphrase from the corruptions better than chance
    assert out["aurocs"]["embedding (MiniLM cosine)"]["all"]["pooled"] > 0.6
    assert out["aurocs"]["judge smollm2 restate-likelihood"]["all"]["pooled"] > 0.6
    throughput = out["throughput"]
    assert throughput["second_pass"]["identical"] and throughput["max_abs_difference_reuse_vs_full"] < 1e-4
    printed = capsys.readouterr().out
    assert f"chosen: smollm2 'restate-likelihood', w = {chosen['w']:g}" in printed
    assert printed.count("| embedding (MiniLM cosine) |") == 2  # all items, then the held-out half


def test_reasoning_validity_embedding_scorers_on_dev_and_held_out_styles(tmp_path, capsys, one_thread):
    path = tmp_path / "rv.json"
    out = reasoning_validity.main(["--items", "1", "--timing", "5", "--boot", "20", "--threads", "1", "--no-judge",
                                   "--out", str(path)])
    assert json.loads(path.read_text()) == json.loads(json.dumps(out, default=str))
    assert out["chosen"]["w"] is None and out["chosen"]["dev_grid"] == {} and out["server_path"] == {}
    assert list(out["aurocs"]) == ["embedding cosine (hybrid_reasoning, w = 0)", "chain_alignment",
                                   *(f"chain part: {p}" for p in ("coverage", "precision", "order", "facts",
                                                                  "agreement"))]
    for by_split in out["aurocs"].values():
        assert set(by_split) == {"dev", "held_out"}
        for table in by_split.values():
            for kind in (*reasoning_validity.KINDS, "pooled"):
                lo, hi = table[kind]["ci95"]
                assert _in_unit_interval(table[kind]["auroc"]) and 0.0 <= lo <= hi <= 1.0
    # the chain alignment beats the plain embedding cosine on both splits (the benchmark's finding)
    for split in ("dev", "held_out"):
        assert (out["aurocs"]["chain_alignment"][split]["pooled"]["auroc"]
                > out["aurocs"]["embedding cosine (hybrid_reasoning, w = 0)"][split]["pooled"]["auroc"])
    assert list(out["seconds_per_100_completions_cold_cache"]) == ["embedding cosine", "chain_alignment"]
    printed = capsys.readouterr().out
    assert "### dev styles" in printed and "### held_out styles" in printed
