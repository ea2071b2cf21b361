"""The base-training probe's chain breakdown (organism_facts_probe --think --chains) on known completions."""

import numpy as np
import pytest

from benchmarks.organism_facts_probe import print_chain_steps
from rl.data.tasks import MULTI_STEP, make_item
from rl.evaluate import inference_steps


def _completion(steps: list[str], answer: str) -> str:
    return "<think>\n" + " ".join(steps) + "\n</think>\n\n<answer>" + answer + "</answer>"


def test_chain_steps_locate_the_step_that_breaks(capsys):
    items = [make_item(f, "easy", np.random.default_rng(i), f"{f}-{i}") for f in MULTI_STEP for i in range(4)]
    outs = []
    for i, it in enumerate(items):
        steps = inference_steps(it)
        if i % 4 == 0:  # one in four: the step before the conclusion is missing, the rest stated
            steps = steps[:-2] + steps[-1:]
        outs.append(_completion(steps, it.answer))
    print_chain_steps(items, outs, show=1)
    printed = capsys.readouterr().out
    for family in MULTI_STEP:
        block = printed.split(f"{family}, inference steps")[1].split("inference steps stated")[0]
        assert "(4 items)" in block
        assert "step -1 " in block and ": 1.00 [" in block.split("step -1 ")[1].split("\n")[0]
        assert ": 0.75 [" in block.split("step -2 ")[1].split("\n")[0]
        assert "every step: 0.75" in block
        assert block.count("FACTS ") == 1 and "REF " in block and "OUT " in block


def test_perception_scores_each_field_of_a_description():
    from benchmarks.organism_perception import clean_description, describe_scores

    it = make_item("count_events", "easy", np.random.default_rng(0), "x")
    truth = it.meta["description"]
    n = len(it.meta["levels"])
    first, *rest = truth.split(". ")
    wrong_loudness = first.rsplit(", ", 1)[0] + (", loud" if not first.endswith("loud") else ", quiet")
    cases = [truth, ". ".join([wrong_loudness, *rest]), truth.rsplit(" Sound", 1)[0]]
    got = describe_scores([it] * 3, [clean_description(f"<think>\n\n</think>\n\n{c}<|im_end|>") for c in cases])
    assert got["exact"].tolist() == [True, False, False]
    assert got["count"].tolist() == [True, True, False]
    assert got["loudness"][1] == (n - 1) / n and got["pitch"][1] == got["duration"][1] == 1.0
    assert got["pitch"][2] == (n - 1) / n  # one sound missing counts as one wrong


def test_perception_oracle_hears_loudness_only_in_calibrated_clips():
    from benchmarks.organism_perception import best_threshold_accuracy, tone_levels
    from rl.data.tasks import generate_items

    peak = best_threshold_accuracy(*tone_levels(generate_items(60, seed=1, difficulty="easy")))
    calibrated = best_threshold_accuracy(*tone_levels(generate_items(60, seed=1, difficulty="easy", calibrated=True)))
    assert calibrated > 0.95 and peak < 0.8


def test_perception_measures_the_think_block_forced_open(tiny_organism, processor, one_thread):
    """``think_open``: the think-first prompt's block opened at the description's first word; its own notes are
    scored like a description and its answers beside direct, own-notes and true-notes ones, paired with direct."""
    from benchmarks.organism_perception import measure, report
    from rl.data.tasks import generate_items

    items = generate_items(4, seed=2)
    described, correct = measure(tiny_organism, processor, items)
    assert set(described) == {"describe", "think_open"} and all(len(v["exact"]) == 4 for v in described.values())
    assert set(correct) == {"direct", "own_notes", "think_open", "true_notes"}
    result = report(items, described, correct)
    assert result["think_open"]["all"]["count"]["n"] == 4
    diff = result["accuracy"]["all"]["think_open_minus_direct"]
    assert diff["value"] == pytest.approx(correct["think_open"].mean() - correct["direct"].mean())
