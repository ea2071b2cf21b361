"""The model organism: a tiny Qwen3-Omni-MoE thinker built from code (``model``), its base-training recipe
(``recipe``, plain data) and its base training (``train_base``).

The names of ``rl.organism.model`` load on first use (PEP 562), so ``rl.organism.recipe`` imports without torch:
``adt-probe train-base --help`` answers without loading a model library.

Examples
--------
>>> from rl.organism import load_organism
>>> model, processor = load_organism()            # doctest: +SKIP
"""

import importlib

__all__ = ["AUDIO_CONFIG", "ORGANISM_DIR", "SPECIAL_TOKENS", "TEXT_CONFIG", "AudioQwen3OmniProcessor", "build_config",
           "build_model", "build_processor", "calibrated_audio", "load_organism", "load_processor", "read_manifest",
           "recorded_config", "train_tokenizer"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("rl.organism.model"), name)
    raise AttributeError(f"module 'rl.organism' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__ + ["model", "recipe", "train_base"])
