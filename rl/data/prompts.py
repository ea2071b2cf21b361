"""Prompts, the chat template and the parsing of completions: the one place that says what the model reads and writes.

A completion has the Qwen3 shape ``<think>...</think>`` then the reply; for a question the reply is
``<answer>CHOICE</answer>``. In *non-thinking* mode (Qwen3's ``enable_thinking=False``) the think block is empty.

Examples
--------
>>> from rl.data.prompts import parse_completion
>>> parse_completion("<think>\\nSound 1: a high tone.\\n</think>\\n\\n<answer>yes</answer>")
Completion(think='Sound 1: a high tone.', answer='yes', has_think_block=True, well_formed=True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from rl.data.items import Item

SYSTEM = "You are an audio assistant. Listen to the clip and answer."
DESCRIBE = "Describe each sound in order."
THINK_INSTRUCTION = ("First think step by step inside <think> </think>: describe the sounds, then reason. "
                     "Then give the answer inside <answer> </answer>.")
ANSWER_INSTRUCTION = "Answer with one of the choices inside <answer> </answer>."
EMPTY_THINK = "<think>\n\n</think>\n\n"
#: Tokens a completion that may reason gets (evaluation, recording, and the GRPO configs): the longest reference
#: completion of the synthetic tasks is 133 tokens of the organism's tokenizer, a four-sound highest-longest chain
#: (``check_completion_budget`` refuses a budget that cuts them).
MAX_NEW_TOKENS = 144

#: Qwen3-style template. Content is a string or a list of parts ``{"type": "audio"}`` / ``{"type": "text"}``;
#: ``enable_thinking=False`` pre-fills an empty think block in the generation prompt, as Qwen3 does.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)

Mode = Literal["answer", "think", "describe"]
#: Who writes the notes a think block is pre-filled with: ``"given"``, the clip's correct facts (the model goes on
#: after them); ``"own"``, only their first word (the block forced open: the model describes the clip itself, then
#: goes on). See :func:`notes_prefill`.
Notes = Literal["given", "own"]


def format_choices(choices: list[str]) -> str:
    return "Choices: " + "; ".join(choices) + "."


def user_text(item: Item, mode: Mode) -> str:
    """The user's words for ``item`` in ``mode``: a direct question, a think-first question, or describe."""
    if mode == "describe":
        return DESCRIBE
    instruction = THINK_INSTRUCTION if mode == "think" else ANSWER_INSTRUCTION
    return f"{item.question} {format_choices(item.choices)} {instruction}"


def messages(item: Item, mode: Mode, *, audio: bool = True, context: str | None = None) -> list[dict]:
    """Chat messages for one item. ``context`` replaces the audio by written facts (the text-only skill)."""
    parts: list[dict] = [{"type": "audio"}] if audio else []
    if context is not None:
        parts.append({"type": "text", "text": f"Sounds: {context}\n"})
    parts.append({"type": "text", "text": user_text(item, mode)})
    # Without audio the content is one string: what every chat template (not only the organism's) renders
    content = parts if audio else "".join(p["text"] for p in parts)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]


def target(item: Item, mode: Mode) -> str:
    """The supervised completion of the base organism: never a reasoning chain, an empty think block first."""
    if mode == "describe":
        return EMPTY_THINK + item.meta["description"] + "<|im_end|>"
    return "<think>\n\n" + answer_tail(item) + "<|im_end|>"


def answer_tail(item: Item) -> str:
    """The end of every completion that answers ``item`` after its think block: ``</think>``, then the answer (the
    think text before it ends with a newline; an empty block is ``"<think>\\n\\n"``).

    >>> from rl.data.tasks import generate_items
    >>> item = generate_items(1, seed=0)[0]
    >>> answer_tail(item) == f"</think>\\n\\n<answer>{item.answer}</answer>"
    True
    """
    return f"</think>\n\n<answer>{item.answer}</answer>"


def notes_prefill(item: Item, notes: Notes) -> str:
    """The start of the assistant's turn that pre-fills ``item``'s think block (synthetic items: their
    ``meta["description"]``).

    >>> from rl.data.tasks import generate_items
    >>> item = generate_items(1, seed=0)[0]
    >>> notes_prefill(item, "given") == f"<think>\\n{item.meta['description']}\\n"
    True
    >>> notes_prefill(item, "own")
    '<think>\\nSound'
    """
    if notes not in ("given", "own"):
        raise ValueError(f"notes={notes!r}: the think block's notes are 'given' (the clip's facts) or 'own' (the "
                         "model writes them); pass None for no pre-filled notes")
    description = item.meta["description"]
    return f"<think>\n{description}\n" if notes == "given" else "<think>\n" + description.split(" ", 1)[0]


