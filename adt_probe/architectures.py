"""Where routers, decoder blocks, the final norm and the unembedding live, per model family, and how each router scores.

Everything family-specific in adt-probe is data in :data:`FAMILIES`, one row per ``config.model_type``; the rest of
the library asks :func:`architecture` for an :class:`ArchitectureSpec` and never branches on the family.

A row's values are either constants or callables taking the (text) config, so that config attribute names, which
differ per family (``num_experts`` / ``num_local_experts`` / ``n_routed_experts`` ...), are named in the table and
read at resolve time. :class:`Attr` is the common callable (``Attr("num_experts_per_tok")``); the ``moe_layers``
rules (:func:`every_layer`, :func:`sparse_step`, :func:`from_layer`, :func:`layer_type_is`, ...) are the others.

Routing is recomputed from the router's *input* rather than read from its output because in transformers 5.x the
routers disagree about what they return (checked against transformers 5.23):

- ``(logits, topk_weights, topk_indices)``: every other family in the table (Qwen MoE lineage incl. the
  Qwen3-Omni thinker, OLMoE, Mixtral, MiniMax, DeepSeek V2/V3 and derivatives, GPT-OSS, Granite MoE, ...). The
  weights include ``routed_scaling_factor`` (except Beam, which scales the MoE output instead: same effect) and
  the indices are unsorted in the ``sorted=False`` families. Afmoe, LFM2-MoE, MiniMax-M2 and HY-V3 routers take
  the selection bias as a second forward argument. Laguna's logits are already soft-capped.
- Llama 4: ``(scores, logits)``; ``scores`` is dense ``(tokens, n_experts)``, the sigmoid of the top-k logits
  and 0 elsewhere.
- DBRX: the logits only; top-k and the p-norm happen in ``DbrxFFN.route_tokens_to_experts``.
- JetMoE: ``(index_sorted_experts, batch_index, batch_gates, expert_size, logits)``: the top-k is grouped by expert.
- PhiMoE: ``(logits, weights, indices)`` but selected with SparseMixer, not top-k (eval-mode rule in :meth:`route`).

Families present in transformers 5.23 but not in the table, and why (add them when needed):

- ``gemma4``: the router RMS-normalises and rescales its input before projecting, returns *probabilities* as its
  first element and multiplies the top-k weights by a learned per-expert scale: none of that fits the
  linear-logits model of a spec row.
- ``deepseek_v4``: the first MoE layers route by a frozen token-id -> expert table (hash routing), not by scores,
  and the scorer is ``sqrtsoftplus``.
- ``inkling``: shared experts take part in the router's normalisation (log-sigmoid over routed + shared logits).
- ``zaya``: the router is an MLP fed by a recurrent router state from the previous layer.
- ``axk2``: grouped top-k fills the dropped groups with 0 instead of -inf (differs once the selection bias is
  negative).
- ``ernie4_5_vl_moe``: separate text and vision expert pools, chosen by token modality.
- ``doge``: product-key expert retrieval, not a router over a fixed expert list.
- ``switch_transformers``, ``nllb_moe``: encoder-decoder models, outside the decoder-block layout used here.
- ``qwen4_exp``: hyper-connections: the residual stream is ``hc_count`` parallel streams with no single final
  norm (its router itself is Qwen-style).
- the multimodal wrappers ``muse_spark``, ``step3p7``, ``mistral_large4``, ``glm5_next`` (no causal-LM text
  class to test cheaply) and the full ``minimax_m3_vl`` / ``dots3_note`` / ``inkling2`` models (their
  ``*_text`` causal LMs are in the table). Their routers are DeepSeek/MiniMax-style; MuSe also multiplies the
  logits by ``output_multiplier`` and Mistral-Large-4 always renormalises.
- ``deepseek_ocr2``, ``unlimited_ocr`` (OCR wrappers around a DeepSeek-V2 decoder), ``openai_privacy_filter`` (a
  token classifier), ``diffusion_gemma`` / ``gemma4_unified`` (Gemma-4 routers), ``vitpose_backbone`` and
  ``granite_docling`` (vision): not causal language models of the kind studied here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CAUSAL_LM",
    "DENSE_FAMILIES",
    "FAMILIES",
    "VLM",
    "ArchitectureSpec",
    "Attr",
    "UnknownArchitectureError",
    "architecture",
    "every_layer",
    "from_layer",
    "get_module",
    "interval_range",
    "layer_type_is",
    "listed",
    "periodic",
    "sparse_step",
]


class UnknownArchitectureError(ValueError):
    """The model's family has no row in :data:`FAMILIES` (and it is not a plain dense causal LM)."""


def get_module(root: nn.Module, path: str) -> Any:
    """Resolve a dotted attribute path (``"model.layers"``, ``"mlp.gate.weight"``; integers index sequences).

    Parameters
    ----------
    root : nn.Module
        Where the path starts.
    path : str
        Dotted path; an empty string returns ``root``.

    Returns
    -------
    nn.Module or torch.Tensor
        Whatever the path names (a module, a parameter or a buffer).

    Raises
    ------
    AttributeError
        Naming the first missing attribute, the path walked so far and the class it was looked up on.
    """
    obj: Any = root
    walked = []
    for part in path.split(".") if path else []:
        try:
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        except (AttributeError, IndexError, TypeError) as err:
            where = ".".join(walked) or "<root>"
            raise AttributeError(
                f"{type(root).__name__}: no attribute {part!r} on {where} ({type(obj).__name__}) "
                f"while resolving {path!r}"
            ) from err
        walked.append(part)
    return obj


