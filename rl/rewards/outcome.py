"""Rewards on the outcome: the answer's correctness, the completion's shape, and Audio-Thinker's adaptive
think-accuracy (think on hard questions, answer directly on easy ones). No model is involved.

Examples
--------
>>> accuracy_reward(["p"] * 2, ["<think>\\n</think><answer>yes</answer>", "no answer"], [[], []], answer=["yes"] * 2)
[1.0, 0.0]
>>> format_reward(["p"], [[{"role": "assistant", "content": "<think>hm</think><answer>yes</answer>"}]], [[]])
[1.0]
"""

from __future__ import annotations

import numpy as np

from rl.rewards.registry import parse_completions, register_reward

__all__ = ["accuracy_reward", "adaptive_think_accuracy_reward", "format_reward"]


@register_reward("accuracy")
def accuracy_reward(prompts: list, completions: list, completion_ids: list, *, answer: list[str],
                    **kwargs) -> list[float]:
    """1.0 when the text inside the last ``<answer>...</answer>`` equals the item's answer exactly, else 0.0."""
    return [1.0 if p.answer == a else 0.0 for p, a in zip(parse_completions(completions), answer)]


@register_reward("format")
def format_reward(prompts: list, completions: list, completion_ids: list, **kwargs) -> list[float]:
    """1.0 for a well-formed completion with a non-empty think block, 0.5 well-formed with an empty one, else 0.0.

    Well formed: ``<think>...</think>`` then ``<answer>...</answer>`` and nothing else (``prompts.parse_completion``).
    Why 0.5 for the empty think block: the base organism answers in exactly that shape (Qwen3's non-thinking mode),
    so the format part stays satisfied while it learns, and writing a think block is worth the other half. The half
    is paid for *any* think text; what the text says is the job of the similarity / judge rewards.
    """
    return [(1.0 if p.thought else 0.5) if p.well_formed else 0.0 for p in parse_completions(completions)]


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
    parsed = parse_completions(completions)
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
