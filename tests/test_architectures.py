"""Tests for adt_probe.architectures: every supported MoE family, built tiny from its config with random weights.

For each family the router's own forward is the reference: hooks capture each router's input and output during a
real forward pass, and the spec must recompute the same logits (and ``outputs.router_logits`` where exposed) and
select the same experts with the same weights.
"""

from __future__ import annotations

import dataclasses
import doctest
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import transformers
from torch import nn
from transformers import CONFIG_MAPPING

from adt_probe.architectures import (
    DENSE_FAMILIES,
    FAMILIES,
    SOFTMAX_ACROSS_ROWS_UP_TO,
    ArchitectureSpec,
    UnknownArchitectureError,
    _has,
    architecture,
    every_layer,
    get_module,
)

torch.set_num_threads(1)

ATOL = 1e-5
TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
MOE = dict(moe_intermediate_size=32, num_experts_per_tok=2)


# --- what each router hands back (see the module docstring of adt_probe.architectures) ----------------------------


def standard(out: Any, _inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits, topk_weights, topk_indices)``."""
    return out[0], out[1], out[2]


def llama4(out: Any, _inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dense sigmoid scores, zero off the top-k; logits)``."""
    scores, logits = out
    idx = logits.topk(int((scores > 0).sum(-1).max()), dim=-1).indices
    return logits, scores.gather(-1, idx), idx


def dbrx(out: Any, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits only; the selection is what the experts module receives."""
    _, idx, weights = inputs["experts"]
    return out, weights, idx


def jetmoe(out: Any, _inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(index_sorted_experts, batch_index, batch_gates, expert_size, logits)``: undo the grouping by expert."""
    index_sorted, _, gates, _, logits = out
    k = index_sorted.numel() // logits.shape[0]
    experts = logits.topk(k, dim=-1).indices.flatten()  # flat (token, slot) order, as the router sorted it
    weights = torch.empty_like(gates).index_put_((index_sorted,), gates)
    return logits, weights.view(-1, k), experts.view(-1, k)


@dataclass
class Case:
    """One family variant: how to build it tiny and how to read its router's own answer."""

    model_type: str
    model_class: str
    config: dict
    name: str = ""  # test id, when a family is tested in several variants
    extract: Callable = standard  # router output -> (logits, topk_weights, topk_indices)
    needs_experts_input: bool = False  # DBRX: the selection is only visible at the experts' input
    exposes_router_logits: bool = True  # outputs.router_logits holds one entry per MoE block
    forward: str = ""  # path to the submodule to call (the full Qwen3-Omni model has no forward of its own)


def case(model_type: str, model_class: str, name: str = "", **config: Any) -> Case:
    """A text-only family: ``TINY`` + ``MOE`` + the family's own config keys."""
    return Case(model_type, model_class, {**TINY, **MOE, **config}, name=name)


def vlm(model_type: str, model_class: str, text: dict, vision: dict, **extra: Any) -> Case:
    """A vision-language family: the text decoder is what carries the routers."""
    return Case(model_type, model_class, dict(text_config={**TINY, **MOE, **text}, vision_config=vision, **extra))


QWEN_MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True}
QWEN_VISION = dict(
    depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=64, deepstack_visual_indexes=[0],
    patch_size=4, num_position_embeddings=16,
)
VLM_TOKENS = dict(image_token_id=8, video_token_id=9, vision_start_token_id=6, vision_end_token_id=7)
QWEN3_OMNI_THINKER = dict(
    text_config=dict(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
        max_position_embeddings=256, mlp_only_layers=[1],
        rope_parameters={
            "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "interleaved": True
        },
    ),
    audio_config=dict(
        num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32, output_dim=64,
        downsample_hidden_size=8, max_source_positions=200, n_window=50, n_window_infer=100,
    ),
    vision_config=QWEN_VISION,
    audio_token_id=5, image_token_id=8, video_token_id=9, audio_start_token_id=3, vision_start_token_id=6,
    audio_end_token_id=4, user_token_id=20,
)
# DeepSeek-V3-style routing that exercises every knob: 4 groups of 2, keep 2, renormalise, scale by 2.5
DSV3 = dict(
    n_routed_experts=8, n_shared_experts=1, n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5
)
# Multi-head latent attention, sized so the rotary part matches head_dim
MLA = dict(
    q_lora_rank=32, kv_lora_rank=16, num_key_value_heads=4, qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16
)
DENSE_SPARSE_SPARSE = ["dense", "sparse", "sparse"]
# Llama 4 with dense and MoE blocks interleaved
LLAMA4 = dict(num_local_experts=8, interleave_moe_layer_step=2, intermediate_size_mlp=64)

