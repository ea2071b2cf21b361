"""`adt-probe eval`: accuracy, think-rate, reference similarity and the rubric process score per family and
difficulty, with intervals, on a user dataset in the item format."""

import json

import numpy as np
import pytest
import torch

from rl import evaluate as E
from rl.data.items import write_items
from rl.data.tasks import generate_items


def test_group_table_has_every_cell_and_the_margins():
    items = generate_items(14, seed=3)
    correct = np.array([i % 2 == 0 for i in range(14)])
    table = E.group_table(items, correct)
    assert table["all"]["all"]["n"] == 14 and table["all"]["all"]["value"] == pytest.approx(0.5)
    for it in items:
        cell = table[it.family][it.difficulty]
        assert 0 <= cell["lo"] <= cell["value"] <= cell["hi"] <= 1
    scores = np.linspace(0, 1, 14)
    scores[3] = np.nan  # a judge failure: left out of its cells and counted, never turned into 0
    table = E.group_table(items, scores)
    assert table["all"]["all"]["n"] == 13 and table["all"]["all"]["n_missing"] == 1
    assert table["all"]["all"]["value"] == pytest.approx(np.nanmean(scores))


class _Recorder:
    """A judge stand-in that records what it was asked: only correct answers with think text get judged."""

    def __init__(self):
        self.seen = []

    def score(self, candidates, references):
        self.seen += list(candidates)
        return [0.8 if "high" in c else None for c in candidates]


def test_process_score_is_the_judge_score_when_right_and_zero_otherwise():
    items = generate_items(4, seed=5)
    completions = [f"<think>\nSound 1: a high tone.\n</think>\n\n<answer>{items[0].answer}</answer>",
                   f"<think>\nSound 1: a low tone.\n</think>\n\n<answer>{items[1].answer}</answer>",
                   "<think>\nSound 1: a high tone.\n</think>\n\n<answer>certainly wrong</answer>",
                   f"<think>\n\n</think>\n\n<answer>{items[3].answer}</answer>"]
    s = E.score(items, completions, with_similarity=False)
    judge = _Recorder()
    got = E.process_scores(judge, items, s)
    assert got[0] == pytest.approx(0.8)
    assert np.isnan(got[1])  # the judge failed: NaN, not 0
    assert got[2] == 0 and got[3] == 0  # wrong answer; no think text
    assert judge.seen == ["Sound 1: a high tone.", "Sound 1: a low tone."]


def test_eval_cli_on_a_user_dataset(tiny_dir, tmp_path, one_thread, caplog):
    items = generate_items(7, seed=9)
    data = write_items(items, tmp_path / "data" / "items.jsonl")
    out = tmp_path / "report.json"
    E.main(["--model", str(tiny_dir), "--data", str(data), "--out", str(out), "--judge", "none", "--no-sampled",
            "--max-new-tokens", "8"])
    report = json.loads(out.read_text())
    # 8 tokens cut every reference chain: the report keeps it and the log and table say it
    budget = report["completion_budget"]
    assert budget["max_new_tokens"] == 8 and budget["items_cut"] == budget["items_with_chains"] == 7
    assert budget["longest"] > 8 and "7 of 7 items reason in more than max_new_tokens = 8" in caplog.text
    assert f"Raise max_new_tokens to at least {budget['longest']}" in E.format_table(report)
    greedy = report["think_prompt"]["greedy"]
    assert set(greedy["by_group"]) == {"accuracy", "think_rate", "reference_similarity",
                                         "inference_coverage"}
    assert set(greedy["by_group"]["accuracy"]) == {it.family for it in items} | {"all"}
    assert greedy["accuracy"]["n"] == 7 and report["data"] == str(data)
    assert report["accuracy_with_notes"]["all"]["all"]["n"] == 7
    assert report["accuracy_written_facts_think"]["all"]["all"]["n"] == 7
    assert "facts written out, think-first" in E.format_table(report)
    opening, rows = report["think_propensity"], report["per_item"]
    assert len(rows["p_open"]) == len(rows["close_margin"]) == 7 and all(0 <= p <= 1 for p in rows["p_open"])
    assert opening["greedy_opens"] == sum(m <= 0 for m in rows["close_margin"])
    assert opening["least_margin"] == min(rows["close_margin"]) and "expected sampled think-rate" in E.format_table(
        report)


