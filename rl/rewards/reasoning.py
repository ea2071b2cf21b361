"""Reasoning rewards: think/answer consistency, the hybrid reasoning-similarity reward of stage 1, the LLM-judge reward
of stage 2 and Audio-Thinker's adaptive think-accuracy reward.

All have TRL's signature ``f(prompts, completions, completion_ids, **columns) -> list[float | None]`` and register
themselves in ``rl.rewards.registry.REWARDS`` on import (``get_reward`` imports this module on a registry miss), so a
config names them::

    [[stages]]
    rewards = { accuracy = 1.0, format = 0.25, hybrid_reasoning = 1.0 }

    [reward_kwargs.hybrid_reasoning]
    w = 0.5                      # weight of the judge; 1 - w goes to the embedding similarity
    judge_backend = "local"      # or "openai" with judge_base_url = "http://localhost:8000/v1", judge_model = "..."
    judge_model = "smollm2"      # or "gemma3-270m" (rl.judge.packaged.PACKAGED), or a folder with any causal LM
    judge_prompt = "restate-likelihood"   # rl.judge.PROMPTS; a large judge: "criteria-0-9" (score tokens)

Keyword arguments starting with ``judge_`` configure the judge (``rl.judge.make_judge`` without the prefix:
``judge_backend``, ``judge_model``, ``judge_prompt``, ``judge_base_url``, ``judge_timeout``, ``judge_retries``,
``judge_max_failure_fraction``, ``judge_cache_path``, ``judge_batch_size``, ``judge_endpoint``, ``judge_mode``, ...).
The judge is built lazily, once per process and setting (``rl.judge.get_judge``), and caches by content.

``None`` means "not applicable" (the trainer ignores it, like TRL): ``consistency`` without think text, and the judge
rewards when the judge failed for that completion (a failure is never turned into 0; too many failures raise).
Completions may be strings or TRL's conversational form (a list of messages; the last one's content is used).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from rl.data.prompts import parse_completion
from rl.rewards.registry import register_reward

__all__ = ["DEFAULT_W", "EMBEDDING_REWARDS", "JUDGE_REWARDS", "adaptive_think_accuracy_reward", "consistency_reward",
           "hybrid_reasoning_reward", "judge_for", "llm_judge_reward"]

#: The rewards that call the judge (``rl.train.grpo`` builds their judges when a stage starts).
JUDGE_REWARDS = ("hybrid_reasoning", "llm_judge", "chain_reasoning", "chain_judge")  # chain_*: rl/rewards/chain.py
#: The rewards that embed the think text when w < 1 (``rl.train.grpo`` loads the embedder when a stage starts).
EMBEDDING_REWARDS = ("hybrid_reasoning", "chain_reasoning", "chain_alignment")

#: Weight of the judge in the hybrid reward, chosen by benchmarks/judge_validity.py (see its results JSON) for the
#: default in-process judge (SmolLM2-135M, prompt ``restate-likelihood``). Re-measure it for another judge.
DEFAULT_W = 0.5

_NUMBER_WORDS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
                 "7": "seven", "8": "eight", "9": "nine", "10": "ten"}
_LEADING = re.compile(r"^(?:it|the|a|an)\s+", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def _text(completion) -> str:
    """A completion as text: a string, or TRL's conversational list of messages (the last message's content)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


def _parsed(completions: Sequence) -> list:
    return [parse_completion(_text(c)) for c in completions]


def _reference_text(ref) -> str:
    return ref.strip() if isinstance(ref, str) else " ".join(s.strip() for s in ref)


def _check_references(name: str, reference_chain, n: int, ids=None) -> list:
    """The reference chains, or a ValueError naming the reward and the first item without one."""
    if reference_chain is None:
        raise ValueError(f"reward {name!r} needs the item column 'reference_chain' (a list of reasoning steps), but "
                         "the data has no such column; add reference chains or drop the reward")
    for i, ref in enumerate(reference_chain):
        if ref is None or (isinstance(ref, str) and not ref.strip()) or (not isinstance(ref, str) and not
                                                                          any(str(s).strip() for s in ref)):
            which = f"item {ids[i]!r}" if ids is not None else f"completion {i}"
            raise ValueError(f"reward {name!r} needs a reference chain for every item, but {which} has none "
                             "('reference_chain' is empty or None)")
    if len(reference_chain) != n:
        raise ValueError(f"reward {name!r}: {len(reference_chain)} reference chains for {n} completions")
    return list(reference_chain)


# ==================================================================================================================
# consistency
# ==================================================================================================================


