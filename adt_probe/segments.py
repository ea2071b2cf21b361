"""Label every token of a chat sequence: system, user, audio, think, answer or other.

Labels come from the text the tokens spell, not from token ids, so they work with any tokenizer: one whose
``<think>`` is a single special token (Qwen3) and one that splits it into ``<``, ``think``, ``>`` (SmolLM2). Chat
turns are recognised in ChatML (``<|im_start|>role ... <|im_end|>``, Qwen and SmolLM) and Llama-3 layouts.

Rules, in order: tokens of an audio span (``<|audio_start|> ... <|audio_end|>`` and audio pad tokens) are ``audio``;
inside an assistant turn, tokens from ``<think>`` to ``</think>`` (tags included) are ``think``, unless the block
holds only whitespace (an empty block, Qwen3's non-thinking mode: ``other``), and from ``<answer>`` to ``</answer>``
are ``answer``; the rest of a system or user turn takes the role's name; everything else, including
assistant text outside both blocks, chat headers of the assistant and padding, is ``other``.

Examples
--------
>>> from adt_probe.segments import segment_tokens
>>> labels = segment_tokens(tokenizer, batch["input_ids"])      # doctest: +SKIP
>>> labels.shape == tuple(batch["input_ids"].shape)              # doctest: +SKIP
True
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

SEGMENTS = ("system", "user", "audio", "think", "answer", "other")

_TURNS = [re.compile(r"<\|im_start\|>(system|user|assistant)(.*?)(?:<\|im_end\|>|$)", re.S),
          re.compile(r"<\|start_header_id\|>(system|user|assistant)<\|end_header_id\|>(.*?)(?:<\|eot_id\|>|$)",
                     re.S)]
_AUDIO = re.compile(r"<\|audio_start\|>.*?(?:<\|audio_end\|>|$)|<\|audio_pad\|>|<\|AUDIO\|>", re.S)
# An empty think block (Qwen3's non-thinking mode writes "<think>\n\n</think>") holds no reasoning: its tags and
# whitespace stay "other", so a model that does not think has no think tokens (its analyses fall back to all tokens).
# Whitespace as raw vocabulary strings spell it: byte-level BPE (Ġ space, Ċ newline, ĉ tab), SentencePiece (▁, and
# byte fallback <0x0A>).
_EMPTY_THINK = re.compile(r"<think>(?:\s|[\u0120\u010a\u0109\u2581]|<0x0[9AD]>|<0x20>)*(?:</think>)?")
_BLOCKS = {"think": re.compile(r"<think>.*?(?:</think>|$)", re.S),
           "answer": re.compile(r"<answer>.*?(?:</answer>|$)", re.S)}


def _token_strings(tokenizer, ids: Sequence[int]) -> list[str]:
    # Raw vocabulary strings keep one character per byte-level symbol, so tag text such as "<think>" survives
    # even when it is split into several tokens; decode() would merge and may change lengths.
    return [t if isinstance(t, str) else "" for t in tokenizer.convert_ids_to_tokens(list(ids))]


def segment_row(tokenizer, ids: Sequence[int]) -> np.ndarray:
    """Labels of one sequence, shape (len(ids),), dtype ``<U6``."""
    pieces = _token_strings(tokenizer, ids)
    starts = np.cumsum([0] + [len(p) for p in pieces])[:-1]
    text = "".join(pieces)
    char_label = np.full(len(text) + 1, "other", dtype="<U6")
    for pattern in _TURNS:
        for m in pattern.finditer(text):
            role = m.group(1)
            if role != "assistant":
                char_label[m.start():m.end()] = role
            else:
                for name, block in _BLOCKS.items():
                    for b in block.finditer(text, m.start(2), m.end(2)):
                        if not (name == "think" and _EMPTY_THINK.fullmatch(b.group())):
                            char_label[b.start():b.end()] = name
    for m in _AUDIO.finditer(text):
        char_label[m.start():m.end()] = "audio"
    # A token belongs to the region of its first non-empty character.
    return np.array([char_label[s] if len(p) else "other" for s, p in zip(starts, pieces)], dtype="<U6")


def segment_tokens(tokenizer, input_ids, attention_mask=None) -> np.ndarray:
    """A segment label per token.

    Parameters
    ----------
    tokenizer : the model's tokenizer (or a processor with a ``tokenizer`` attribute).
    input_ids : shape (batch, seq) or (seq,), tensor, array or nested list of token ids.
    attention_mask : optional, same shape; padding positions (mask 0) are labelled ``other``.

    Returns
    -------
    numpy array of str, same shape as ``input_ids``, values in ``SEGMENTS``.
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    ids = np.asarray(input_ids.tolist() if hasattr(input_ids, "tolist") else input_ids)
    single = ids.ndim == 1
    ids = np.atleast_2d(ids)
    labels = np.stack([segment_row(tokenizer, row.tolist()) for row in ids])
    if attention_mask is not None:
        mask = np.atleast_2d(np.asarray(attention_mask.tolist() if hasattr(attention_mask, "tolist")
                                        else attention_mask)).astype(bool)
        labels[~mask] = "other"
    return labels[0] if single else labels


def segment_names(labels) -> list[str]:
    """The segment rows of a result: the six chat segments, then the user's own labels (sorted) found in ``labels``.

    Parameters
    ----------
    labels : (tokens,) array of str, a recording's ``segment`` coordinate.
    """
    own = sorted(set(np.unique(np.asarray(labels).astype(str)).tolist()) - set(SEGMENTS))
    return [*SEGMENTS, *own]