def test_eval_without_facts_and_notes_generates_only_the_direct_and_think_first_answers(tiny_dir, tmp_path, one_thread):
    items = generate_items(7, seed=9)
    data = write_items(items, tmp_path / "items.jsonl")
    out = tmp_path / "report.json"
    E.main(["--model", str(tiny_dir), "--data", str(data), "--out", str(out), "--judge", "none", "--no-sampled",
            "--no-facts-and-notes", "--max-new-tokens", "8"])
    report = json.loads(out.read_text())
    assert report["accuracy_written_facts"] is report["accuracy_written_facts_think"] is None
    assert report["accuracy_with_notes"] is None and "with notes" not in E.format_table(report)
    assert report["accuracy"]["all"]["all"]["n"] == report["think_prompt"]["greedy"]["accuracy"]["n"] == 7


def test_close_margin_is_negative_exactly_where_greedy_decoding_opens_the_think_block(one_thread):
    """On the shipped organism's first 64 held-out items, its logits of the empty think block's tokens lowered by the
    items' median margin (an lm_head bias), so that some items open the block greedily and some do not whatever
    organism is shipped: the margin is below zero exactly where greedy generation leaves the empty think block."""
    from rl.organism import ORGANISM_DIR, load_organism
    from rl.organism.train_base import config_of, heldout_items

    items = heldout_items(config_of(ORGANISM_DIR))[:64]
    model, processor = load_organism()
    block = processor.tokenizer(E.CLOSED_THINK, add_special_tokens=False)["input_ids"]
    shift = float(np.median(E.think_propensity(model, processor, items)["close_margin"]))
    head = model.lm_head
    model.lm_head = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        model.lm_head.weight.copy_(head.weight)
        model.lm_head.bias.zero_()
        model.lm_head.bias[block] = -shift
    out = E.think_propensity(model, processor, items)
    closed = np.array([t.startswith(E.CLOSED_THINK)
                       for t in E.generate(model, processor, items, "think", max_new_tokens=len(block))])
    assert 0 < (~closed).sum() < len(items)  # both outcomes occur, so the comparison can fail
    np.testing.assert_array_equal(out["close_margin"] > 0, closed)
    # an item opened greedily is likelier than not to open under sampling too, and the closed ones less so
    assert out["p_open"][~closed].min() > out["p_open"][closed].mean()


def test_eval_cli_names_a_missing_dataset(tiny_dir, tmp_path):
    with pytest.raises(Exception, match="nope.jsonl"):
        E.main(["--model", str(tiny_dir), "--data", str(tmp_path / "nope.jsonl"), "--judge", "none"])


def test_hierarchical_interval_widens_with_run_to_run_variation():
    rng = np.random.default_rng(0)
    items = rng.random(200) < 0.6  # the same items in every run
    same = np.stack([items, items, items]).astype(float)  # (runs, items): three identical runs
    shifted = np.stack([items & (rng.random(200) < p) for p in (0.5, 0.8, 1.0)]).astype(float)
    a, b = E.hierarchical_mean_ci(same, seed=1), E.hierarchical_mean_ci(shifted, seed=1)
    assert np.isclose(a["value"], items.mean()) and a["lo"] < a["value"] < a["hi"]
    assert np.isclose(b["value"], shifted.mean(1).mean())
    # runs that disagree add their spread to the items' sampling error
    assert (b["hi"] - b["lo"]) > (a["hi"] - a["lo"])
    with_gap = same.copy()
    with_gap[0, :10] = np.nan
    c = E.hierarchical_mean_ci(with_gap, seed=1)
    assert c["n_missing"] == 10 and np.isfinite(c["lo"])


def test_inference_coverage_counts_the_reference_steps_stated():
    items = [it for it in generate_items(40, seed=2) if len(E.inference_steps(it)) >= 2][:2]
    assert len(items) == 2, "the task families give some items two or more inference steps"
    steps = E.inference_steps(items[0])
    completions = [f"<think>\n{steps[0]}\n</think>\n\n<answer>{items[0].answer}</answer>",
                   f"<think>\n{' '.join(E.inference_steps(items[1]))}\n</think>\n\n<answer>x</answer>"]
    got = E.inference_coverage(items, E.score(items, completions, with_similarity=False))
    assert got[0] == pytest.approx(1 / len(steps)) and got[1] == 1.0


def test_distinct_ngrams_falls_when_texts_repeat():
    varied = ["sound one is high", "the second tone lasts longer", "three loud beeps"]
    assert E.distinct_ngrams(varied, 2)["value"] == 1.0
    got = E.distinct_ngrams(["sound one is high"] * 4, 2)
    assert got["value"] == pytest.approx(3 / 12) and got["n_ngrams"] == 12 and got["n_texts"] == 4
    assert np.isnan(E.distinct_ngrams(["one"], 2)["value"])