# ---------------------------------------------------------------------------------------------------------------
# Values read from the config
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attr:
    """A table value read from the text config: ``Attr("num_experts")`` -> ``config.num_experts``.

    A missing or ``None`` attribute gives ``default``, or raises if there is no default.
    """

    name: str
    default: Any = None

    def __call__(self, cfg: Any) -> Any:
        value = getattr(cfg, self.name, None)
        if value is None:
            if self.default is None:
                raise ValueError(f"{type(cfg).__name__}.{self.name} is needed by its FAMILIES row but is missing/None")
            return self.default
        return value


def _uniform(name: str) -> Callable[[Any], int]:
    """A config attribute that may be a per-layer list (Hunyuan ``moe_topk``); only a constant one is supported."""

    def read(cfg: Any) -> int:
        value = Attr(name)(cfg)
        if isinstance(value, (list, tuple)):
            if len(set(value)) != 1:
                raise NotImplementedError(f"per-layer {name}={value} is not supported (spec holds one value)")
            value = value[0]
        return int(value)

    return read


# Rules for which decoder blocks hold a router. Each factory returns ``rule(cfg, n_layers) -> tuple[int, ...]``.
MoeLayerRule = Callable[[Any, int], tuple[int, ...]]


def every_layer() -> MoeLayerRule:
    """Every block is MoE (Mixtral, OLMoE, GPT-OSS, ...)."""
    return lambda cfg, n: tuple(range(n))


def sparse_step() -> MoeLayerRule:
    """Qwen-MoE rule: ``num_experts > 0``, not in ``mlp_only_layers`` and ``(i + 1) % decoder_sparse_step == 0``."""

    def rule(cfg: Any, n: int) -> tuple:
        if not getattr(cfg, "num_experts", 1):
            return ()
        dense = set(getattr(cfg, "mlp_only_layers", None) or ())
        step = getattr(cfg, "decoder_sparse_step", 1) or 1
        return tuple(i for i in range(n) if i not in dense and (i + 1) % step == 0)

    return rule


def from_layer(attr: str) -> MoeLayerRule:
    """Blocks ``i >= config.<attr>`` are MoE (DeepSeek ``first_k_dense_replace``, LFM2 ``num_dense_layers``)."""
    return lambda cfg, n: tuple(range(getattr(cfg, attr) or 0, n))


def layer_type_is(attr: str, value: str) -> MoeLayerRule:
    """Blocks whose per-layer type list ``config.<attr>[i] == value`` are MoE (``mlp_layer_types``...)."""
    return lambda cfg, n: tuple(i for i in range(n) if getattr(cfg, attr)[i] == value)


def listed(attr: str) -> MoeLayerRule:
    """Blocks listed in ``config.<attr>`` are MoE (Llama 4 ``moe_layers``)."""
    return lambda cfg, n: tuple(i for i in range(n) if i in set(getattr(cfg, attr)))


def periodic(period: str, offset: str) -> MoeLayerRule:
    """Blocks ``i % config.<period> == config.<offset>`` are MoE (Jamba)."""
    return lambda cfg, n: tuple(i for i in range(n) if i % getattr(cfg, period) == getattr(cfg, offset))


def interval_range(interval: str, start: str, end: str) -> MoeLayerRule:
    """Ernie 4.5: ``(i + 1) % interval == 0`` and ``start <= i <= end``."""

    def rule(cfg: Any, n: int) -> tuple:
        every, lo, hi = getattr(cfg, interval), getattr(cfg, start), getattr(cfg, end)
        return tuple(i for i in range(n) if (i + 1) % every == 0 and lo <= i <= hi)

    return rule


# ---------------------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------------------

# Layouts: where decoder blocks, final norm and lm_head sit relative to the model the user holds.
CAUSAL_LM = {"layers": "model.layers", "final_norm": "model.norm", "unembed": "lm_head"}
VLM = {"layers": "model.language_model.layers", "final_norm": "model.language_model.norm", "unembed": "lm_head"}

# Defaults every row starts from (a dense causal LM with no router).
_DEFAULTS: dict[str, Any] = {
    **CAUSAL_LM,
    "router": None,
    "router_weight": "weight",
    "router_bias": None,
    "scoring": "softmax",
    "top_k": 0,
    "n_experts": 0,
    "norm_topk_prob": False,
    "score_bias": None,
    "bias_on_logits": False,
    "n_group": 1,
    "topk_group": 1,
    "group_score": "top2_sum",
    "routed_scaling_factor": 1.0,
    "softmax_after_topk": False,
    "selection": "topk",
    "jitter_eps": 0.0,
    "topk_norm_p": 1.0,
    "logit_softcap": None,
    "moe_layers": lambda cfg, n: (),
    "final_proj": None,
    "logit_scale": 1.0,
    "final_logit_softcap": None,
}

