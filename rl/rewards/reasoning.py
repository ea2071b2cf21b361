"""Rewards on the reasoning text itself: whether the think block's conclusion agrees with the completion's answer.

(The rewards that compare the reasoning with a reference chain through an LLM judge and sentence embeddings live in
:mod:`rl.rewards.judged`.)

Examples
--------
>>> think_conclusion("The first tone is low, so the second is higher.", ["the first", "the second"])
1
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rl.rewards.registry import parse_completions, register_reward

__all__ = ["consistency_reward", "named_choices", "think_conclusion"]

_NUMBER_WORDS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
                 "7": "seven", "8": "eight", "9": "nine", "10": "ten"}
_LEADING = re.compile(r"^(?:it|the|a|an)\s+", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


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


def named_choices(text: str, choices: Sequence[str]) -> list[int]:
    """Indices of the choices ``text`` names, in the order of their first mention, each once.

    >>> named_choices("The dog bark comes before the car horn.", ["the car horn", "the dog bark"])
    [1, 0]
    """
    return list(dict.fromkeys(i for _, i in _mentions(text, _choice_patterns(choices))))


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
    for k, p in enumerate(parse_completions(completions)):
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
