"""The base-training probe's chain breakdown (organism_facts_probe --think --chains) on known completions."""

import numpy as np

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
