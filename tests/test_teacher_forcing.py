"""adt_probe.teacher_force: prompt + completion, left padded, with think and answer segments."""

import numpy as np
import pytest

import adt_probe
from rl.data.tasks import generate_items


def test_completions_follow_their_prompts_with_think_and_answer_segments(processor):
    tok = processor.tokenizer
    prompts = [[{"role": "user", "content": "Which tone is higher?"}], "<|im_start|>user\nCount.<|im_end|>\n"
               "<|im_start|>assistant\n"]
    completions = ["<think>the second is higher</think><answer>the second</answer>",
                   "<think>three beeps</think><answer>3</answer><|im_end|>ignored after the end"]
    batch = adt_probe.teacher_force(tok, prompts, completions)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape[0] == 2 and (mask[:, -1] == 1).all()  # left padded: every row ends with a real token
    text = [tok.decode(row[m.bool()]) for row, m in zip(ids, mask)]
    assert text[0].endswith("<answer>the second</answer><|im_end|>") and "ignored" not in text[1]
    assert text[0].startswith(tok.apply_chat_template(prompts[0], tokenize=False, add_generation_prompt=True))
    segments = adt_probe.segment_tokens(tok, ids, mask)
    for row in range(2):
        assert {"think", "answer", "user"} <= set(segments[row][mask[row].bool().numpy()])


def test_audio_goes_through_the_processor_and_records_with_segments(processor, tiny_organism):
    from rl.data import collate

    items = generate_items(2, seed=3)
    batch = adt_probe.teacher_force(processor, collate.prompt_texts(processor, items, "think"),
                                    ["<think>a low tone</think><answer>x</answer>"] * 2,
                                    audio=[it.audio for it in items])
    assert "input_features" in batch
    ds = adt_probe.record(tiny_organism, batch, tokenizer=processor.tokenizer)
    counts = ds.segment.to_series().value_counts()
    assert counts["think"] > 0 and counts["answer"] > 0 and counts["audio"] > 0
    assert np.isfinite(adt_probe.crystallization(ds, n_boot=20).mean_crystallization_layer.sel(segment="think"))


def test_bad_input_names_the_fix(processor):
    tok = processor.tokenizer
    with pytest.raises(ValueError, match="one completion per prompt"):
        adt_probe.teacher_force(tok, ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="wrap a single one"):
        adt_probe.teacher_force(tok, "a", "c")
    with pytest.raises(ValueError, match="not an audio processor"):
        adt_probe.teacher_force(tok, ["a"], ["c"], audio=[np.zeros(16_000, np.float32)])
