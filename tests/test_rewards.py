"""The rewards on hand-made completions (plain and TRL's chat form), their bad input, and a run of all of them,
unchanged, inside ``trl.GRPOTrainer`` on a chat dataset with a tiny text model (and a tiny in-process judge)."""

import numpy as np
import pytest
import torch

from rl import judge as J
from rl import testing as tiny_lm
from rl.judge.serve import ModelServer
from rl.rewards import (
    REWARDS,
    HybridReasoningReward,
    LLMJudgeReward,
    accuracy_reward,
    adaptive_think_accuracy_reward,
    check_requirements,
    consistency_reward,
    format_reward,
    get_reward,
    resolve_rewards,
    think_conclusion,
)
from rl.rewards.embedding import similarity

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
    judge = J.LocalJudge(str(judge_dir), batch_size=4)
    hybrid = HybridReasoningReward(judge, judge_weight=0.4)
    hybrid_values = hybrid(["p"] * 4, COMPLETIONS, [[]] * 4, **columns())
    assert judge.stats.calls == 2  # only the two correct completions with think text are judged
    thinks = [COMPLETIONS[0].split("\n")[1], COMPLETIONS[1].split("\n")[1]]
    j = judge.score(thinks, [REF, REF])
    cos = np.clip(similarity(thinks, [" ".join(REF)] * 2), 0, 1)
    assert hybrid_values[2:] == [0.0, 0.0]
    assert hybrid_values[:2] == pytest.approx(list(0.4 * np.array(j) + 0.6 * cos), abs=1e-6)
    assert all(0 <= h <= 1 for h in hybrid_values)
    assert judge.stats.judged == 2  # the recomputation above came from the cache
    assert LLMJudgeReward(judge)(["p"] * 4, COMPLETIONS, [[]] * 4, **columns()) == pytest.approx(j + [0.0, 0.0])
    # judge weight 0: the embedding alone, the judge is never even built; 1: the judge alone
    never = J.SharedJudge("local", model="/nonexistent")
    alone = HybridReasoningReward(never, judge_weight=0.0)
    assert alone(["p"] * 4, COMPLETIONS, [[]] * 4, **columns())[:2] == pytest.approx(list(cos), abs=1e-6)
    assert never.built is None and alone.judges == []
    assert HybridReasoningReward(judge, judge_weight=1.0)(["p"] * 4, COMPLETIONS, [[]] * 4, **columns())[:2] == \
        pytest.approx(j)


def test_rewards_read_trl_chat_completions(judge_dir):
    """TRL passes ``[{"role": "assistant", "content": ...}]`` per completion for a chat dataset."""
    chat = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    judge = J.LocalJudge(str(judge_dir), batch_size=4)
    for reward in (accuracy_reward, format_reward, consistency_reward, adaptive_think_accuracy_reward,
                   HybridReasoningReward(judge), LLMJudgeReward(judge)):
        assert reward(["p"] * 4, chat, [[]] * 4, **columns()) == reward(["p"] * 4, COMPLETIONS, [[]] * 4,
                                                                         **columns()), reward
    with pytest.raises(TypeError, match="a string or a list of chat messages"):
        accuracy_reward(["p"], [42], [[]], answer=["x"])


def test_a_failed_judgement_is_none_never_zero(tok):
    model = tiny_lm.build_model(tok, seed=3)
    server = ModelServer(model, tok, name="tiny")
    url = server.start()
    try:
        server.garbage = True
        lenient = J.OpenAIJudge(url, retries=0, max_failure_fraction=None)
        for reward in (HybridReasoningReward(lenient), LLMJudgeReward(lenient)):
            assert reward.none_is_failure and reward(["p"] * 4, COMPLETIONS, [[]] * 4, **columns()) == \
                [None, None, 0.0, 0.0]
        strict = J.OpenAIJudge(url, retries=0, max_failure_fraction=0.5, min_judgements=2)
        with pytest.raises(J.JudgeFailureError, match="127.0.0.1"):
            LLMJudgeReward(strict)(["p"] * 4, COMPLETIONS, [[]] * 4, **columns())
    finally:
        server.stop()


def test_judge_rewards_need_reference_chains_and_a_judge(judge_dir):
    judge = J.SharedJudge("local", model=str(judge_dir))
    for reward in (HybridReasoningReward(judge), LLMJudgeReward(judge)):
        cols = columns()
        cols.pop("reference_chain")
        with pytest.raises(ValueError, match="needs the item column 'reference_chain'"):
            reward(["p"] * 4, COMPLETIONS, [[]] * 4, **cols)
        with pytest.raises(ValueError, match="item 'it-1' has none"):
            reward(["p"] * 4, COMPLETIONS, [[]] * 4, **columns(reference_chain=[REF, REF, [], REF]))
    with pytest.raises(ValueError, match="judge_weight must lie in"):
        HybridReasoningReward(judge, judge_weight=1.5)
    with pytest.raises(TypeError, match="needs a judge"):
        LLMJudgeReward("smollm2")
    with pytest.raises(ValueError, match=r"reward 'llm_judge': bad keyword argument in reward_kwargs\.llm_judge"):
        resolve_rewards({"llm_judge": 1.0}, {"llm_judge": {"judge_colour": "red"}}, judge=judge)
    with pytest.raises(ValueError, match="asks an LLM judge, but none was configured"):
        resolve_rewards({"llm_judge": 1.0})