# Qwen2/3-MoE lineage: softmax over all experts, top-k, optional renormalisation.
_QWEN = {
    "router": "mlp.gate",
    "scoring": "softmax",
    "n_experts": Attr("num_experts"),
    "top_k": Attr("num_experts_per_tok"),
    "norm_topk_prob": Attr("norm_topk_prob", default=False),
    "moe_layers": sparse_step(),
}
# Mixtral lineage: softmax, top-k, always renormalised (no config flag).
_MIXTRAL = {
    "router": "mlp.gate",
    "n_experts": Attr("num_local_experts"),
    "top_k": Attr("num_experts_per_tok"),
    "norm_topk_prob": True,
    "moe_layers": every_layer(),
}
# Top-k on the logits, softmax over the k selected (Granite MoE, Aria, JetMoE, GPT-OSS).
_TOPK_THEN_SOFTMAX = {
    "n_experts": Attr("num_local_experts"),
    "top_k": Attr("num_experts_per_tok"),
    "softmax_after_topk": True,
    "moe_layers": every_layer(),
}
# DeepSeek-V3 lineage: sigmoid scores, selection-only bias, group-limited top-k, renormalise, routed scaling.
_DEEPSEEK_V3 = {
    "router": "mlp.gate",
    "scoring": "sigmoid",
    "n_experts": Attr("num_local_experts"),  # what the routers read (an alias of n_routed_experts / num_experts)
    "top_k": Attr("num_experts_per_tok"),
    "norm_topk_prob": Attr("norm_topk_prob", default=False),
    "score_bias": "mlp.gate.e_score_correction_bias",
    "n_group": Attr("n_group", default=1),
    "topk_group": Attr("topk_group", default=1),
    "routed_scaling_factor": Attr("routed_scaling_factor", default=1.0),
    "moe_layers": from_layer("first_k_dense_replace"),
}
_DEEPSEEK_V3_TYPED = {**_DEEPSEEK_V3, "moe_layers": layer_type_is("mlp_layer_types", "sparse")}
# Sigmoid scores with a selection-only bias and renormalisation, no groups (MiniMax-M2 lineage).
_SIGMOID_BIASED = {
    "router": "mlp.gate",
    "scoring": "sigmoid",
    "n_experts": Attr("num_local_experts"),
    "top_k": Attr("num_experts_per_tok"),
    "norm_topk_prob": True,
    "score_bias": "mlp.gate.e_score_correction_bias",
    "moe_layers": every_layer(),
}
# Llama 4: sigmoid of the top-k logits, not renormalised; dense and MoE blocks interleave.
_LLAMA4 = {
    "router": "feed_forward.router",
    "scoring": "sigmoid",
    "n_experts": Attr("num_local_experts"),
    "top_k": Attr("num_experts_per_tok"),
    "moe_layers": listed("moe_layers"),
}

# What some families do to the unembedding's output (see ``logit_scale`` / ``final_logit_softcap`` below).
_GRANITE_LOGITS = {"logit_scale": lambda c: 1.0 / c.logits_scaling}  # logits / logits_scaling
_COHERE_LOGITS = {"logit_scale": Attr("logit_scale", default=1.0)}
_SOFTCAPPED_LOGITS = {"final_logit_softcap": lambda c: getattr(c, "final_logit_softcapping", None) or None}
# Dense decoder-only layouts other than ``CAUSAL_LM``: they need a row only because their paths differ.
_GPT2_LAYOUT = {"layers": "transformer.h", "final_norm": "transformer.ln_f", "unembed": "lm_head"}

#: Dense (router-less) families whose layout or logits differ from a plain ``CAUSAL_LM`` (a dense model of any other
#: family with that layout resolves without a row). Kept apart from the MoE rows only so that tests can tell them
#: apart; :data:`FAMILIES` holds both.
DENSE_FAMILIES: dict[str, dict[str, Any]] = {
    "gpt2": _GPT2_LAYOUT,
    "gpt_neo": _GPT2_LAYOUT,
    "gptj": _GPT2_LAYOUT,
    "codegen": _GPT2_LAYOUT,
    "gpt_bigcode": _GPT2_LAYOUT,
    "bloom": _GPT2_LAYOUT,
    "falcon": _GPT2_LAYOUT,
    "gpt_neox": {"layers": "gpt_neox.layers", "final_norm": "gpt_neox.final_layer_norm", "unembed": "lm_head"},
    "opt": {"layers": "model.decoder.layers", "final_norm": "model.decoder.final_layer_norm",
            "final_proj": "model.decoder.project_out", "unembed": "lm_head"},
    "phi": {"final_norm": "model.final_layernorm"},
    "granite": _GRANITE_LOGITS,
    "cohere": _COHERE_LOGITS,
    "cohere2": _COHERE_LOGITS,
    "gemma2": _SOFTCAPPED_LOGITS,
    "gemma3_text": _SOFTCAPPED_LOGITS,
    "vaultgemma": _SOFTCAPPED_LOGITS,
    "falcon_h1": {"logit_scale": Attr("lm_head_multiplier", default=1.0)},
    "hyperclovax": {"logit_scale": Attr("logits_scaling", default=1.0)},  # MuP: multiplies (Granite divides)
}