def _choice_patterns(choices: Sequence[str]) -> list[tuple[int, re.Pattern]]:
    """(choice index, pattern) pairs; aliases: without a leading article/pronoun ("it rises" -> "rises") and number
    words for digits ("3" -> "three"). Longest alias first, so "very high" wins over "high"."""
    aliases = []
    for i, c in enumerate(choices):
        forms = {c.strip()}
        stripped = _LEADING.sub("", c.strip())
        if stripped:
            forms.add(stripped)
        if c.strip() in _NUMBER_WORDS:
            forms.add(_NUMBER_WORDS[c.strip()])
        aliases += [(i, f) for f in forms if f]
    aliases.sort(key=lambda a: len(a[1]), reverse=True)
    return [(i, re.compile(r"(?<![\w-])" + re.escape(f) + r"(?![\w-])", re.I)) for i, f in aliases]


def _mentions(sentence: str, patterns) -> list[tuple[int, int]]:
    """(position, choice index) of every choice mention, longest alias first, overlapping mentions dropped."""
    taken = [False] * len(sentence)
    found = []
    for i, pat in patterns:
        for m in pat.finditer(sentence):
            if not any(taken[m.start():m.end()]):
                found.append((m.start(), i))
                for k in range(m.start(), m.end()):
                    taken[k] = True
    return sorted(found)


def think_conclusion(think: str, choices: Sequence[str]) -> int | None:
    """Index of the choice the think text concludes with, or None when it names none.

    The conclusion is the *last* choice mentioned in the *last* sentence that mentions any choice (reasoning ends with
    its verdict: "... so the second tone is higher.").
    """
    patterns = _choice_patterns(choices)
    for sentence in reversed([s for s in _SENTENCE_END.split(think) if s.strip()]):
        found = _mentions(sentence, patterns)
        if found:
            return found[-1][1]
    return None


@register_reward("consistency")
def consistency_reward(prompts: list, completions: list, completion_ids: list, *, choices: list | None = None,
                       **kwargs) -> list[float | None]:
    """1.0 when the think block's conclusion agrees with the completion's own answer, else 0.0; None without think.

    The conclusion is found by :func:`think_conclusion` (the last choice named in the last sentence that names one;
    aliases: "rises" for "it rises", "three" for "3"). 0.0 when the think text names no choice, names another one,
    or the completion has no answer. Without a ``choices`` column the answer text itself is the only choice looked
    for. The item's correct answer plays no part: this rewards agreement between thinking and answering.
    """
    out: list[float | None] = []
    for k, p in enumerate(_parsed(completions)):
        if not p.thought:
            out.append(None)
            continue
        if not p.answer:
            out.append(0.0)
            continue
        options = list(choices[k]) if choices is not None and choices[k] else [p.answer]
        if p.answer not in options:  # an answer outside the choices: look for it as one more option
            options.append(p.answer)
        concluded = think_conclusion(p.think, options)
        out.append(1.0 if concluded is not None and options[concluded] == p.answer else 0.0)
    return out


# ==================================================================================================================
# the judge rewards
# ==================================================================================================================


def judge_for(kwargs: dict, reward: str):
    """The process-wide judge configured by the ``judge_*`` keyword arguments (built on first use)."""
    from rl.judge import get_judge

    config = {k.removeprefix("judge_"): v for k, v in kwargs.items() if k.startswith("judge_")}
    try:
        return get_judge(**config)
    except TypeError as exc:
        raise ValueError(f"reward {reward!r}: bad judge setting in reward_kwargs ({exc}); valid: judge_backend, "
                         "judge_model, judge_prompt, judge_base_url, judge_timeout, judge_retries, "
                         "judge_max_failure_fraction, judge_cache_path, judge_batch_size, ...") from exc


def _paid(completions: Sequence, answer: Sequence[str]) -> tuple[list, list[int]]:
    """Parsed completions and the indices the judge rewards pay for: correct answer and non-empty think text."""
    parsed = _parsed(completions)
    return parsed, [i for i, (p, a) in enumerate(zip(parsed, answer)) if p.answer == a and p.thought]


