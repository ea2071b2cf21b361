"""Teacher-forced inputs: prompts followed by completions, one sequence each, ready for :func:`adt_probe.record`.

Recording a prompt alone measures nothing about reasoning: the ``think`` and ``answer`` segments are in the
completion. :func:`teacher_force` puts each completion after its prompt (chat-formatted when the prompt is a list of
messages), closes it with the end-of-turn token, and tokenises the batch left-padded, so that
:func:`adt_probe.segment_tokens` labels the completion's ``<think>`` and ``<answer>`` blocks.

Examples
--------
>>> inputs = adt_probe.teacher_force(tokenizer, [[{"role": "user", "content": "2+2?"}]],
...                                  ["<think>two and two</think><answer>4</answer>"])   # doctest: +SKIP
>>> ds = adt_probe.record(model, inputs, tokenizer=tokenizer)                             # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["teacher_force"]


def _prompt_text(tokenizer, prompt: str | Sequence[Mapping[str, Any]]) -> str:
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("a prompt given as chat messages needs a tokenizer with a chat template; "
                         "pass the prompt as text (already formatted) instead")
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)


def _closed(completion: str, end: str | None) -> str:
    """The completion cut after its first ``end`` (what a generation stops at), or with ``end`` appended."""
    if not end:
        return completion
    head, found, _ = completion.partition(end)
    return head + end if found else completion + end


def teacher_force(processor_or_tokenizer, prompts: Sequence[str | Sequence[Mapping[str, Any]]],
                  completions: Sequence[str], *, audio: Sequence | None = None, sampling_rate: int = 16_000,
                  end: str | None = "eos", add_special_tokens: bool = False):
    """Inputs for a teacher-forced pass over ``prompt + completion`` of every pair, left padded.

    Parameters
    ----------
    processor_or_tokenizer : a tokenizer, or a processor with a ``.tokenizer`` (and a feature extractor for audio).
    prompts : n prompts, each a formatted string or a list of chat messages (``{"role", "content"}``), which is
        rendered with the tokenizer's chat template and the assistant's generation prompt.
    completions : n completion texts (e.g. ``"<think>...</think><answer>...</answer>"``).
    audio : n mono clips (1-D float arrays at ``sampling_rate``) for an audio processor; None for text.
    end : appended to a completion that lacks it, and where a completion is cut (text after a first ``end`` is
        dropped); ``"eos"`` means the tokenizer's EOS token, None leaves completions as given.
    add_special_tokens : let the tokenizer add its BOS/EOS (chat templates already write their own).

    Returns
    -------
    transformers.BatchEncoding / BatchFeature with ``input_ids`` and ``attention_mask`` of shape (n, seq), int64,
    left padded; with audio also the processor's feature tensors.

    Raises
    ------
    ValueError
        ``prompts`` and ``completions`` differ in length, or are empty; chat messages without a chat template.
    """
    if isinstance(prompts, str) or isinstance(completions, str):
        raise ValueError("prompts and completions are lists (one entry per sequence): wrap a single one in [...]")
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(f"{len(prompts)} prompts and {len(completions)} completions: give one completion per "
                         "prompt (and at least one)")
    tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
    end = tokenizer.eos_token if end == "eos" else end
    texts = [_prompt_text(tokenizer, p) + _closed(c, end) for p, c in zip(prompts, completions)]
    if audio is not None:
        if getattr(processor_or_tokenizer, "feature_extractor", None) is None:
            raise ValueError("audio was given but this is not an audio processor: pass the model's processor")
        return processor_or_tokenizer(text=texts, audio=list(audio), sampling_rate=sampling_rate, padding=True,
                                      return_tensors="pt")
    if tokenizer.pad_token is None:
        raise ValueError("the tokenizer has no pad token, so a batch cannot be padded: set "
                         "tokenizer.pad_token = tokenizer.eos_token (padding is masked out)")
    return tokenizer(texts, padding=True, padding_side="left", return_tensors="pt",
                     add_special_tokens=add_special_tokens)
