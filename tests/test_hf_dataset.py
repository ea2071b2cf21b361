"""rl.data.items.to_hf_dataset: items as a datasets.Dataset with an Audio column and the reward columns, which the
rewards read unchanged (TRL passes every column but the prompt as keyword arguments)."""

import io
import json

import datasets
import numpy as np
import pytest
import soundfile as sf

from rl.data.items import SAMPLE_RATE, to_hf_dataset
from rl.data.tasks import generate_items
from rl.rewards import accuracy_reward, format_reward


def test_columns_audio_and_prompts():
    items = generate_items(4, seed=2)
    ds = to_hf_dataset(items, written_facts=True, decode_audio=False)
    assert ds.column_names == ["prompt", "audio", "id", "question", "choices", "answer", "reference_chain", "family",
                               "difficulty", "meta"]
    assert isinstance(ds.features["audio"], datasets.Audio) and ds.features["audio"].sampling_rate == SAMPLE_RATE
    for it, row in zip(items, ds):
        audio, rate = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
        assert rate == SAMPLE_RATE and np.abs(audio - it.audio).max() <= 1 / 32768 + 1e-7  # PCM-16
        assert row["answer"] == it.answer and row["choices"] == it.choices
        assert row["reference_chain"] == it.reference_chain and json.loads(row["meta"]) == json.loads(
            json.dumps(it.meta))
        system, user = row["prompt"]
        assert system["role"] == "system" and user["role"] == "user"
        assert it.meta["description"] in user["content"] and it.question in user["content"]


def test_rewards_read_the_columns_unchanged():
    items = generate_items(3, seed=4)
    ds = to_hf_dataset(items, decode_audio=False)
    completions = [f"<think>x</think><answer>{it.answer}</answer>" for it in items[:2]] + ["<answer>no</answer>"]
    columns = {k: ds[k] for k in ds.column_names if k != "prompt"}
    assert accuracy_reward(ds["prompt"], completions, None, **columns) == [1.0, 1.0, 0.0]
    assert format_reward(ds["prompt"], completions, None, **columns)[:2] == [1.0, 1.0]


def test_items_without_audio_and_written_facts_without_a_description():
    items = generate_items(2, seed=4)
    items[0].audio = None
    ds = to_hf_dataset(items, decode_audio=False)
    assert ds[0]["audio"] is None and ds[1]["audio"]["bytes"]
    items[1].meta = {}
    with pytest.raises(ValueError, match="no meta\\['description'\\]"):
        to_hf_dataset(items, written_facts=True)