def reference_completion(item: Item) -> str | None:
    """The completion that reasons as ``item``'s reference chain does: every step in the think block, then the
    answer (None for an item without a chain). Its length in tokens is what a completion budget must hold."""
    if not item.reference_chain:
        return None
    return "<think>\n" + " ".join(item.reference_chain) + "\n" + answer_tail(item)


def completion_budget(tokenizer, items: list[Item], max_new_tokens: int) -> dict:
    """How ``max_new_tokens`` compares with the items' reference reasoning (``reference_completion`` in tokens).

    Returns
    -------
    ``{"max_new_tokens", "items_with_chains", "items_cut", "longest", "longest_item"}``: ``items_cut`` reference
    completions are longer than the budget; ``longest`` tokens (item ``longest_item``; 0 and None without chains).
    """
    texts = {it.id: t for it in items if (t := reference_completion(it)) is not None}
    lengths = dict(zip(texts, (len(ids) for ids in tokenizer(list(texts.values()))["input_ids"]))) if texts else {}
    longest_item = max(lengths, key=lengths.get) if lengths else None
    return {"max_new_tokens": max_new_tokens, "items_with_chains": len(lengths),
            "items_cut": sum(n > max_new_tokens for n in lengths.values()),
            "longest": lengths.get(longest_item, 0), "longest_item": longest_item}


def budget_problem(budget: dict, where: str) -> str | None:
    """What is wrong with a ``completion_budget`` and how to fix it; None when every reference completion fits."""
    if not budget["items_cut"]:
        return None
    return (f"{where}: {budget['items_cut']} of {budget['items_with_chains']} items reason in more than "
            f"max_new_tokens = {budget['max_new_tokens']} tokens (the longest, {budget['longest_item']!r}, takes "
            f"{budget['longest']} for its reference completion); a completion cut there has no answer and scores 0. "
            f"Raise max_new_tokens to at least {budget['longest']}, or leave out the longer items.")


def check_completion_budget(tokenizer, items: list[Item], max_new_tokens: int, where: str) -> None:
    """Refuse a completion budget shorter than the items' reference reasoning.

    A completion cut at ``max_new_tokens`` has no answer and scores 0, so a budget shorter than the reference chains
    punishes exactly the reasoning the rewards pay for, without a word (the organism's demo at 96 tokens cut every
    four-sound highest-longest chain, about 130 tokens, and RL taught it to fail that family).

    Raises
    ------
    ValueError : naming how many items' reference completions do not fit, the longest, and the fix.
    """
    problem = budget_problem(completion_budget(tokenizer, items, max_new_tokens), where)
    if problem:
        raise ValueError(problem)


@dataclass(frozen=True)
class Completion:
    """A parsed completion.

    think : the stripped text inside the first ``<think>...</think>`` ('' if empty or absent).
    answer : the stripped text inside the last ``<answer>...</answer>``, or None.
    has_think_block : a ``<think>`` block was opened and closed.
    well_formed : exactly one think block first, then exactly one answer block, nothing else but whitespace.
    """

    think: str
    answer: str | None
    has_think_block: bool
    well_formed: bool

    @property
    def thought(self) -> bool:
        """True when the think block holds text: the *think-rate* counts these."""
        return bool(self.think)


_THINK = re.compile(r"<think>(.*?)</think>", re.S)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_WELL_FORMED = re.compile(r"\s*<think>(?:(?!<think>|</think>).)*</think>\s*<answer>(?:(?!<answer>).)*</answer>\s*",
                          re.S)


def parse_completion(text: str) -> Completion:
    """Split a completion into think text and answer (special tokens such as ``<|im_end|>`` are dropped first)."""
    text = text.replace("<|im_end|>", "").replace("<|endoftext|>", "")
    think = _THINK.search(text)
    answers = _ANSWER.findall(text)
    return Completion(think=think.group(1).strip() if think else "",
                      answer=answers[-1].strip() if answers else None,
                      has_think_block=think is not None,
                      well_formed=_WELL_FORMED.fullmatch(text) is not None)