#: One row per ``config.model_type``. Keys (all optional; defaults in ``_DEFAULTS``), each a constant or a
#: callable of the text config:
#:
#: - ``layers``, ``final_norm``, ``unembed``: dotted paths from the model (see ``CAUSAL_LM`` / ``VLM``).
#: - ``router``: dotted path from a decoder block to the router module (``None``: dense family).
#: - ``router_weight`` / ``router_bias``: paths inside the router to the projection the *model* uses for logits
#:   (LongCat keeps a ``classifier.bias`` it never applies, so the bias is named explicitly, not discovered).
#: - ``scoring`` (``"softmax"`` / ``"sigmoid"``), ``n_experts``, ``top_k``, ``norm_topk_prob``,
#:   ``routed_scaling_factor``, ``softmax_after_topk``: as in :class:`ArchitectureSpec`.
#: - ``score_bias``: dotted path from a decoder block to a selection-only bias (``None``: no bias), added to the
#:   scores, or to the logits if ``bias_on_logits``.
#: - ``n_group``, ``topk_group``, ``group_score`` (``"top2_sum"`` DeepSeek-V3, ``"max"`` DeepSeek-V2).
#: - ``selection``: ``"topk"`` or ``"sparsemixer"`` (PhiMoE), with ``jitter_eps``.
#: - ``topk_norm_p``: the p of the top-k renormalisation (1 everywhere but DBRX, where it is configurable).
#: - ``logit_softcap``: applied to the logits before scoring (Laguna).
#: - ``moe_layers``: ``rule(cfg, n_layers) -> indices`` (:func:`sparse_step`, :func:`from_layer`, ...).
#: - ``config``: how to reach the text config from ``model.config`` (default ``get_text_config(decoder=True)``).
#: - ``final_proj``: dotted path from the model to a projection applied after the final norm, before the
#:   unembedding (OPT's ``project_out``); a path that resolves to None (the model has none) is skipped.
#: - ``logit_scale``, ``final_logit_softcap``: what the model does to the unembedding's output, in this order:
#:   ``logits * logit_scale`` (Granite divides by ``logits_scaling``, Cohere multiplies by ``logit_scale``), then
#:   ``tanh(logits / cap) * cap`` (Gemma 2/3 ``final_logit_softcapping``). The lens applies both
#:   (:meth:`ArchitectureSpec.readout`), so that the last layer's lens is the model's own distribution.
FAMILIES: dict[str, dict[str, Any]] = {
    # --- Qwen lineage ---------------------------------------------------------------------------------------
    "qwen2_moe": _QWEN,  # the shared expert's sigmoid ``shared_expert_gate`` is not the router
    "qwen3_moe": _QWEN,
    "qwen3_next": _QWEN,
    "qwen3_omni_moe_thinker": {**_QWEN, **VLM},
    "qwen3_omni_moe": {  # the full model: thinker + (optional) talker; the spec describes the thinker
        **_QWEN,
        "layers": "thinker.model.language_model.layers",
        "final_norm": "thinker.model.language_model.norm",
        "unembed": "thinker.lm_head",
        "config": lambda c: c.thinker_config.text_config,
    },
    "qwen3_vl_moe": {**_QWEN, **VLM, "norm_topk_prob": True},  # router always renormalises
    "qwen3_5_moe_text": {**_QWEN, "norm_topk_prob": True, "moe_layers": every_layer()},
    "qwen3_5_moe": {**_QWEN, **VLM, "norm_topk_prob": True, "moe_layers": every_layer()},
    "olmoe": {**_QWEN, "moe_layers": every_layer()},
    "flex_olmo": {**_QWEN, "moe_layers": every_layer()},
    "mellum": {**_QWEN, "moe_layers": layer_type_is("mlp_layer_types", "sparse")},
    "hunyuan_v1_moe": {
        **_QWEN,
        "router_weight": "wg.weight",
        "n_experts": _uniform("num_experts"),
        "top_k": _uniform("moe_topk"),
        "norm_topk_prob": True,
        "moe_layers": every_layer(),
    },
    "ernie4_5_moe": {
        **_QWEN,
        "norm_topk_prob": True,
        "score_bias": "mlp.gate.moe_statics.e_score_correction_bias",  # shape (1, n_experts)
        "moe_layers": interval_range("moe_layer_interval", "moe_layer_start_index", "moe_layer_end_index"),
    },
    "jamba": {
        **_QWEN,
        "router": "feed_forward.router",
        "norm_topk_prob": False,  # top-k of the softmax, left unnormalised
        "final_norm": "model.final_layernorm",
        "moe_layers": periodic("expert_layer_period", "expert_layer_offset"),
    },
    # --- Mixtral lineage ------------------------------------------------------------------------------------
    "mixtral": _MIXTRAL,
    "minimax": _MIXTRAL,
    "dbrx": {
        **_MIXTRAL,
        "layers": "transformer.blocks",
        "final_norm": "transformer.norm_f",
        "router": "ffn.router",
        "router_weight": "layer.weight",
        "n_experts": lambda c: c.ffn_config.moe_num_experts,
        "top_k": lambda c: c.ffn_config.moe_top_k,
        "norm_topk_prob": lambda c: c.ffn_config.moe_normalize_expert_weights is not None,
        "topk_norm_p": lambda c: c.ffn_config.moe_normalize_expert_weights or 1.0,
    },
    "phimoe": {
        **_MIXTRAL,
        "router": "mlp.router",
        "selection": "sparsemixer",
        "jitter_eps": Attr("router_jitter_noise"),
    },
    # --- top-k on logits, softmax over the k ----------------------------------------------------------------
    "gpt_oss": {**_TOPK_THEN_SOFTMAX, "router": "mlp.router", "router_bias": "bias"},
    "granitemoe": {**_TOPK_THEN_SOFTMAX, "router": "block_sparse_moe.router", **_GRANITE_LOGITS},
    "granitemoeshared": {**_TOPK_THEN_SOFTMAX, "router": "block_sparse_moe.router", **_GRANITE_LOGITS},
    "granitemoe_swa": {**_TOPK_THEN_SOFTMAX, "router": "block_sparse_moe.router", **_GRANITE_LOGITS},
    "granitemoehybrid": {**_TOPK_THEN_SOFTMAX, "router": "block_sparse_moe.router", **_GRANITE_LOGITS},
    "aria_text": {
        **_TOPK_THEN_SOFTMAX,
        "router": "mlp.router",
        "n_experts": Attr("moe_num_experts"),
        "top_k": Attr("moe_topk"),
    },
    # JetMoE's attention is a mixture too (``self_attention.experts.router``); the spec covers the MLP router.
    "jetmoe": {**_TOPK_THEN_SOFTMAX, "router": "mlp.router", "router_weight": "layer.weight"},
    "cohere2_moe": {
        **_TOPK_THEN_SOFTMAX,
        "router": "mlp.gate",
        "scoring": Attr("expert_selection_fn"),  # "softmax" (over the top-k logits) or "sigmoid"
        "n_experts": Attr("num_experts"),
        "norm_topk_prob": Attr("norm_topk_prob", default=False),  # only read by the sigmoid variant
        "moe_layers": layer_type_is("mlp_layer_types", "sparse"),
        **_COHERE_LOGITS,
    },
    # --- DeepSeek lineage -----------------------------------------------------------------------------------
    "deepseek_v2": {
        **_DEEPSEEK_V3,
        "scoring": "softmax",
        "n_experts": Attr("num_experts"),
        "norm_topk_prob": False,  # the V2 router never renormalises, whatever config.norm_topk_prob says
        "score_bias": None,
        "group_score": "max",
        "n_group": lambda c: c.n_group if c.topk_method == "group_limited_greedy" else 1,
        "topk_group": lambda c: c.topk_group if c.topk_method == "group_limited_greedy" else 1,
    },
    "deepseek_v3": _DEEPSEEK_V3,
    "glm4_moe": _DEEPSEEK_V3,
    "glm4v_moe": {**_DEEPSEEK_V3, **VLM},
    "dots1": _DEEPSEEK_V3,
    "deepseek_v32": _DEEPSEEK_V3_TYPED,
    "glm4_moe_lite": _DEEPSEEK_V3_TYPED,
    "glm_moe_dsa": _DEEPSEEK_V3_TYPED,
    "mimo_v2_flash": _DEEPSEEK_V3_TYPED,
    "kimi_linear": _DEEPSEEK_V3_TYPED,
    "bailing_hybrid": _DEEPSEEK_V3_TYPED,
    "hy_v4": _DEEPSEEK_V3_TYPED,
    "exaone_moe": {**_DEEPSEEK_V3_TYPED, "n_experts": Attr("num_experts")},
    "axk1": _DEEPSEEK_V3_TYPED,
    "dots3_note_text": _DEEPSEEK_V3_TYPED,
    # Beam applies routed_scaling_factor to the MoE output, not inside the router: same effective weights
    "beam": {**_DEEPSEEK_V3_TYPED, "n_experts": Attr("num_experts"), **_SOFTCAPPED_LOGITS},
    "solar_open": {**_DEEPSEEK_V3, "moe_layers": every_layer()},
    "nemotron_h": {
        **_DEEPSEEK_V3,
        "router": "mixer.gate",
        "score_bias": "mixer.gate.e_score_correction_bias",
        "final_norm": "model.norm_f",
        "moe_layers": layer_type_is("layers_block_type", "moe"),
    },
    "mistral4": {
        **_DEEPSEEK_V3,
        "scoring": "softmax",  # grouped top-k like DeepSeek-V3, but on softmax scores and without a bias
        "score_bias": None,
    },
    "longcat_flash": {
        "router": "mlp.router",
        "router_weight": "classifier.weight",  # the model ignores classifier.bias even when router_bias=True
        "scoring": "softmax",
        "n_experts": lambda c: c.n_routed_experts + (c.zero_expert_num or 0),  # zero (identity) experts included
        "top_k": Attr("moe_topk"),
        "score_bias": "mlp.router.e_score_correction_bias",
        "routed_scaling_factor": Attr("routed_scaling_factor"),
        "moe_layers": every_layer(),
    },
    # --- sigmoid + selection bias, no groups ----------------------------------------------------------------
    "minimax_m2": {**_SIGMOID_BIASED, "score_bias": "mlp.e_score_correction_bias"},  # bias held by the MoE block
    "hy_v3": {
        **_SIGMOID_BIASED,
        "score_bias": "mlp.e_score_correction_bias",
        "routed_scaling_factor": Attr("router_scaling_factor"),
        "moe_layers": layer_type_is("mlp_layer_types", "sparse"),
    },
    "afmoe": {
        **_SIGMOID_BIASED,
        "router": "mlp.router",
        "router_weight": "gate.weight",
        "n_experts": Attr("num_experts"),
        "score_bias": "mlp.expert_bias",
        "routed_scaling_factor": Attr("route_scale", default=1.0),
        "moe_layers": from_layer("num_dense_layers"),
    },
    "lfm2_moe": {
        **_SIGMOID_BIASED,
        "router": "feed_forward.gate",
        "final_norm": "model.embedding_norm",  # LFM2 names its final norm so
        "n_experts": Attr("num_experts"),
        "norm_topk_prob": Attr("norm_topk_prob"),
        "score_bias": lambda c: "feed_forward.expert_bias" if c.use_expert_bias else None,
        "routed_scaling_factor": Attr("routed_scaling_factor", default=1.0),
        "moe_layers": from_layer("num_dense_layers"),
    },
    "laguna": {
        **_SIGMOID_BIASED,
        "n_experts": Attr("num_experts"),
        "logit_softcap": lambda c: c.moe_router_logit_softcapping or None,
        "moe_layers": layer_type_is("mlp_layer_types", "sparse"),
    },
    "minimax_m3_vl_text": {**_SIGMOID_BIASED, "moe_layers": layer_type_is("mlp_layer_types", "sparse")},
    "inkling2_text": {  # note: its residual stream mixes blocks (attention residuals) and its lm_head soft-caps
        **_SIGMOID_BIASED,
        "scoring": Attr("scoring_func"),  # "sigmoid" by default; other ACT2FN scorers are refused
        "routed_scaling_factor": Attr("routed_scaling_factor"),
    },
    "kolibri1": {
        **_QWEN,
        "scoring": "sigmoid",
        "score_bias": "mlp.gate.e_score_correction_bias",
        "bias_on_logits": True,  # top-k of logits + bias; weights are the sigmoid of the chosen logits
        "moe_layers": every_layer(),
    },
    "flint": {**_QWEN, "scoring": "sigmoid"},  # sigmoid top-k, optional renormalisation, no bias
    "llama4_text": _LLAMA4,
    "llama4": {  # the multimodal model wraps a whole Llama4ForCausalLM
        **_LLAMA4,
        "layers": "language_model.model.layers",
        "final_norm": "language_model.model.norm",
        "unembed": "language_model.lm_head",
    },
}

