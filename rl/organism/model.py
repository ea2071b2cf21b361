"""The model organism: a tiny Qwen3-Omni-MoE thinker, its tokenizer and its processor, built here from code.

The organism is a real ``Qwen3OmniMoeThinkerForConditionalGeneration`` (the Audio-DeepThinker paper's model family):
an audio encoder (Whisper-style mel front end, conv downsampling, transformer layers) feeding an MoE text decoder in
which every layer routes each token to the top-2 of 8 experts. Its weights ship in ``rl/assets/organism`` beside
the tokenizer and processor, so ``load_organism()`` (or ``from_pretrained`` on that folder) needs no download.

Examples
--------
>>> from rl.organism import load_organism
>>> model, processor = load_organism()            # doctest: +SKIP
>>> model.config.text_config.num_experts          # doctest: +SKIP
8
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen3OmniMoeThinkerConfig,
    Qwen3OmniMoeThinkerForConditionalGeneration,
    WhisperFeatureExtractor,
)
from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import Qwen3OmniMoeProcessor

from rl.data import prompts
from rl.data.items import SAMPLE_RATE

ASSETS = Path(__file__).resolve().parents[1] / "assets"
ORGANISM_DIR = ASSETS / "organism"

#: Qwen3-Omni's special tokens plus the reasoning and answer delimiters. Order fixes their ids.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_start|>", "<|audio_end|>", "<|audio_pad|>",
                  "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
                  "<think>", "</think>", "<answer>", "</answer>")
#: Names the Qwen3-Omni processor reads from its tokenizer (``tokenizer.audio_token`` and so on).
NAMED_TOKENS = {"audio_token": "<|audio_pad|>", "image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>",
                "audio_bos_token": "<|audio_start|>", "audio_eos_token": "<|audio_end|>"}

#: Sizes of the organism. The text decoder is what adt_probe studies: 12 MoE layers, 8 experts, top-2, no dense layer.
TEXT_CONFIG = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=12, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=32, moe_intermediate_size=128, num_experts=8,
                   num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                   max_position_embeddings=512, router_aux_loss_coef=0.01,
                   rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6],
                                    "interleaved": True})
AUDIO_CONFIG = dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=256, d_model=64,
                    downsample_hidden_size=16, max_source_positions=200, n_window=50, n_window_infer=100)
#: The thinker class insists on a vision tower; the organism never sees an image, so it is the smallest that builds.
VISION_CONFIG = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, deepstack_visual_indexes=[0],
                     patch_size=4, num_position_embeddings=16)


class AudioQwen3OmniProcessor(Qwen3OmniMoeProcessor):
    """The Qwen3-Omni processor for audio and text only.

    ``Qwen3OmniMoeProcessor`` requires a video processor, and transformers' video processors need torchvision,
    which cannot be installed beside the pinned CPU torch. This subclass drops the image and video processors and
    keeps everything else of the parent: the Whisper feature extractor, the audio-token expansion
    (``<|audio_pad|>`` repeated once per encoder output frame) and the chat template. With torchvision present the
    parent class works on the same folder's tokenizer and feature extractor.
    """

    def __init__(self, feature_extractor=None, tokenizer=None, chat_template=None):
        super(Qwen3OmniMoeProcessor, self).__init__(feature_extractor, tokenizer, chat_template=chat_template)
        for name in ("image_token", "audio_token", "video_token", "image_token_id", "audio_token_id",
                     "video_token_id", "vision_bos_token", "vision_eos_token", "audio_bos_token", "audio_eos_token"):
            setattr(self, name, getattr(self.tokenizer, name))


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 640) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``corpus`` and wrap it with the Qwen3-Omni special tokens.

    The byte-level alphabet means any text encodes (no unknown token), so user datasets work with the organism.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   padding_side="left", extra_special_tokens=dict(NAMED_TOKENS),
                                   chat_template=prompts.CHAT_TEMPLATE, model_max_length=TEXT_CONFIG[
                                       "max_position_embeddings"])


def build_processor(tokenizer: PreTrainedTokenizerFast) -> AudioQwen3OmniProcessor:
    """The processor: a 128-bin Whisper feature extractor at 16 kHz (as Qwen3-Omni's) and ``tokenizer``."""
    fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=SAMPLE_RATE, padding_side="right")
    return AudioQwen3OmniProcessor(feature_extractor=fe, tokenizer=tokenizer, chat_template=prompts.CHAT_TEMPLATE)


