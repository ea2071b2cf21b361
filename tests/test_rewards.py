"""The reasoning rewards on hand-made completions, their bad input, and a run of all of them, unchanged, inside
``trl.GRPOTrainer`` on a tiny text model (with a tiny in-process judge)."""

import functools

import numpy as np
import pytest

from rl import judge as J
from rl.rewards.reasoning import (
    adaptive_think_accuracy_reward,
    consistency_reward,
    hybrid_reasoning_reward,
    judge_for,
    llm_judge_reward,
    think_conclusion,
)
from rl.rewards.registry import REWARDS, accuracy_reward, check_requirements, format_reward, get_reward, resolve_rewards
from tests import tiny_lm
from tests.judge_server import ModelServer

REF = ["Sound 1: a high tone, long, loud.", "Sound 2: a low tone, short, quiet.",
       "Sound 1 is high, higher than sound 2 (low).", "So the first tone is higher."]
CHOICES = ["the first", "the second"]
COMPLETIONS = [
    "<think>\nSound 1 is high and sound 2 is low, so the first tone is higher.\n</think>\n\n<answer>the first</answer>",
    "<think>\nSound 1 is high. So the second tone is higher.\n</think>\n\n<answer>the first</answer>",
    "<think>\n\n</think>\n\n<answer>the first</answer>",
    "<think>\nSound 2 sounds higher to me: the second.\n</think>\n\n<answer>the second</answer>",
]


def columns(n=4, **extra):
    cols = {"answer": ["the first"] * n, "choices": [CHOICES] * n, "reference_chain": [REF] * n,
            "id": [f"it-{i // 2}" for i in range(n)]}
    cols.update(extra)
    return cols


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def judge_dir(tok, tmp_path_factory):
    """A tiny random Llama as the judge model (any causal LM folder works)."""
    return tiny_lm.save(tiny_lm.build_model(tok, seed=3), tok, tmp_path_factory.mktemp("rw") / "judge")


# --- consistency -----------------------------------------------------------------------------------------------------

def test_consistency_on_hand_made_completions():
    assert consistency_reward(["p"] * 4, COMPLETIONS, [[]] * 4, **columns()) == [1.0, 0.0, None, 1.0]
    no_answer = "<think>So the first.</think>"
    silent = "<think>Two tones, one high.</think><answer>the first</answer>"
    assert consistency_reward(["p"] * 2, [no_answer, silent], [[]] * 2, choices=[CHOICES] * 2) == [0.0, 0.0]
    conv = [[{"role": "assistant", "content": COMPLETIONS[0]}]]  # TRL's conversational form
    assert consistency_reward(["p"], conv, [[]], choices=[CHOICES]) == [1.0]


def test_consistency_understands_every_task_family():
    from rl.data.tasks import FAMILIES, generate_items

    items = generate_items(3 * len(FAMILIES), seed=5)
    for it in items:  # the reference chain's conclusion agrees with the item's answer
        assert it.choices[think_conclusion(" ".join(it.reference_chain), it.choices)] == it.answer, it.reference_chain
    assert think_conclusion("The level goes up, so the loudness rises.", ["it rises", "it falls"]) == 0
    assert think_conclusion("I count three beeps.", ["1", "2", "3"]) == 2
    assert think_conclusion("The loudest is very high, not high.", ["high", "very high"]) == 0  # last mention
    assert think_conclusion("It is very high.", ["high", "very high"]) == 1  # longest alias first
    assert think_conclusion("Sound 1 is higher.", ["high", "low"]) is None  # "higher" is not "high"


# --- judge rewards ---------------------------------------------------------------------------------------------------