FAMILIES.update(DENSE_FAMILIES)

# Hints that a model has experts, so that an unknown family is refused rather than taken for a dense one.
_MOE_CONFIG_HINTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok")
_MOE_MODULE_HINTS = ("Router", "Gating", "MoE", "Moe", "Experts", "Sparse")


# ---------------------------------------------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------------------------------------------

#: expert counts up to which the router softmax is computed across tokens (``ArchitectureSpec.scores``); above it,
#: row by row is faster (64 experts x 24,576 token-layers: 1.8 vs 23 ms)
SOFTMAX_ACROSS_ROWS_UP_TO = 16


@dataclass(frozen=True)
class ArchitectureSpec:
    """Resolved facts about one model: paths, router scoring, and which blocks are MoE.

    Attributes
    ----------
    family : str
        The :data:`FAMILIES` key (``config.model_type``), e.g. ``"qwen3_moe"``.
    model_class : str
        Class name of the model the spec was resolved from.
    layers : str
        Dotted path from the model to the ``nn.ModuleList`` of decoder blocks.
    router : str or None
        Dotted path from a decoder block to its router module; ``None`` for dense models.
    final_norm, unembed : str
        Dotted paths from the model to the final norm and to the output projection.
    scoring : {"softmax", "sigmoid"}
        How logits become routing scores.
    top_k, n_experts : int
        Experts per token and routed experts per MoE layer (LongCat counts its zero experts).
    norm_topk_prob : bool
        Whether the selected weights are renormalised (to sum 1, or to unit ``topk_norm_p``-norm).
    score_bias : str or None
        Dotted path *from a decoder block* to a bias added to the scores for selection only (DeepSeek-V3
        ``mlp.gate.e_score_correction_bias``; MiniMax-M2, HY-V3, Afmoe and LFM2 keep it on the MoE block and pass
        it to the router, which is why the path starts at the block). Fetch it with :meth:`selection_bias`.
    bias_on_logits : bool
        The selection bias is added to the logits rather than to the scores (Kolibri).
    n_group, topk_group : int
        Group-limited top-k (DeepSeek): experts are split in ``n_group`` groups, only ``topk_group`` are kept.
    routed_scaling_factor : float
        Multiplies the final top-k weights.
    softmax_after_topk : bool
        Top-k is taken on the logits and the softmax runs over the k selected (GPT-OSS, Granite, JetMoE, Aria).
    moe_layers : tuple of int
        Indices of the decoder blocks that have a router.
    router_weight, router_bias : str, str or None
        Paths inside the router module to the logit projection's weight and (applied) bias.
    group_score : {"top2_sum", "max"}
        How a group is scored for group-limited top-k.
    selection : {"topk", "sparsemixer"}
        ``"sparsemixer"``: PhiMoE's eval-mode SparseMixer (top-2, each weight a masked softmax).
    jitter_eps : float
        SparseMixer's relative threshold.
    topk_norm_p : float
        p of the norm used by ``norm_topk_prob`` (DBRX ``moe_normalize_expert_weights``; 1 elsewhere).
    logit_softcap : float or None
        Soft-cap applied to the logits in :meth:`router_logits`: ``tanh(l / cap) * cap`` (Laguna).
    final_proj : str or None
        Dotted path from the model to a projection after the final norm (OPT ``project_out``), or None.
    logit_scale : float
        Multiplies the unembedding's output (Granite ``1 / logits_scaling``, Cohere ``logit_scale``).
    final_logit_softcap : float or None
        Soft-cap of the output logits after the scale: ``tanh(l / cap) * cap`` (Gemma 2/3).
    """

    family: str
    model_class: str
    layers: str
    router: str | None
    final_norm: str
    unembed: str
    scoring: str
    top_k: int
    n_experts: int
    norm_topk_prob: bool
    score_bias: str | None
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    softmax_after_topk: bool = False
    moe_layers: tuple[int, ...] = ()
    bias_on_logits: bool = False
    router_weight: str = "weight"
    router_bias: str | None = None
    group_score: str = "top2_sum"
    selection: str = "topk"
    jitter_eps: float = 0.0
    topk_norm_p: float = 1.0
    logit_softcap: float | None = None
    final_proj: str | None = None
    logit_scale: float = 1.0
    final_logit_softcap: float | None = None

    @property
    def is_moe(self) -> bool:
        """Whether the model has any router."""
        return self.router is not None and bool(self.moe_layers)

    def routers(self, model: nn.Module) -> dict[int, nn.Module]:
        """``{layer index: router module}`` for the MoE blocks of ``model``."""
        if self.router is None:
            return {}
        blocks = get_module(model, self.layers)
        return {i: get_module(blocks[i], self.router) for i in self.moe_layers}

    @property
    def transforms_logits(self) -> bool:
        """Whether the model changes the unembedding's output (a scale or a soft-cap) before its softmax."""
        return self.logit_scale != 1.0 or bool(self.final_logit_softcap)

    def output_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's own transform of the unembedding's output ``(..., vocab)``: scale, then soft-cap."""
        if self.logit_scale != 1.0:
            logits = logits * self.logit_scale
        if self.final_logit_softcap:
            logits = torch.tanh(logits / self.final_logit_softcap) * self.final_logit_softcap
        return logits

    def readout(self, model: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Module]:
        """``(norm, unembed)`` that turn a residual stream into the logits the model itself would give.

        ``norm(h)`` is the final norm followed by :attr:`final_proj` (either absent: skipped), ``(tokens, hidden)``
        -> ``(tokens, d)``; ``unembed(x)`` is the unembedding module itself when the family leaves its output as
        it is (so a lens may use its weight as a plain linear map), else a module applying :meth:`output_logits`
        after it. The logit lens of the last block's output through these equals the model's own log-probs.
        """
        steps = [m for m in (get_module(model, self.final_norm),
                             get_module(model, self.final_proj) if self.final_proj else None) if m is not None]

        def norm(h: torch.Tensor) -> torch.Tensor:
            for step in steps:
                h = step(h)
            return h

        unembed = get_module(model, self.unembed)
        return norm, (_TransformedUnembedding(unembed, self) if self.transforms_logits else unembed)

    def selection_bias(self, block: nn.Module) -> torch.Tensor | None:
        """The selection-only bias of one decoder block as a 1-D fp32 tensor, or ``None`` if the family has none."""
        if self.score_bias is None:
            return None
        return get_module(block, self.score_bias).detach().float().reshape(-1)

    def router_logits(self, router: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Recompute a router's logits in fp32 from its input.

        Parameters
        ----------
        router : nn.Module
            The router module (``get_module(block, spec.router)``).
        hidden : torch.Tensor
            The router's input, ``(..., hidden)``; leading dimensions are flattened.

        Returns
        -------
        torch.Tensor
            ``(tokens, n_experts)`` fp32 logits, soft-capped where the family does so.
        """
        weight = get_module(router, self.router_weight).float()
        bias = get_module(router, self.router_bias).float() if self.router_bias else None
        logits = F.linear(hidden.reshape(-1, hidden.shape[-1]).float(), weight, bias)
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-expert scores before selection: softmax or element-wise sigmoid of the logits, fp32."""
        logits = logits.float()
        if self.scoring != "softmax":
            return logits.sigmoid()
        if logits.shape[-1] <= SOFTMAX_ACROSS_ROWS_UP_TO:
            # a short softmax runs row by row on CPU; along the first dimension of the transpose it vectorises
            # across tokens (8 experts x 24,576 token-layers, one thread: 0.6 vs 3.9 ms)
            return logits.movedim(-1, 0).softmax(dim=0).movedim(0, -1)
        return logits.softmax(dim=-1)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Routing distribution over all experts, ``(tokens, n_experts)``, rows summing to 1.

        For softmax scoring this is the softmax of the logits. For sigmoid scoring it is the sigmoid scores
        divided by their sum over experts: a distribution proportional to what the router ranks experts by
        (without the selection bias), suitable for entropies and divergences but not the model's top-k weights.
        """
        scores = self.scores(logits)
        return scores if self.scoring == "softmax" else scores / scores.sum(dim=-1, keepdim=True)

    def route(self, logits: torch.Tensor, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Select and weight experts exactly as the model does in eval mode (training-time jitter and PhiMoE's
        sampling are not reproduced).

        Parameters
        ----------
        logits : torch.Tensor
            ``(tokens, n_experts)`` logits, e.g. from :meth:`router_logits`.
        bias : torch.Tensor, optional
            The layer's selection-only bias (:meth:`selection_bias`); required when ``score_bias`` is set, since
            a trained bias changes which experts are chosen.

        Returns
        -------
        topk_experts : torch.Tensor
            ``(tokens, top_k)`` int64 expert indices (order not meaningful).
        topk_weights : torch.Tensor
            ``(tokens, top_k)`` fp32 weights matching ``topk_experts``, including ``routed_scaling_factor``.
        """
        if self.score_bias is not None and bias is None:
            raise ValueError(
                f"{self.family} selects experts with a bias ({self.score_bias}); "
                "pass bias=spec.selection_bias(block) to route()"
            )
        logits = logits.float()
        if self.selection == "sparsemixer":
            experts, weights = _sparsemixer(logits, self.jitter_eps)
        elif self.softmax_after_topk and self.scoring == "softmax":
            top_logits, experts = logits.topk(self.top_k, dim=-1)
            weights = top_logits.softmax(dim=-1)
        else:
            scores = self.scores(logits)
            # Kolibri biases the logits; without a bias both rank alike since the scoring is monotonic
            choice = logits if self.bias_on_logits else scores
            if bias is not None:
                choice = choice + bias.float().reshape(-1)
            if self.n_group > 1:
                choice = _mask_groups(choice, self.n_group, self.topk_group, self.group_score)
            experts = choice.topk(self.top_k, dim=-1).indices
            weights = scores.gather(-1, experts)
            if self.norm_topk_prob:
                weights = weights / _p_norm(weights, self.topk_norm_p).clamp_min(1e-20)
        return experts.long(), (weights * self.routed_scaling_factor).float()


class _TransformedUnembedding(nn.Module):
    """An unembedding followed by the family's logit scale and soft-cap (see :meth:`ArchitectureSpec.readout`)."""

    def __init__(self, unembed: nn.Module, spec: ArchitectureSpec):
        super().__init__()
        self.unembed, self.spec = unembed, spec
        self.out_features = getattr(unembed, "out_features", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spec.output_logits(self.unembed(x))


def _mask_groups(choice: torch.Tensor, n_group: int, topk_group: int, group_score: str) -> torch.Tensor:
    """Keep the experts of the ``topk_group`` best groups (DeepSeek group-limited routing), -inf elsewhere."""
    grouped = choice.view(choice.shape[0], n_group, -1)
    group_scores = grouped.topk(2, dim=-1).values.sum(-1) if group_score == "top2_sum" else grouped.amax(-1)
    keep = torch.zeros_like(group_scores, dtype=torch.bool)
    keep.scatter_(1, group_scores.topk(topk_group, dim=-1).indices, True)
    return choice.masked_fill(~keep.repeat_interleave(grouped.shape[-1], dim=1), float("-inf"))


def _p_norm(weights: torch.Tensor, p: float) -> torch.Tensor:
    """The p-norm of each row of (tokens, k) weights, (tokens, 1). For p = 1 (every family but DBRX) a sum of
    absolute values: ``Tensor.norm`` over a short last dimension is thirty times slower on CPU (1.55 vs 0.06 ms at
    24,576 x 2, measured)."""
    if p == 1:
        return weights.abs().sum(dim=-1, keepdim=True)
    return weights.norm(p=p, dim=-1, keepdim=True)


def _sparsemixer(logits: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PhiMoE's eval-mode SparseMixer: two argmax picks, each weighted by a softmax over nearby logits."""
    experts, weights, scores = [], [], logits
    for _ in range(2):
        top, idx = scores.max(dim=-1, keepdim=True)
        # Logits further than 2*eps (relative) below the current max are masked out of this pick's softmax.
        far = (top - logits) / logits.abs().clamp(min=top) > 2 * eps
        weights.append(scores.masked_fill(far, float("-inf")).softmax(dim=-1).gather(-1, idx))
        experts.append(idx)
        scores = scores.scatter(-1, idx, float("-inf"))  # the second pick excludes the first
    return torch.cat(experts, dim=-1), torch.cat(weights, dim=-1)


# ---------------------------------------------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------------------------------------------


def _unknown(model: nn.Module, model_type: str | None, why: str) -> UnknownArchitectureError:
    fields = ", ".join(k for k in _DEFAULTS if k not in ("router_weight", "router_bias")) + ", config"
    return UnknownArchitectureError(
        f"Unknown architecture: {type(model).__name__} (model_type={model_type!r}): {why}. "
        f"Add a row to adt_probe.architectures.FAMILIES keyed by {model_type or 'config.model_type'!r}, "
        f"with the paths and router facts it needs (keys: {fields}; values are constants or callables of the "
        "text config, e.g. Attr('num_experts')); copy the row of the closest family and check it against the "
        "router's forward in transformers/models/<family>/modeling_<family>.py."
    )


def _looks_moe(model: nn.Module, cfg: Any) -> bool:
    if any((getattr(cfg, name, None) or 0) not in (0, 1) for name in _MOE_CONFIG_HINTS):
        return True
    return any(any(h in type(m).__name__ for h in _MOE_MODULE_HINTS) for m in model.modules())


def architecture(model: nn.Module) -> ArchitectureSpec:
    """Resolve the :class:`ArchitectureSpec` of a model instance.

    The family is ``model.config.model_type``; counts and flags are read from its text config through the
    :data:`FAMILIES` row, and ``moe_layers`` is checked against the blocks that actually hold a router. A model
    whose family has no row resolves as a dense model if it has the causal-LM layout (``model.layers``,
    ``model.norm``, ``lm_head``) and shows no sign of experts.

    Parameters
    ----------
    model : nn.Module
        A Hugging Face model (``...ForCausalLM`` or ``...ForConditionalGeneration`` of a supported family).

    Returns
    -------
    ArchitectureSpec

    Raises
    ------
    UnknownArchitectureError
        The family has no row and the model is not a plain dense causal LM.
    ValueError
        The row disagrees with the instance (a path does not resolve, or routers sit in other blocks).

    Examples
    --------
    >>> from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    >>> cfg = Qwen3MoeConfig(vocab_size=128, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
    ...                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
    ...                      num_experts=4, num_experts_per_tok=2, mlp_only_layers=[0])
    >>> spec = architecture(Qwen3MoeForCausalLM(cfg))
    >>> spec.family, spec.router, spec.scoring, spec.top_k, spec.n_experts, spec.moe_layers
    ('qwen3_moe', 'mlp.gate', 'softmax', 2, 4, (1,))
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> dense = architecture(LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
    ...                                                   num_hidden_layers=1, num_attention_heads=2)))
    >>> dense.router is None, dense.moe_layers
    (True, ())
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if config is None:
        raise _unknown(model, model_type, "it has no Hugging Face config")
    row = FAMILIES.get(model_type)
    text_cfg = row["config"](config) if row and "config" in row else config.get_text_config(decoder=True)
    if row is None:
        if _looks_moe(model, text_cfg):
            raise _unknown(model, model_type, "it has experts but no FAMILIES row")
        row = {}  # a dense causal LM: the defaults describe it
    merged = {k: v for k, v in {**_DEFAULTS, **row}.items() if k != "config"}
    fields = {k: (v(text_cfg) if callable(v) and k != "moe_layers" else v) for k, v in merged.items()}
    try:
        blocks = get_module(model, fields["layers"])
        get_module(model, fields["final_norm"])
        get_module(model, fields["unembed"])
        if fields["final_proj"]:
            get_module(model, fields["final_proj"])
    except AttributeError as err:
        if row:
            raise ValueError(f"FAMILIES[{model_type!r}] does not match {type(model).__name__}: {err}") from err
        raise _unknown(model, model_type, f"no FAMILIES row and not a standard causal-LM layout ({err})") from err
    if fields["router"] is None:
        fields["moe_layers"] = ()
    else:
        fields["moe_layers"] = tuple(fields["moe_layers"](text_cfg, len(blocks)))
        found = tuple(i for i, b in enumerate(blocks) if _has(b, fields["router"]))
        if found != fields["moe_layers"]:
            raise ValueError(
                f"FAMILIES[{model_type!r}]: config says MoE blocks {fields['moe_layers']}, "
                f"but {fields['router']!r} exists in blocks {found} of {type(model).__name__}"
            )
    if fields["scoring"] not in ("softmax", "sigmoid"):
        raise NotImplementedError(f"{model_type}: scoring {fields['scoring']!r} is not supported")
    return ArchitectureSpec(
        family=model_type or type(model).__name__,
        model_class=type(model).__name__,
        top_k=int(fields.pop("top_k")),
        n_experts=int(fields.pop("n_experts")),
        norm_topk_prob=bool(fields.pop("norm_topk_prob")),
        n_group=int(fields.pop("n_group")),
        topk_group=int(fields.pop("topk_group")),
        routed_scaling_factor=float(fields.pop("routed_scaling_factor")),
        logit_scale=float(fields.pop("logit_scale")),
        final_logit_softcap=float(cap) if (cap := fields.pop("final_logit_softcap")) else None,
        **fields,
    )


def _has(block: nn.Module, path: str) -> bool:
    try:
        get_module(block, path)
    except AttributeError:
        return False
    return True
