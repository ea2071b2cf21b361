"""Safe loading: weights only from safetensors, states only from safetensors and JSON, no remote code."""

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]
SOURCES = [p for pkg in ("adt_probe", "rl", "analyses") for p in (ROOT / pkg).rglob("*.py")]


def test_no_pickle_no_unsafe_torch_load_no_remote_code():
    for path in SOURCES:
        text = path.read_text()
        assert not re.search(r"^\s*import pickle|^\s*from pickle", text, re.M), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
        assert "trust_remote_code=True" not in text, path


def test_a_pickled_checkpoint_is_refused(tiny_organism, processor, tmp_path):
    """A folder with weights only as pytorch_model.bin (pickle) is not loaded."""
    from rl.organism import load_organism

    tiny_organism.config.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    torch.save(tiny_organism.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        load_organism(tmp_path)
