"""Shared fixtures: a tokenizer and processor trained on a small corpus, a tiny random organism, a few items."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def items():
    from rl.data.tasks import generate_items

    return generate_items(14, seed=11)


@pytest.fixture(scope="session")
def tokenizer():
    from rl import organism
    from rl.organism.train_base import tokenizer_corpus

    return organism.train_tokenizer(tokenizer_corpus(200, seed=1), vocab_size=400)


@pytest.fixture(scope="session")
def processor(tokenizer):
    from rl import organism

    return organism.build_processor(tokenizer)


@pytest.fixture(scope="session")
def tiny_organism(tokenizer):
    """A random organism with the shipped architecture but 2 decoder layers (fast)."""
    from rl import organism

    return organism.build_model(tokenizer, seed=0, num_hidden_layers=2).eval()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the test (GRPO and judge tests: faster than two on a shared 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_organism, processor):
    """The 2-layer random organism saved as a model folder (what a training config's ``model`` names)."""
    path = tmp_path_factory.mktemp("tiny") / "model"
    tiny_organism.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tok():
    """The tokenizer of the tiny text models in ``rl/testing.py`` (judges, TRL runs)."""
    from rl import testing as tiny_lm

    return tiny_lm.build_tokenizer()
