"""The chain rewards (rl.rewards.chain): facts and contradictions on hand-made steps, the rewards' contract, and, with
the real shipped models (all-MiniLM-L6-v2, SmolLM2-135M), that no truncation and no reordering of a chain is paid
more than its complete paraphrase; the judge recall is the same in process and through the OpenAI-compatible path."""

import collections

import pytest

from rl.judge import LocalJudge, OpenAIJudge, SharedJudge
from rl.judge.packaged import load_smollm2
from rl.judge.serve import ModelServer
from rl.rewards import chain as C
from rl.rewards.registry import REWARDS, check_requirements, resolve_rewards

pytestmark = pytest.mark.usefixtures("one_thread")

#: The organism's own style (rl.data.tasks, family highest_longest) and the issue's style (full sentences, measured
#: values with units, an explicit comparison), each with a paraphrase in other words and number formats.
ORGANISM = (["Sound 1: a high tone, long, loud.", "Sound 2: a low tone, medium, loud.",
             "Sound 3: a very low tone, short, medium-loud.", "The highest tone is sound 1 (high).",
             "The longest sound is sound 1 (long).", "They are the same sound, so yes."],
            ["The first sound, long-lasting and loud, is a high-pitched tone.",
             "Sound number 2 is loud and of medium length: a low-pitched tone.",
             "The third sound is a very low-pitched tone, brief and moderately loud.",
             "The highest tone is the first sound (high-pitched).",
             "The longest sound is the first sound (long-lasting).",
             "Yes, since they are the same sound."], "yes")
MEASURED = (["Tone A is a 300 Hz sine wave played at 60 dB.", "Tone B is a 500 Hz sine wave played at 70 dB.",
             "Comparing the two, tone B has the higher frequency (500 Hz against 300 Hz).",
             "Therefore tone B, the second tone, is higher in pitch."],
            ["The first sound is a pure tone of 0.3 kHz, played at 60 decibels.",
             "Then comes a 0.5 kHz tone at 70 decibels.",
             "Its pitch is above the other's, as 0.5 kHz exceeds 0.3 kHz.", "So the second tone has the higher pitch."],
            "the second")


def completion(steps, answer):
    return "<think>\n" + " ".join(steps) + "\n</think><answer>" + answer + "</answer>"


def reward(name, chains, answer, reference, judge=None, **kwargs):
    """The registered reward ``name`` (a judge reward built with ``judge``) on ``chains``, all answering ``answer``."""
    n = len(chains)
    entry = REWARDS[name]
    func = entry.build(judge=judge, **kwargs) if hasattr(entry, "build") else entry
    extra = {} if hasattr(entry, "build") else kwargs
    return func(["q"] * n, [completion(c, answer) for c in chains], [[]] * n, answer=[answer] * n,
                reference_chain=[reference] * n, id=["it"] * n, **extra)


# --- facts, steps, contradictions ------------------------------------------------------------------------------------

def test_facts_normalise_units_number_words_ordinals_and_synonyms():
    a = C.facts("The second tone sits at 0.44 kHz for 250 ms; it is high-pitched, brief and soft.")
    b = C.facts("Tone 2 has a frequency of 440 Hz, lasts 0.25 seconds: high, short and quiet.")
    assert a == b == collections.Counter({"2": 1, "440 Hz": 1, "0.25 s": 1, "pitch:high": 1, "duration:short": 1,
                                          "loudness:quiet": 1, "kind:tone": 1})
    assert C.facts("There are three beeps, so the count is 3.")["3"] == 2
    assert C.facts("the higher one")  == collections.Counter({"cmp:pitch": 1})  # "one" as a pronoun is no number
    assert C.facts("Section one is medium-loud")["loudness:medium"] == 1 and C.facts("Section one")["1"] == 1


def test_split_steps_drops_list_marks_and_repeats():
    assert C.split_steps("1. Sound 1 is high.\n2. Sound 2 is low. Sound 2 is low.  So the first!") == [
        "Sound 1 is high.", "Sound 2 is low.", "So the first!"]


def test_contradictions_need_a_value_the_reference_step_states_otherwise():
    ref = [C.facts(s) for s in MEASURED[0]]
    values = C._chain_values(ref)
    assert not C.contradicts(C.facts("Its pitch is above the other's, as 0.5 kHz exceeds 0.3 kHz."), ref[2], values)
    assert not C.contradicts(C.facts("B ends 200 Hz above A."), ref[2], values)  # a difference of stated values
    assert C.contradicts(C.facts("Then comes a 0.8 kHz tone at 70 decibels."), ref[1], values)
    assert C.contradicts(C.facts("So the first tone has the higher pitch."), ref[3], values)
    organism = [C.facts(s) for s in ORGANISM[0]]
    assert C.contradicts(C.facts("No, since they are different sounds."), organism[5], C._chain_values(organism))