def test_registry_and_the_trainers_requirement_check(judge_dir):
    from rl.data.items import Item

    for name in ("consistency", "hybrid_reasoning", "llm_judge", "adaptive_think_accuracy"):
        assert get_reward(name) is REWARDS[name]
    assert get_reward("hybrid_reasoning").requires == ("reference_chain",)
    shared = J.SharedJudge("local", model=str(judge_dir))
    rewards = resolve_rewards({"accuracy": 1.0, "hybrid_reasoning": 1.0, "llm_judge": 0.5}, judge=shared,
                              judge_weight=0.3)
    assert [r.none_is_failure for r in rewards] == [False, True, True] and rewards[1].func.judge_weight == 0.3
    assert shared.built is None and rewards[1].judges == []  # nothing is loaded before the warm-up
    assert rewards[2].warm_up().startswith("judge LocalJudge(") and rewards[1].judges == [shared.built]
    bare = [Item(id="b-0", question="q", choices=CHOICES, answer="the first", audio=np.zeros(160, np.float32))]
    with pytest.raises(ValueError, match="'hybrid_reasoning' requires 'reference_chain' on every item"):
        check_requirements(rewards, bare)


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

class Recorded:
    """A reward as TRL sees it (same ``__name__``), recording what TRL passed and what the reward returned."""

    def __init__(self, reward):
        self.reward, self.calls = reward, []
        self.__name__ = reward.__name__

    def __call__(self, prompts, completions, completion_ids, **columns):
        values = self.reward(prompts, completions, completion_ids, **columns)
        self.calls.append((completions, columns, values))
        return values


def test_rewards_run_unchanged_in_trl_grpo_trainer_on_a_chat_dataset(tmp_path, tok, judge_dir):
    """All rewards inside ``trl.GRPOTrainer`` on a chat dataset. Nothing rests on sampling luck: the policy is taught
    until its greedy reply is right, sampling is near-greedy and seeded, and the assertions are on what the reward
    functions received and returned."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    policy = tiny_lm.build_model(tok, seed=1)
    questions = [f"Question {i}: which tone is higher? Choices: the first; the second." for i in range(4)]
    chats = [[{"role": "user", "content": q}] for q in questions]
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    target = "<think>Sound 1: a high tone, long, loud. So the first tone is higher.</think><answer>the first</answer>"
    tiny_lm.teach(policy, tok, texts, [target] * 4, steps=300)
    for text in texts:  # the precondition, checked: greedy decoding gives the taught reply
        ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
        out = policy.generate(ids, max_new_tokens=40, do_sample=False, pad_token_id=tok.pad_token_id)
        assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == target
    data = Dataset.from_dict({"prompt": chats, "answer": ["the first"] * 3 + ["the second"],  # every pair pays one
                              "choices": [CHOICES] * 4,
                              "reference_chain": [REF] * 4, "id": [f"q{i}" for i in range(4)],
                              "difficulty": ["easy", "hard"] * 2})
    judge = J.LocalJudge(str(judge_dir), batch_size=4)
    funcs = [Recorded(f) for f in (accuracy_reward, format_reward, consistency_reward,
                                   HybridReasoningReward(judge, judge_weight=0.5), LLMJudgeReward(judge),
                                   adaptive_think_accuracy_reward)]
    args = GRPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=40, max_steps=2, learning_rate=1e-5, logging_steps=1, report_to="none",
                      save_strategy="no", use_cpu=True, bf16=False, seed=0, disable_tqdm=True, temperature=0.05)
    GRPOTrainer(model=policy, reward_funcs=funcs, args=args, train_dataset=data, processing_class=tok).train()

    accuracy, fmt, consistency, hybrid, llm, adaptive = funcs
    assert len(accuracy.calls) == 2  # one call per step, every reward
    for completions, columns_, values in accuracy.calls:
        assert all(isinstance(c, list) and c[-1]["role"] == "assistant" for c in completions)  # TRL's chat form
        texts_ = [c[-1]["content"] for c in completions]
        assert values == [1.0 if t == target and a == "the first" else 0.0 for t, a in zip(texts_, columns_["answer"])]
        assert texts_ == [target] * len(texts_)  # near-greedy sampling of the taught reply
    for (_, _, acc_values), (_, _, h), (_, _, q), (_, _, f), (_, _, c) in zip(
            accuracy.calls, hybrid.calls, llm.calls, fmt.calls, consistency.calls):
        assert f == [1.0] * len(f) and c == [1.0] * len(c)  # well formed, thinks, concludes what it answers
        paid = [i for i, v in enumerate(acc_values) if v == 1.0]
        assert paid and all(h[i] > 0 and q[i] > 0 for i in paid)  # correct answers are judged and paid
        assert all(h[i] == 0.0 and q[i] == 0.0 for i in range(len(h)) if i not in paid)
    assert judge.stats.judged == 1 and judge.stats.calls >= 2  # one distinct think text; the rest from the cache
    assert all(v is not None for _, _, values in adaptive.calls for v in values)
