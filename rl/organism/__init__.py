"""The model organism: a tiny Qwen3-Omni-MoE thinker built from code (``model``) and its base training
(``train_base``).

Examples
--------
>>> from rl.organism import load_organism
>>> model, processor = load_organism()            # doctest: +SKIP
"""

from rl.organism.model import (
    AUDIO_CONFIG,
    ORGANISM_DIR,
    SPECIAL_TOKENS,
    TEXT_CONFIG,
    AudioQwen3OmniProcessor,
    build_config,
    build_model,
    build_processor,
    load_organism,
    load_processor,
    read_manifest,
    train_tokenizer,
)

__all__ = ["AUDIO_CONFIG", "ORGANISM_DIR", "SPECIAL_TOKENS", "TEXT_CONFIG", "AudioQwen3OmniProcessor", "build_config",
           "build_model", "build_processor", "load_organism", "load_processor", "read_manifest", "train_tokenizer"]