def test_a_conclusion_naming_another_answer_is_found_by_choices_or_by_facts():
    events = ["the car horn", "the dog bark"]
    assert C.concludes_otherwise("The car horn is therefore first.", "the dog bark", events)
    assert not C.concludes_otherwise("The dog bark is therefore first.", "the dog bark", events)
    # several choices named: "A precedes B" states an order, not which answer wins
    assert not C.concludes_otherwise("The dog bark precedes the car horn by 300 ms.", "the dog bark", events)
    trends = ["it rises", "it falls", "it stays the same"]
    assert C.concludes_otherwise("The loudness goes down over the clip.", "it rises", trends)  # by facts: no choice
    assert not C.concludes_otherwise("The loudness goes up: it ends 20 decibels louder.", "it rises", trends)
    # numbers are read through the choices only: a conclusion restates measured values
    assert not C.concludes_otherwise("Since 132 beats per minute exceeds 100, section two is quicker.", "the second")


def test_a_flipped_conclusion_costs_a_contradiction_only_when_the_answer_is_given():
    # event names are outside the fact lexicon: only the answer and its choices tell the flipped conclusion apart
    ref = ["A dog barks at 1.2 seconds.", "A car horn sounds at 3.0 seconds.", "So the dog bark happens first."]
    para = ["At 1200 ms we hear a dog barking.", "At 3000 ms the horn of a car is heard.",
            "The dog bark is therefore first."]
    flipped = [*para[:2], "The car horn is therefore first."]
    texts, columns = [" ".join(para), " ".join(flipped)], {"answers": ["the dog bark"] * 2,
                                                            "choices": [["the car horn", "the dog bark"]] * 2}
    blind, told = C.chain_scores(texts, [ref] * 2), C.chain_scores(texts, [ref] * 2, **columns)
    assert [s.contradictions for s in blind] == [0, 0] and [s.contradictions for s in told] == [0, 1]
    assert told[1].alignment == pytest.approx(blind[1].alignment * C.CONTRADICTION_FACTOR)
    assert told[0] == blind[0]
    paid = REWARDS["chain_alignment"](["q"] * 2, [completion(t, "the dog bark") for t in (para, flipped)], [[]] * 2,
                                      answer=["the dog bark"] * 2, reference_chain=[ref] * 2,
                                      choices=columns["choices"])
    assert paid == pytest.approx([s.alignment for s in told])
    # a think text that stops after its facts names a choice ("noise") without concluding it: no contradiction
    ref = ["Sound 1: a high tone, short, loud.", "Sound 2: noise, short, quiet.",
           "Sound 1 is a tone, so the tone comes first."]
    facts_only = C.chain_scores([" ".join(ref[:2])], [ref], answers=["the tone"], choices=[["the tone", "the noise"]])
    assert facts_only[0].contradictions == 0


# --- the rewards' contract -------------------------------------------------------------------------------------------

def test_chain_alignment_pays_only_correct_answers_with_think_text():
    ref, para, answer = MEASURED
    out = REWARDS["chain_alignment"](["q"] * 3, [completion(para, answer), completion(para, "the first"),
                                                 "<think>\n</think><answer>the second</answer>"], [[]] * 3,
                                     answer=[answer] * 3, reference_chain=[ref] * 3)
    assert out[1:] == [0.0, 0.0] and 0.5 < out[0] <= 1.0


def test_chain_rewards_are_registered_need_references_and_check_the_weight():
    judge = SharedJudge("local", model="smollm2", prompt="recall-likelihood")
    rewards = resolve_rewards({"chain_reasoning": 1.0, "chain_alignment": 1.0, "chain_judge": 1.0}, judge=judge)
    assert all(r.requires == ("reference_chain",) for r in rewards)
    assert [r.none_is_failure for r in rewards] == [True, False, True]
    assert judge.built is None and all(r.judges == [] for r in rewards)  # nothing loaded before a warm-up
    item = collections.namedtuple("Item", "id reference_chain")("x", None)
    with pytest.raises(ValueError, match="requires 'reference_chain'"):
        check_requirements(rewards, [item])
    with pytest.raises(ValueError, match="judge_weight must lie in"):
        reward("chain_reasoning", [MEASURED[1]], MEASURED[2], MEASURED[0], judge=judge, chain_weight=1.5)
    with pytest.raises(ValueError, match="none was configured"):
        resolve_rewards({"chain_judge": 1.0})
    with pytest.raises(ValueError, match="needs the item column 'reference_chain'"):
        REWARDS["chain_alignment"](["q"], [completion(MEASURED[1], "x")], [[]], answer=["x"])
    # no judge at all: chain_reasoning with chain_weight 0 is chain_alignment
    alone = resolve_rewards({"chain_reasoning": 1.0}, {"chain_reasoning": {"chain_weight": 0.0}})[0]
    assert alone.judges == [] and alone.warm_up().startswith("no judge")
    ref, para, answer = MEASURED
    assert reward("chain_reasoning", [para], answer, ref, chain_weight=0.0) == reward("chain_alignment", [para],
                                                                                     answer, ref)