@register_reward("hybrid_reasoning", requires=("reference_chain",))
def hybrid_reasoning_reward(prompts: list, completions: list, completion_ids: list, *, answer: list[str],
                            reference_chain: list | None = None, w: float = DEFAULT_W,
                            embedding_model: str | None = None, **kwargs) -> list[float | None]:
    """The stage-1 reward: ``w * judge + (1 - w) * cosine(embed(think), embed(reference))`` for a correct answer.

    Paid only when the answer is correct (0.0 otherwise, and 0.0 for a correct answer with an empty think block);
    only those completions are judged. The cosine (all-MiniLM-L6-v2 unless ``embedding_model`` names another
    sentence-transformers folder) is clipped to [0, 1], so the reward lies in [0, 1]. None where the judge failed.
    ``w`` = 1 is the judge alone, 0 the embedding alone. ``judge_*`` keywords configure the judge.
    """
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"reward 'hybrid_reasoning': w must lie in [0, 1], got {w}")
    refs = _check_references("hybrid_reasoning", reference_chain, len(completions), kwargs.get("id"))
    parsed, paid = _paid(completions, answer)
    out: list[float | None] = [0.0] * len(completions)
    if not paid:
        return out
    thinks = [parsed[i].think for i in paid]
    judged = judge_for(kwargs, "hybrid_reasoning").score(thinks, [refs[i] for i in paid]) if w > 0 \
        else [0.0] * len(paid)
    if w < 1:
        from rl.rewards.embedding import similarity

        cos = np.clip(similarity(thinks, [_reference_text(refs[i]) for i in paid], embedding_model), 0.0, 1.0)
    else:
        cos = np.zeros(len(paid))
    for i, j, c in zip(paid, judged, cos):
        out[i] = None if j is None else float(w * j + (1.0 - w) * c)
    return out


@register_reward("llm_judge", requires=("reference_chain",))
def llm_judge_reward(prompts: list, completions: list, completion_ids: list, *, answer: list[str],
                     reference_chain: list | None = None, **kwargs) -> list[float | None]:
    """The stage-2 reward: the judge's score in [0, 1] of the think text against the reference chain when the
    answer is correct; 0.0 otherwise (and for an empty think block); None where the judge failed."""
    refs = _check_references("llm_judge", reference_chain, len(completions), kwargs.get("id"))
    parsed, paid = _paid(completions, answer)
    out: list[float | None] = [0.0] * len(completions)
    if paid:
        scores = judge_for(kwargs, "llm_judge").score([parsed[i].think for i in paid], [refs[i] for i in paid])
        for i, s in zip(paid, scores):
            out[i] = s
    return out


# ==================================================================================================================
# adaptive think accuracy (Audio-Thinker)
# ==================================================================================================================

_LABEL_DIFFICULTY = {"easy": 0.0, "medium": 0.5, "hard": 1.0}


@register_reward("adaptive_think_accuracy")
def adaptive_think_accuracy_reward(prompts: list, completions: list, completion_ids: list, *, answer: list[str],
                                   alpha: float = 0.5, difficulty_source: str = "group", **kwargs) -> list[float]:
    """Audio-Thinker's adaptive think-accuracy reward (arXiv 2508.08039): think when the question is hard for the
    policy, answer directly when it is easy.

    The exact formula (ours; the paper's idea, not its code)::

        d = 1 - (accuracy of the completion's group)            # difficulty as the policy experiences it
        r = 1 + alpha * (d if thinks else 1 - d)   if the answer is correct
        r = 0                                      otherwise

    ``thinks`` = the think block holds text. A group is the completions sharing the item ``id`` (else the prompt)
    within this call: the G completions of one prompt. So among correct completions of a hard prompt (d > 1/2)
    thinking earns up to ``alpha`` more than answering directly, and on an easy prompt (d < 1/2) answering directly
    earns more: the advantage of thinking over not thinking is ``alpha * (2d - 1)``. At d = 1/2 they tie.
    ``difficulty_source = "label"`` takes d from the item's ``difficulty`` column instead (easy 0, medium 0.5,
    hard 1; the group's estimate where it is missing). The reward lies in [0, 1 + alpha].

    Caveat: in ``trl.GRPOTrainer`` a group can be split across processes; each process then estimates d from the
    completions it sees.
    """
    if difficulty_source not in ("group", "label"):
        raise ValueError(f"reward 'adaptive_think_accuracy': difficulty_source must be 'group' or 'label', got "
                         f"{difficulty_source!r}")
    parsed = _parsed(completions)
    correct = np.array([p.answer == a for p, a in zip(parsed, answer)], dtype=float)
    ids = kwargs.get("id")
    keys = [str(ids[i]) if ids is not None and ids[i] is not None else str(prompts[i]) for i in range(len(parsed))]
    group_acc: dict[str, list[float]] = {}
    for k, c in zip(keys, correct):
        group_acc.setdefault(k, []).append(c)
    labels = kwargs.get("difficulty")
    out = []
    for i, p in enumerate(parsed):
        if not correct[i]:
            out.append(0.0)
            continue
        d = 1.0 - float(np.mean(group_acc[keys[i]]))
        if difficulty_source == "label" and labels is not None and labels[i] in _LABEL_DIFFICULTY:
            d = _LABEL_DIFFICULTY[labels[i]]
        out.append(1.0 + alpha * (d if p.thought else 1.0 - d))
    return out