CASES = [
    Case("qwen3_omni_moe_thinker", "Qwen3OmniMoeThinkerForConditionalGeneration", QWEN3_OMNI_THINKER),
    Case("qwen3_omni_moe", "Qwen3OmniMoeForConditionalGeneration",
         dict(thinker_config=QWEN3_OMNI_THINKER, enable_audio_output=False), forward="thinker"),
    case("qwen3_moe", "Qwen3MoeForCausalLM", num_experts=8, norm_topk_prob=True, mlp_only_layers=[1]),
    case("qwen2_moe", "Qwen2MoeForCausalLM", num_experts=8, shared_expert_intermediate_size=32, decoder_sparse_step=2,
         num_hidden_layers=4),
    case("qwen3_next", "Qwen3NextForCausalLM", num_experts=8, norm_topk_prob=True),
    case("qwen3_5_moe_text", "Qwen3_5MoeForCausalLM", num_experts=8),
    vlm("qwen3_vl_moe", "Qwen3VLMoeForConditionalGeneration", dict(num_experts=8, rope_parameters=QWEN_MROPE),
        QWEN_VISION, **VLM_TOKENS),
    vlm("qwen3_5_moe", "Qwen3_5MoeForConditionalGeneration", dict(num_experts=8, rope_parameters=QWEN_MROPE),
        {k: v for k, v in QWEN_VISION.items() if k != "deepstack_visual_indexes"}, **VLM_TOKENS),
    case("olmoe", "OlmoeForCausalLM", num_experts=8),
    case("flex_olmo", "FlexOlmoForCausalLM", num_experts=8, norm_topk_prob=True),
    case("mellum", "MellumForCausalLM", num_experts=8),
    case("hunyuan_v1_moe", "HunYuanMoEV1ForCausalLM", num_experts=8, moe_topk=2),
    case("ernie4_5_moe", "Ernie4_5_MoeForCausalLM", moe_num_experts=8, moe_k=2),
    case("jamba", "JambaForCausalLM", num_experts=8),
    case("mixtral", "MixtralForCausalLM", num_local_experts=8),
    case("minimax", "MiniMaxForCausalLM", num_local_experts=8),
    # DBRX in transformers 5.23 reads attn_config.rope_theta (not a config field) and crashes with clip_qkv=None;
    # p=2 normalisation exercises topk_norm_p
    Case("dbrx", "DbrxForCausalLM", dict(
        d_model=64, n_heads=4, n_layers=3, max_seq_len=256, vocab_size=128,
        attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0),
        ffn_config=dict(ffn_hidden_size=32, moe_num_experts=8, moe_top_k=2, moe_normalize_expert_weights=2.0),
    ), extract=dbrx, needs_experts_input=True),
    case("phimoe", "PhimoeForCausalLM", num_local_experts=8),
    case("gpt_oss", "GptOssForCausalLM", num_local_experts=8),
    case("granitemoe", "GraniteMoeForCausalLM", num_local_experts=8),
    case("granitemoeshared", "GraniteMoeSharedForCausalLM", num_local_experts=8, shared_intermediate_size=32),
    case("granitemoe_swa", "GraniteMoeSWAForCausalLM", num_local_experts=8),
    case("granitemoehybrid", "GraniteMoeHybridForCausalLM", num_local_experts=8),
    case("aria_text", "AriaTextForCausalLM", moe_num_experts=8, moe_topk=2),
    Case("jetmoe", "JetMoeForCausalLM", {**TINY, **MOE, "num_local_experts": 8, "kv_channels": 16}, extract=jetmoe,
         exposes_router_logits=False),  # its router_logits interleave the attention routers
    case("cohere2_moe", "Cohere2MoeForCausalLM", num_experts=8),
    case("cohere2_moe", "Cohere2MoeForCausalLM", "cohere2_moe-sigmoid", num_experts=8, expert_selection_fn="sigmoid",
         norm_topk_prob=True),
    case("deepseek_v3", "DeepseekV3ForCausalLM", **DSV3, **MLA, first_k_dense_replace=1),
    # topk_group=1: with max-scored groups, keeping 2 groups of 4 would never change a top-2
    case("deepseek_v2", "DeepseekV2ForCausalLM", **{**DSV3, "topk_group": 1}, **MLA,
         topk_method="group_limited_greedy", first_k_dense_replace=1),
    case("deepseek_v2", "DeepseekV2ForCausalLM", "deepseek_v2-greedy", **{**DSV3, "topk_group": 1}, **MLA,
         topk_method="greedy", first_k_dense_replace=1),
    case("deepseek_v32", "DeepseekV32ForCausalLM", **DSV3, **MLA, first_k_dense_replace=1),
    case("glm4_moe", "Glm4MoeForCausalLM", **DSV3, first_k_dense_replace=1),
    case("glm4_moe_lite", "Glm4MoeLiteForCausalLM", **DSV3, **MLA),
    case("glm_moe_dsa", "GlmMoeDsaForCausalLM", **DSV3, **MLA, first_k_dense_replace=1),
    vlm("glm4v_moe", "Glm4vMoeForConditionalGeneration",
        dict(**DSV3, first_k_dense_replace=1, rope_parameters={
            "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1], "partial_rotary_factor": 0.5}),
        dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=64, patch_size=4,
             image_size=16), image_token_id=8, video_token_id=9, image_start_token_id=6, image_end_token_id=7,
        video_start_token_id=10, video_end_token_id=11),
    case("dots1", "Dots1ForCausalLM", **DSV3, first_k_dense_replace=1),
    case("dots3_note_text", "Dots3NoteForCausalLM", **DSV3, num_local_experts=8, num_key_value_heads=4),
    Case("beam", "BeamForCausalLM", {**TINY, **MOE, **DSV3, "num_experts": 8, "mlp_layer_types": DENSE_SPARSE_SPARSE},
         extract=lambda out, _: (out[0], out[1] * DSV3["routed_scaling_factor"], out[2])),  # scaled after the experts
    case("mistral4", "Mistral4ForCausalLM", **DSV3, **MLA, head_dim=32, first_k_dense_replace=1),
    case("exaone_moe", "ExaoneMoeForCausalLM", **DSV3, num_experts=8),
    case("mimo_v2_flash", "MiMoV2FlashForCausalLM", **DSV3),
    case("solar_open", "SolarOpenForCausalLM", **DSV3),
    case("nemotron_h", "NemotronHForCausalLM", **DSV3),
    case("kimi_linear", "KimiLinearForCausalLM", **DSV3, **MLA, num_experts=8),
    case("bailing_hybrid", "BailingHybridForCausalLM", **DSV3, num_experts=8),
    case("hy_v4", "HYV4ForCausalLM", **DSV3),
    case("axk1", "AXK1ForCausalLM", **DSV3, **MLA),
    # router_bias=True: LongCat creates classifier.bias but never applies it
    case("longcat_flash", "LongcatFlashForCausalLM", **MLA, n_routed_experts=8, zero_expert_num=2, moe_topk=2,
         router_bias=True),
    case("minimax_m2", "MiniMaxM2ForCausalLM", num_local_experts=8),
    case("minimax_m3_vl_text", "MiniMaxM3VLForCausalLM", num_local_experts=8, mlp_layer_types=DENSE_SPARSE_SPARSE),
    case("hy_v3", "HYV3ForCausalLM", num_local_experts=8),
    case("afmoe", "AfmoeForCausalLM", num_experts=8, num_dense_layers=1, route_scale=2.0),
    case("lfm2_moe", "Lfm2MoeForCausalLM", num_experts=8, num_dense_layers=1,
         layer_types=["conv", "full_attention", "conv"]),
    case("laguna", "LagunaForCausalLM", num_experts=8, moe_router_logit_softcapping=3.0),
    case("inkling2_text", "Inkling2ForCausalLM", n_routed_experts=8, route_scale=2.0),
    case("kolibri1", "Kolibri1ForCausalLM", num_experts=8, norm_topk_prob=True),
    case("flint", "FlintForCausalLM", num_experts=8, mlp_only_layers=[0]),
    Case("llama4_text", "Llama4ForCausalLM", {**TINY, **MOE, **LLAMA4}, extract=llama4),
    Case("llama4", "Llama4ForConditionalGeneration", dict(
        text_config={**TINY, **MOE, **LLAMA4},
        vision_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           vision_output_dim=32, image_size=16, patch_size=4, projector_input_dim=32,
                           projector_output_dim=64),
        image_token_index=8,
    ), extract=llama4, forward="language_model"),  # transformers 5.24's own top-level forward raises on text input
]