def test_chain_alignment_warms_up_its_embedder():
    assert resolve_rewards({"chain_alignment": 1.0})[0].warm_up() == "embedder all-MiniLM-L6-v2"


def test_a_score_token_prompt_is_refused_for_the_judge_recall(smollm2):
    model, tok = smollm2
    judge = LocalJudge(model, tokenizer=tok, model_id="smollm2", prompt="criteria-0-9")
    with pytest.raises(ValueError, match="needs a likelihood prompt"):
        reward("chain_judge", [MEASURED[1]], MEASURED[2], MEASURED[0], judge=judge)
    with pytest.raises(ValueError, match="needs a likelihood prompt"):
        C.ChainJudgeReward(judge).warm_up()


# --- with the shipped models: truncation and shuffling never beat the complete paraphrase ----------------------------

@pytest.fixture(scope="module")
def smollm2():
    return load_smollm2()


@pytest.fixture(scope="module")
def recall_judge(smollm2):
    """The in-process SmolLM2 judge with the recall prompt (one per module: its content cache is shared)."""
    model, tok = smollm2
    return LocalJudge(model, tokenizer=tok, model_id="smollm2", prompt="recall-likelihood", batch_size=16)


@pytest.mark.parametrize("chain", [ORGANISM, MEASURED], ids=["organism", "measured"])
def test_no_truncation_is_paid_more_than_the_complete_paraphrase(chain, recall_judge):
    ref, para, answer = chain
    cut = [para[:k] for k in range(1, len(para))] + [ref[:1]]  # every step boundary, and the first step verbatim
    for name in ("chain_reasoning", "chain_alignment"):
        full, *truncated = reward(name, [para, *cut], answer, ref, judge=recall_judge)
        assert full > max(truncated), (name, full, truncated)
    # the judge recall alone at every step boundary (a verbatim reference step can lift it: the judge copies)
    full, *truncated = reward("chain_judge", [para, *cut[:-1]], answer, ref, judge=recall_judge)
    assert full > max(truncated), ("chain_judge", full, truncated)


@pytest.mark.parametrize("chain", [ORGANISM, MEASURED], ids=["organism", "measured"])
def test_no_reordering_is_paid_more_than_the_ordered_paraphrase(chain, recall_judge):
    ref, para, answer = chain
    n = len(para)
    swaps = [[*para[:i], para[i + 1], para[i], *para[i + 2:]] for i in range(n - 1)]  # every adjacent swap
    reordered = [para[::-1], para[1:] + para[:1], *swaps]
    for name in ("chain_reasoning", "chain_alignment"):
        full, *others = reward(name, [para, *reordered], answer, ref, judge=recall_judge)
        assert full > max(others), (name, full, others)


def test_judge_recall_is_the_same_in_process_and_through_a_server(smollm2, recall_judge):
    model, tok = smollm2
    server = ModelServer(model, tok, name="smollm2")
    url = server.start()
    ref, para, answer = MEASURED
    chains = [para, para[:1], para[::-1]]
    try:
        served = OpenAIJudge(url, "smollm2", endpoint="completions", prompt="recall-likelihood", tokenizer=tok,
                             max_workers=1, timeout=300.0)
        remote = reward("chain_judge", chains, answer, ref, judge=served)
    finally:
        server.stop()
    local = reward("chain_judge", chains, answer, ref, judge=recall_judge)
    assert remote == pytest.approx(local, abs=0.03)
    assert local[0] > local[1] and all(0.0 <= v <= 1.0 for v in local)
    calls = recall_judge.stats.judged
    reward("chain_judge", chains, answer, ref, judge=recall_judge)
    assert recall_judge.stats.judged == calls  # a second pass is answered from the content cache
