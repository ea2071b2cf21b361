"""Turn items into model inputs: prompts for generation, and prompt + target pairs with loss labels for training."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import BatchFeature

from rl.data import prompts
from rl.data.items import SAMPLE_RATE, Item


class TextProcessor:
    """A text-only model's tokenizer in the shape of an audio processor (``.tokenizer``, ``__call__``,
    ``save_pretrained``), so the GRPO loop trains text LMs on items without audio (``item.audio is None``) too.
    Pads on the left, as generation needs."""

    def __init__(self, tokenizer):
        tokenizer.padding_side = "left"
        self.tokenizer = tokenizer

    def __call__(self, text, padding=True, return_tensors="pt", **kwargs) -> BatchFeature:
        if kwargs.get("audio"):
            raise ValueError("this model reads text only, but the items have audio: use an audio model, or items "
                             "without audio")
        return BatchFeature(dict(self.tokenizer(list(text), padding=padding, return_tensors=return_tensors,
                                                add_special_tokens=False)))

    def save_pretrained(self, path) -> None:
        self.tokenizer.save_pretrained(path)


def prompt_texts(processor, items: Sequence[Item], mode: prompts.Mode, *, contexts=None) -> list[str]:
    """Chat-formatted prompt strings ending with the assistant's turn opener; one ``<|audio_pad|>`` per clip
    (none for a text-only item, ``item.audio is None``)."""
    contexts = contexts or [None] * len(items)
    return [processor.tokenizer.apply_chat_template(
        prompts.messages(it, mode, audio=ctx is None and it.audio is not None, context=ctx), tokenize=False,
        add_generation_prompt=True) for it, ctx in zip(items, contexts)]


def encode(processor, texts: Sequence[str], audios: Sequence | None) -> BatchFeature:
    """Run the processor: tokenises ``texts`` (left padded) and computes 128-bin log-mel features of ``audios``.

    Returns
    -------
    BatchFeature with ``input_ids`` and ``attention_mask`` of shape (batch, seq) and, with audio,
    ``input_features`` (batch, 128, frames) and ``feature_attention_mask`` (batch, frames); 100 frames per second.
    """
    audios = [a for a in (audios or []) if a is not None]  # text-only items have none
    kwargs = {"audio": audios, "sampling_rate": SAMPLE_RATE} if audios else {}
    return processor(text=list(texts), padding=True, return_tensors="pt", **kwargs)


def encode_prompts(processor, items: Sequence[Item], mode: prompts.Mode) -> BatchFeature:
    """Generation inputs for ``items`` in ``mode`` (each with its clip)."""
    return encode(processor, prompt_texts(processor, items, mode), [it.audio for it in items])


def encode_supervised(processor, items: Sequence[Item], modes: Sequence[str],
                      targets: Sequence[str | tuple[str, str]]) -> BatchFeature:
    """Prompt + target sequences with ``labels`` = -100 everywhere except on the target tokens.

    A mode ``"context"`` writes the clip's facts into the prompt as text instead of the audio: the skill of answering
    from written facts, which is what later makes a reasoning chain useful; ``"chain"`` does the same with the
    think-first prompt (the target then reasons from the written facts). Other modes keep the audio and use their
    own prompt. A target ``(read, trained)`` puts ``read`` after the prompt without a loss on it (text the model reads
    as its own, but is not taught to write) and trains ``trained``; ``trained`` must start with a special token
    (e.g. ``</think>``) so that its tokens do not depend on the text before it.
    """
    targets = [t if isinstance(t, tuple) else ("", t) for t in targets]
    contexts = [it.meta["description"] if m in ("context", "chain") else None for it, m in zip(items, modes)]
    prompt_modes = [{"context": "answer", "notes": "think", "chain": "think"}.get(m, m) for m in modes]
    texts = [prompt_texts(processor, [it], pm, contexts=[ctx])[0] + read + trained
             for it, pm, ctx, (read, trained) in zip(items, prompt_modes, contexts, targets)]
    audio_items = [it for it, ctx in zip(items, contexts) if ctx is None]
    return _with_target_labels(processor, encode(processor, texts, [it.audio for it in audio_items]),
                               [t for _, t in targets])


def encode_plain(processor, prompts_: Sequence[str], targets: Sequence[str]) -> BatchFeature:
    """``prompt + target`` as plain text (no chat template, no audio), with ``labels`` on the target tokens only.

    Short sequences for the base training's skill phase: about a third of a chat-formatted item's tokens, so a step
    costs about a third as much. ``target`` must start where a token starts (e.g. with a space or a newline).
    """
    return _with_target_labels(processor, encode(processor, [p + t for p, t in zip(prompts_, targets)], None), targets)


def _with_target_labels(processor, batch: BatchFeature, targets: Sequence[str]) -> BatchFeature:
    """Add ``labels`` (batch, seq): -100 except on the last tokens of each row, as many as its target has."""
    tok = processor.tokenizer
    labels = torch.full_like(batch["input_ids"], -100)
    for row, target in enumerate(targets):  # left padding: the target is the last n tokens of every row
        n = len(tok(target, add_special_tokens=False)["input_ids"])
        labels[row, -n:] = batch["input_ids"][row, -n:]
    batch["labels"] = labels
    return batch