def build(c: Case) -> nn.Module:
    """The tiny model, seeded, in eval mode, with router weights and selection biases re-drawn large enough that
    the routing is decisive (the default init leaves routers near-uniform and biases at zero)."""
    torch.manual_seed(0)
    config = CONFIG_MAPPING[c.model_type](**c.config)
    model = getattr(transformers, c.model_class)(config).eval()
    spec = architecture(model)
    generator = torch.Generator().manual_seed(1)
    blocks = get_module(model, spec.layers)
    with torch.no_grad():
        for i, router in spec.routers(model).items():
            for tensor in [*router.parameters(), *router.buffers()]:
                if tensor.is_floating_point():
                    tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.3)
            if spec.score_bias:
                bias = get_module(blocks[i], spec.score_bias)
                bias.copy_(torch.randn(bias.shape, generator=generator) * 0.3)
    return model


def run(model: nn.Module, spec: ArchitectureSpec, c: Case) -> tuple[Any, dict[int, dict]]:
    """Forward random ids; capture every router's input and output (and DBRX's experts' input)."""
    captured: dict[int, dict] = {}
    handles = []
    blocks = get_module(model, spec.layers)
    for i, router in spec.routers(model).items():
        slot = captured.setdefault(i, {})
        handles.append(
            router.register_forward_hook(lambda m, args, out, slot=slot: slot.update(hidden=args[0], out=out))
        )
        if c.needs_experts_input:
            experts = get_module(blocks[i], spec.router.rsplit(".", 1)[0] + ".experts")
            handles.append(experts.register_forward_pre_hook(lambda m, args, slot=slot: slot.update(experts=args)))
    ids = torch.randint(10, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    try:
        with torch.no_grad():
            out = get_module(model, c.forward)(input_ids=ids, output_router_logits=True, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return out, captured


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.name or c.model_type)
def test_router_matches_model(c: Case) -> None:
    model = build(c)
    spec = architecture(model)
    assert spec.family == c.model_type and spec.model_class == c.model_class
    blocks = get_module(model, spec.layers)
    assert isinstance(blocks, nn.ModuleList)
    assert isinstance(get_module(model, spec.final_norm), nn.Module)
    assert isinstance(get_module(model, spec.unembed), nn.Linear)

    # moe_layers: exactly the blocks that hold a router, and at least one MoE block
    assert spec.moe_layers == tuple(i for i, b in enumerate(blocks) if _has(b, spec.router))
    assert spec.moe_layers

    out, captured = run(model, spec, c)
    assert sorted(captured) == list(spec.moe_layers)
    assert_routing_matches(spec, model, c, out, captured)


def assert_routing_matches(spec: ArchitectureSpec, model: nn.Module, c: Case, out: Any, captured: dict) -> None:
    """The spec's logits, experts and weights equal the router's own, in every MoE block."""
    blocks = get_module(model, spec.layers)
    own_logits = getattr(out, "router_logits", None)
    exposed = own_logits is not None and len(own_logits) == len(spec.moe_layers)
    assert exposed == c.exposes_router_logits
    for j, i in enumerate(spec.moe_layers):
        slot = captured[i]
        logits_ref, weights_ref, experts_ref = c.extract(slot["out"], slot)
        logits = spec.router_logits(get_module(blocks[i], spec.router), slot["hidden"])
        assert logits.dtype == torch.float32 and logits.shape == (24, spec.n_experts)
        torch.testing.assert_close(logits, logits_ref.float().reshape(24, -1), atol=ATOL, rtol=0)
        if exposed:
            torch.testing.assert_close(logits, own_logits[j].float().reshape(24, -1), atol=ATOL, rtol=0)

        experts, weights = spec.route(logits, bias=spec.selection_bias(blocks[i]))
        assert experts.dtype == torch.int64 and weights.dtype == torch.float32
        assert experts.shape == weights.shape == (24, spec.top_k)
        mine, theirs = experts.sort(-1), experts_ref.long().reshape(24, -1).sort(-1)
        assert torch.equal(mine.values, theirs.values), f"layer {i}: experts differ"
        torch.testing.assert_close(
            weights.gather(-1, mine.indices),
            weights_ref.float().reshape(24, -1).gather(-1, theirs.indices),
            atol=ATOL,
            rtol=0,
        )
        torch.testing.assert_close(spec.probs(logits).sum(-1), torch.ones(24), atol=1e-5, rtol=0)




def test_every_family_row_is_tested() -> None:
    assert set(FAMILIES) - set(DENSE_FAMILIES) == {c.model_type for c in CASES}  # dense: test_lens_families


def tiny_qwen3_moe(**overrides: Any) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.Qwen3MoeConfig(**{**TINY, **MOE, "num_experts": 4, "num_hidden_layers": 2, **overrides})
    return transformers.Qwen3MoeForCausalLM(config).eval()


@pytest.mark.parametrize(
    ("config_class", "model_class"),
    [
        ("LlamaConfig", "LlamaForCausalLM"),
        ("Qwen2Config", "Qwen2ForCausalLM"),
        ("Qwen3Config", "Qwen3ForCausalLM"),
        ("MistralConfig", "MistralForCausalLM"),
        ("GemmaConfig", "GemmaForCausalLM"),
    ],
)
def test_dense_causal_lm_resolves_without_router(config_class: str, model_class: str) -> None:
    config = getattr(transformers, config_class)(**{**TINY, "num_hidden_layers": 2})
    model = getattr(transformers, model_class)(config)
    spec = architecture(model)
    assert spec.router is None and spec.moe_layers == () and not spec.is_moe
    assert spec.family == config.model_type and spec.model_class == model_class
    assert len(get_module(model, spec.layers)) == 2
    assert get_module(model, spec.final_norm) is model.model.norm
    assert get_module(model, spec.unembed) is model.lm_head
    assert spec.routers(model) == {}


def test_unknown_model_class_is_refused_with_instructions() -> None:
    class Mystery(nn.Module):
        pass

    with pytest.raises(UnknownArchitectureError, match="Mystery") as err:
        architecture(Mystery())
    assert "FAMILIES" in str(err.value) and "router" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_unknown_moe_family_is_not_mistaken_for_dense() -> None:
    model = tiny_qwen3_moe()
    model.config.model_type = "brand_new_moe"
    with pytest.raises(UnknownArchitectureError) as err:
        architecture(model)
    message = str(err.value)
    assert "Qwen3MoeForCausalLM" in message and "brand_new_moe" in message
    assert "adt_probe.architectures.FAMILIES" in message and "n_experts" in message and "top_k" in message


def test_table_disagreeing_with_the_model_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_qwen3_moe(mlp_only_layers=[1])
    assert architecture(model).moe_layers == (0,)
    monkeypatch.setitem(FAMILIES, "qwen3_moe", {**FAMILIES["qwen3_moe"], "moe_layers": every_layer()})
    with pytest.raises(ValueError, match=r"config says MoE blocks \(0, 1\)"):
        architecture(model)
    monkeypatch.setitem(FAMILIES, "qwen3_moe", {**FAMILIES["qwen3_moe"], "layers": "model.decoder.layers"})
    with pytest.raises(ValueError, match="'decoder'"):
        architecture(model)


def test_get_module_resolves_paths_and_names_the_missing_attribute() -> None:
    model = tiny_qwen3_moe()
    assert get_module(model, "model.layers.1.mlp.gate") is model.model.layers[1].mlp.gate
    assert get_module(model, "model.layers.0.mlp.gate.weight") is model.model.layers[0].mlp.gate.weight
    assert get_module(model, "") is model
    with pytest.raises(AttributeError, match=r"'router' on model\.layers\.0\.mlp \(Qwen3MoeSparseMoeBlock\)"):
        get_module(model, "model.layers.0.mlp.router")
    with pytest.raises(AttributeError, match="'7'"):
        get_module(model, "model.layers.7")


def test_route_requires_the_selection_bias_when_the_family_has_one() -> None:
    spec = ArchitectureSpec(
        family="deepseek_v3", model_class="X", layers="model.layers", router="mlp.gate", final_norm="model.norm",
        unembed="lm_head", scoring="sigmoid", top_k=2, n_experts=8, norm_topk_prob=True,
        score_bias="mlp.gate.e_score_correction_bias", n_group=4, topk_group=2,
    )
    logits = torch.randn(5, 8)
    with pytest.raises(ValueError, match="selection_bias"):
        spec.route(logits)
    experts, weights = spec.route(logits, bias=torch.zeros(8))
    torch.testing.assert_close(weights.sum(-1), torch.ones(5))
    # group-limited: both experts come from the two kept groups (of four)
    assert (experts // 2).unique(dim=-1).shape[-1] <= 2


@pytest.mark.parametrize("n_experts", [8, SOFTMAX_ACROSS_ROWS_UP_TO, SOFTMAX_ACROSS_ROWS_UP_TO + 1, 128])
def test_softmax_scores_are_the_softmax_either_way_round(n_experts: int) -> None:
    """Below the threshold the router softmax runs across tokens (a transposed view), above it row by row: the same
    distribution, and the same top-k experts, either way."""
    spec = architecture(tiny_qwen3_moe())
    logits = torch.randn(300, n_experts, generator=torch.Generator().manual_seed(n_experts)) * 3
    scores = spec.scores(logits)
    assert scores.shape == logits.shape and scores.dtype == torch.float32
    torch.testing.assert_close(scores, logits.softmax(dim=-1), atol=1e-6, rtol=1e-5)
    assert torch.equal(scores.topk(2, dim=-1).indices, logits.topk(2, dim=-1).indices)


def test_sigmoid_probs_are_the_normalised_scores() -> None:
    spec = dataclasses.replace(architecture(tiny_qwen3_moe()), scoring="sigmoid")
    logits = torch.randn(6, 4)
    probs = spec.probs(logits)
    torch.testing.assert_close(probs.sum(-1), torch.ones(6))
    torch.testing.assert_close(probs, logits.sigmoid() / logits.sigmoid().sum(-1, keepdim=True))


def test_docstring_examples() -> None:
    from adt_probe import architectures

    result = doctest.testmod(architectures, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
