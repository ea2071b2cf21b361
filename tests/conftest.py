"""Shared fixtures: a tokenizer and processor trained on a small corpus, a tiny random organism, a few items."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def items():
    from rl.tasks import generate_items

    return generate_items(14, seed=11)


@pytest.fixture(scope="session")
def tokenizer():
    from rl import organism
    from rl.train_base import tokenizer_corpus

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
