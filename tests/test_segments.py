"""Segment labels from the chat structure, for tokenizers with and without single-token tags."""

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from adt_probe.segments import SEGMENTS, segment_tokens
from rl.data import collate


def runs(labels) -> list[str]:
    """Collapse consecutive equal labels: ['a', 'a', 'b'] -> ['a', 'b']."""
    return [str(x) for i, x in enumerate(labels) if i == 0 or x != labels[i - 1]]


def test_organism_chat_is_segmented(processor, items):
    target = "<think>\nSound 1: a high tone.\n</think>\n\n<answer>yes</answer><|im_end|>"
    batch = collate.encode_supervised(processor, items[:2], ["think", "answer"],
                                      [target, "<think>\n\n</think>\n\n<answer>no</answer><|im_end|>"])
    labels = segment_tokens(processor, batch["input_ids"], batch["attention_mask"])
    assert labels.shape == tuple(batch["input_ids"].shape) and set(np.unique(labels)) <= set(SEGMENTS)
    assert runs(labels[0][batch["attention_mask"][0].bool().numpy()]) == [
        "system", "other", "user", "audio", "user", "other", "think", "other", "answer", "other"]
    tok = processor.tokenizer
    ids = batch["input_ids"][0].tolist()
    think_text = tok.decode([i for i, lab in zip(ids, labels[0]) if lab == "think"])
    assert think_text == "<think>\nSound 1: a high tone.\n</think>"
    assert tok.decode([i for i, lab in zip(ids, labels[0]) if lab == "answer"]) == "<answer>yes</answer>"
    # padding (left) is "other"; every audio pad token is "audio"
    assert (labels[batch["attention_mask"] == 0] == "other").all()
    assert (labels[batch["input_ids"] == tok.audio_token_id] == "audio").all()


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer that splits "<think>" into single characters, as tokenizers without such special tokens do."""
    alphabet = sorted(set("abcdefghijklmnopqrstuvwxyz<>/|_ \n:.!?"))
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(alphabet)}, unk_token="?"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_split_tags_are_found_in_text():
    tok = char_tokenizer()
    text = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>ab</think>x<answer>c</answer><|im_end|>"
    ids = tok(text)["input_ids"]
    labels = segment_tokens(tok, ids)
    assert labels.shape == (len(text),)
    spelled = "".join(tok.convert_ids_to_tokens(ids))
    assert spelled == text
    assert "".join(c for c, lab in zip(text, labels) if lab == "think") == "<think>ab</think>"
    assert "".join(c for c, lab in zip(text, labels) if lab == "answer") == "<answer>c</answer>"
    assert "".join(c for c, lab in zip(text, labels) if lab == "user") == "<|im_start|>user\nhi<|im_end|>"


def test_truncated_think_block_runs_to_the_end():
    tok = char_tokenizer()
    text = "<|im_start|>assistant\n<think>still going"
    labels = segment_tokens(tok, tok(text)["input_ids"])
    assert "".join(c for c, lab in zip(text, labels) if lab == "think") == "<think>still going"


def test_an_empty_think_block_is_not_think(processor, items):
    """Qwen3's non-thinking mode writes an empty block: no reasoning, so none of its tokens is labelled think (the
    analyses then fall back to all tokens instead of measuring a newline), while a block with text keeps its tags."""
    batch = collate.encode_supervised(processor, items[:2], ["think", "think"],
                                      ["<think>\n\n</think>\n\n<answer>no</answer><|im_end|>",
                                       "<think>\nhm\n</think>\n\n<answer>no</answer><|im_end|>"])
    labels = segment_tokens(processor, batch["input_ids"], batch["attention_mask"])
    assert "think" not in labels[0] and "answer" in labels[0]
    ids = batch["input_ids"][1].tolist()
    assert processor.tokenizer.decode([i for i, lab in zip(ids, labels[1]) if lab == "think"]) == \
        "<think>\nhm\n</think>"
    tok = char_tokenizer()  # split tags, whitespace of several kinds
    text = "<|im_start|>assistant\n<think> \n \n</think><answer>c</answer><|im_end|>"
    assert "think" not in segment_tokens(tok, tok(text)["input_ids"])