def test_hybrid_and_llm_judge_pay_only_for_correct_answers(judge_dir):
    from rl.rewards.embedding import similarity

    kw = {"judge_model": str(judge_dir), "judge_batch_size": 4}
    judge = judge_for(kw, "test")
    before = judge.stats.calls
    hybrid = hybrid_reasoning_reward(["p"] * 4, COMPLETIONS, [[]] * 4, w=0.4, **columns(), **kw)
    assert judge.stats.calls - before == 2  # only the two correct completions with think text are judged
    thinks = [COMPLETIONS[0].split("\n")[1], COMPLETIONS[1].split("\n")[1]]
    j = judge.score(thinks, [REF, REF])
    cos = np.clip(similarity(thinks, [" ".join(REF)] * 2), 0, 1)
    assert hybrid[2:] == [0.0, 0.0] and hybrid[:2] == pytest.approx(list(0.4 * np.array(j) + 0.6 * cos), abs=1e-6)
    assert all(0 <= h <= 1 for h in hybrid)
    assert judge.stats.judged == 2  # the recomputation above came from the cache
    assert llm_judge_reward(["p"] * 4, COMPLETIONS, [[]] * 4, **columns(), **kw) == pytest.approx(j + [0.0, 0.0])
    # w = 0: the embedding alone, no judge is even built; w = 1: the judge alone
    alone = hybrid_reasoning_reward(["p"] * 4, COMPLETIONS, [[]] * 4, w=0.0, judge_model="/nonexistent",
                                    **columns())
    assert alone[:2] == pytest.approx(list(cos), abs=1e-6)
    assert hybrid_reasoning_reward(["p"] * 4, COMPLETIONS, [[]] * 4, w=1.0, **columns(), **kw)[:2] == \
        pytest.approx(j)


def test_a_failed_judgement_is_none_never_zero(tok, judge_dir):
    model = tiny_lm.build_model(tok, seed=3)
    server = ModelServer(model, tok, name="tiny")
    url = server.start()
    try:
        server.garbage = True
        kw = {"judge_backend": "openai", "judge_base_url": url, "judge_retries": 0, "judge_max_failure_fraction": None}
        assert hybrid_reasoning_reward(["p"] * 4, COMPLETIONS, [[]] * 4, **columns(), **kw) == [None, None, 0.0, 0.0]
        assert llm_judge_reward(["p"] * 4, COMPLETIONS, [[]] * 4, **columns(), **kw) == [None, None, 0.0, 0.0]
        strict = dict(kw, judge_max_failure_fraction=0.5, judge_min_judgements=2)
        with pytest.raises(J.JudgeFailureError, match="127.0.0.1"):
            llm_judge_reward(["p"] * 4, COMPLETIONS, [[]] * 4, **columns(), **strict)
    finally:
        server.stop()


def test_judge_rewards_need_reference_chains(judge_dir):
    kw = {"judge_model": str(judge_dir)}
    for fn in (hybrid_reasoning_reward, llm_judge_reward):
        cols = columns()
        cols.pop("reference_chain")
        with pytest.raises(ValueError, match="needs the item column 'reference_chain'"):
            fn(["p"] * 4, COMPLETIONS, [[]] * 4, **cols, **kw)
        with pytest.raises(ValueError, match="item 'it-1' has none"):
            fn(["p"] * 4, COMPLETIONS, [[]] * 4, **columns(reference_chain=[REF, REF, [], REF]), **kw)
    with pytest.raises(ValueError, match="w must lie in"):
        hybrid_reasoning_reward(["p"], COMPLETIONS[:1], [[]], w=1.5, **columns(1))
    with pytest.raises(ValueError, match="bad judge setting"):
        llm_judge_reward(["p"] * 4, COMPLETIONS, [[]] * 4, judge_colour="red", **columns())


def test_registry_and_the_trainers_requirement_check():
    from rl.data.items import Item

    for name in ("consistency", "hybrid_reasoning", "llm_judge", "adaptive_think_accuracy"):
        assert get_reward(name) is REWARDS[name]
    assert get_reward("hybrid_reasoning").requires == ("reference_chain",)
    bare = [Item(id="b-0", question="q", choices=CHOICES, answer="the first", audio=np.zeros(160, np.float32))]
    with pytest.raises(ValueError, match="'hybrid_reasoning' requires 'reference_chain' on every item"):
        check_requirements(resolve_rewards({"hybrid_reasoning": 1.0}, {"hybrid_reasoning": {"w": 0.5}}), bare)


# --- adaptive think accuracy -----------------------------------------------------------------------------------------