def build_config(tokenizer: PreTrainedTokenizerFast, **text_overrides) -> Qwen3OmniMoeThinkerConfig:
    """The organism's config; token ids come from ``tokenizer`` so model and tokenizer always agree.

    ``text_overrides`` change the text decoder (tests use ``num_hidden_layers=2`` for speed).
    """
    return Qwen3OmniMoeThinkerConfig(
        text_config=dict(TEXT_CONFIG, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, **text_overrides),
        audio_config=dict(AUDIO_CONFIG, output_dim=TEXT_CONFIG["hidden_size"]),
        vision_config=dict(VISION_CONFIG, out_hidden_size=TEXT_CONFIG["hidden_size"]),
        audio_token_id=tokenizer.audio_token_id, image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id, audio_start_token_id=tokenizer.audio_bos_token_id,
        vision_start_token_id=tokenizer.vision_bos_token_id, audio_end_token_id=tokenizer.audio_eos_token_id,
        # Only the talker (absent here) reads user_token_id; the first token of "user" keeps the field honest.
        user_token_id=tokenizer("user", add_special_tokens=False)["input_ids"][0])


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0,
                **text_overrides) -> Qwen3OmniMoeThinkerForConditionalGeneration:
    """A freshly initialised organism (random weights, seeded); ``text_overrides`` as in ``build_config``."""
    torch.manual_seed(seed)
    model = Qwen3OmniMoeThinkerForConditionalGeneration(build_config(tokenizer, **text_overrides))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def load_processor(path: str | Path = ORGANISM_DIR) -> AudioQwen3OmniProcessor:
    """Load the organism's processor (tokenizer + Whisper feature extractor + chat template) from ``path``."""
    return AudioQwen3OmniProcessor.from_pretrained(str(path))


def load_organism(path: str | Path = ORGANISM_DIR, *, dtype: torch.dtype = torch.float32):
    """Load a model and its processor from a folder written by ``save_pretrained`` (the shipped organism by default).

    Returns
    -------
    (Qwen3OmniMoeThinkerForConditionalGeneration in eval mode, AudioQwen3OmniProcessor)
    """
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no model in {path}: expected config.json and model.safetensors there. "
                                "Train the organism with `python -m rl.organism.train_base` or pass the right folder.")
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type != Qwen3OmniMoeThinkerConfig.model_type:
        raise ValueError(f"{path} holds a {model_type!r} model, not a Qwen3-Omni-MoE thinker: loading it as the "
                         "organism would initialise its weights at random. Load it with "
                         "analyses.models.load_pretrained (or adt_probe.load_model), which uses the class it names.")
    model, info = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(
        str(path), dtype=dtype, use_safetensors=True, output_loading_info=True)
    if info["missing_keys"] or info["mismatched_keys"]:  # transformers would have initialised them at random
        raise ValueError(f"{path}: weights missing from the checkpoint {sorted(info['missing_keys'])[:5]} or of the "
                         f"wrong shape {sorted(map(str, info['mismatched_keys']))[:5]}; was it saved completely?")
    return model.eval(), load_processor(path)


def calibrated_audio(path: str | Path) -> bool:
    """Whether the model in ``path`` learned to hear calibrated clips (``rl.data.tasks.render(calibrated=True)``):
    synthetic items for a model must be rendered the way it was trained on them.

    An organism folder says so in its manifest's ``train_config``, a ``train-base`` checkpoint in its trainer state's
    config; a GRPO checkpoint hears as the model its run started from (its config's ``model``). False for any other
    folder (another model) and for organisms trained before the option existed.
    """
    path = Path(path)
    config = recorded_config(path) or {}
    if "calibrated_audio" in config:
        return bool(config["calibrated_audio"])
    start = config.get("model")
    if start == "organism":  # a training config's name for the shipped organism
        start = ORGANISM_DIR
    if isinstance(start, (str, Path)) and Path(start).resolve() != path.resolve():
        return calibrated_audio(start)
    return False


def recorded_config(path: str | Path) -> dict | None:
    """The training config written beside the model in ``path``: an organism manifest's ``train_config``, else the
    config in a checkpoint's trainer state (``train-base``'s or a GRPO run's); None when there is neither."""
    path = Path(path)
    manifest = path / "manifest.json"
    if manifest.exists() and "train_config" in (content := json.loads(manifest.read_text())):
        return content["train_config"]
    state = path / "trainer_state" / "state.json"
    return json.loads(state.read_text()).get("config") if state.exists() else None


def read_manifest(path: str | Path = ORGANISM_DIR) -> dict:
    """The organism's manifest: training config, seed, sha256 of every file, training time and measured accuracy."""
    return json.loads((Path(path) / "manifest.json").read_text())
