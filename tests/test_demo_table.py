"""The demo's before/after table (``analyses.reproduce.headline`` and ``pooled_headline``): the same numbers as
``rl.evaluate`` on its own items, and the extra items joined in for every outcome measured on them."""

import numpy as np
import pytest

from analyses.reproduce import headline, pooled_headline
from rl import evaluate as E
from rl.data.tasks import generate_items


def report_of(items, seed: int, judged: bool = True) -> dict:
    """An ``rl.evaluate.evaluate``-shaped report of made-up completions (right or wrong by ``seed``)."""
    rng = np.random.default_rng(seed)
    right = rng.random((2, len(items))) < 0.6
    think = [f"<think>\nSound 1: a high tone.\n</think>\n\n<answer>{it.answer if ok else 'wrong'}</answer>"
             for it, ok in zip(items, right[0])]
    direct = E.score(items, [f"<answer>{it.answer if ok else 'wrong'}</answer>" for it, ok in zip(items, right[1])],
                     with_similarity=False)
    s = E.score(items, think, with_similarity=False)
    s.similarity = rng.random(len(items)).astype(np.float32)
    columns = E.think_columns(items, s)
    if judged:
        columns["process_score"] = np.where(s.correct, rng.random(len(items)), 0.0)
        columns["process_score"][1] = np.nan  # a judge failure
    return {"n_items": len(items), "accuracy": E.accuracy_table(items, direct.correct),
            "think_prompt": {"greedy": E.think_metrics(items, s, columns)},
            "per_item": E.per_item(items, direct, columns)}


def test_headline_is_rl_evaluate_s_overall_figures():
    items = generate_items(21, seed=3)
    report = report_of(items, seed=0)
    row, greedy = headline(report), report["think_prompt"]["greedy"]
    for name in ("accuracy", "think_rate", "reference_similarity", "inference_coverage", "process_score"):
        assert row[name] == pytest.approx(greedy[name]["value"]), name
        assert row[f"{name}_ci"] == pytest.approx([greedy[name]["lo"], greedy[name]["hi"]]), name
    direct = report["accuracy"]["all"]["all"]
    assert (row["direct_accuracy"], row["direct_accuracy_ci"]) == (direct["value"], [direct["lo"], direct["hi"]])
    assert row["n_items"] == 21


def test_extra_items_join_every_outcome_measured_on_them():
    items, extra_items = generate_items(21, seed=3), generate_items(42, seed=4)
    report, extra = report_of(items, seed=0), report_of(extra_items, seed=1, judged=False)
    joined = {**report, "extra": {"n_items": 42, "seed": 4, "per_item": extra["per_item"]}}
    row = headline(joined)
    both = report["per_item"]["accuracy"] + extra["per_item"]["accuracy"]
    assert row["accuracy"] == pytest.approx(np.mean(both)) and row["n_items"] == 63
    assert row["direct_accuracy"] == pytest.approx(
        np.mean(report["per_item"]["direct_correct"] + extra["per_item"]["direct_correct"]))
    # the judge read only the first 21: their process score, the same as without the extra items
    assert row["process_score"] == headline(report)["process_score"]
    assert row["accuracy_ci"][1] - row["accuracy_ci"][0] < headline(report)["accuracy_ci"][1] - headline(
        report)["accuracy_ci"][0]
    pooled = pooled_headline([joined, joined], minus=joined)
    assert pooled["n_items"] == 63 and pooled["accuracy"] == 0.0 and pooled["process_score"] == 0.0