def test_adaptive_think_accuracy_formula():
    right_think = "<think>Sound 1 is high.</think><answer>the first</answer>"
    right_direct = "<think></think><answer>the first</answer>"
    wrong = "<think>Hmm.</think><answer>the second</answer>"
    # hard group "h": 2 of 4 right -> d = 0.5; easy group "e": 4 of 4 right -> d = 0; "x": 1 of 4 -> d = 0.75
    comps = [right_think, right_direct, wrong, wrong] + [right_think, right_direct] * 2 + [right_think] + [wrong] * 3
    ids = ["h"] * 4 + ["e"] * 4 + ["x"] * 4
    r = adaptive_think_accuracy_reward(["p"] * 12, comps, [[]] * 12, answer=["the first"] * 12, id=ids, alpha=0.5)
    assert r == pytest.approx([1.25, 1.25, 0, 0, 1.0, 1.5, 1.0, 1.5, 1.375, 0, 0, 0])
    labels = adaptive_think_accuracy_reward(["p"] * 2, [right_think, right_direct], [[]] * 2, answer=["the first"] * 2,
                                            id=["a", "a"], difficulty=["hard", "hard"], difficulty_source="label")
    assert labels == pytest.approx([1.5, 1.0])
    by_prompt = adaptive_think_accuracy_reward(["p1", "p1", "p2", "p2"], [right_think, wrong, right_think, right_think],
                                               [[]] * 4, answer=["the first"] * 4)  # no id column: group by prompt
    assert by_prompt == pytest.approx([1.25, 0, 1.0, 1.0])
    with pytest.raises(ValueError, match="difficulty_source"):
        adaptive_think_accuracy_reward(["p"], [wrong], [[]], answer=["x"], difficulty_source="oracle")


# --- unchanged in trl.GRPOTrainer ------------------------------------------------------------------------------------

def _bound(fn, **kwargs):
    """``functools.partial`` with the function's name (TRL names reward columns after ``__name__``)."""
    return functools.update_wrapper(functools.partial(fn, **kwargs), fn)


def test_rewards_run_unchanged_in_trl_grpo_trainer(tmp_path, tok, judge_dir):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    policy = tiny_lm.build_model(tok, seed=1)
    prompts = [f"Question {i}: which tone is higher? Choices: the first; the second." for i in range(4)]
    target = "<think>Sound 1: a high tone, long, loud. So the first tone is higher.</think><answer>the first</answer>"
    tiny_lm.teach(policy, tok, prompts, [target] * 4, steps=200)  # so that some answers are right and judged
    data = Dataset.from_dict({"prompt": prompts, "answer": ["the first", "the second"] * 2, "choices": [CHOICES] * 4,
                              "reference_chain": [REF] * 4, "id": [f"q{i}" for i in range(4)],
                              "difficulty": ["easy", "hard"] * 2})
    kw = {"judge_model": str(judge_dir), "judge_batch_size": 4}
    funcs = [accuracy_reward, format_reward, consistency_reward, _bound(hybrid_reasoning_reward, w=0.5, **kw),
             _bound(llm_judge_reward, **kw), adaptive_think_accuracy_reward]
    args = GRPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=40, max_steps=2, learning_rate=1e-3, logging_steps=1, report_to="none",
                      save_strategy="no", use_cpu=True, bf16=False, seed=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=policy, reward_funcs=funcs, args=args, train_dataset=data, processing_class=tok)
    judge = judge_for(kw, "test")
    before = judge.stats.calls
    trainer.train()
    logs = [r for r in trainer.state.log_history if "rewards/accuracy_reward/mean" in r]
    assert len(logs) == 2
    for name in ("accuracy_reward", "format_reward", "consistency_reward", "hybrid_reasoning_reward",
                 "llm_judge_reward", "adaptive_think_accuracy_reward"):
        value = logs[0][f"rewards/{name}/mean"]  # TRL logs numbers (as formatted strings)
        assert value is not None and np.isfinite(float(value)), name
    assert sum(float(r["rewards/accuracy_reward/mean"]) for r in logs) > 0
    assert sum(float(r["rewards/hybrid_reasoning_reward/mean"]) for r in logs) > 0
    assert judge.stats.calls > before  # the judge scored the correct completions inside TRL
