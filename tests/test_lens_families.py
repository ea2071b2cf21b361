"""The logit lens on any decoder-only family: the last layer's lens is the model's own log-probs, including what the
family does after the unembedding (OPT's project_out, Granite's logits_scaling, Cohere's logit_scale, Gemma's
final soft-cap). One tiny random model per family."""

from typing import Any

import numpy as np
import pytest
import torch
import transformers

import adt_probe
from adt_probe.architectures import DENSE_FAMILIES, architecture

V = 97
LLAMA_LIKE = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, tie_word_embeddings=False)
#: (model class, config class, config) per family; the transforms are set far from 1 so a lens without them fails
CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(vocab_size=V, n_embd=32, n_layer=2, n_head=2)),
    "gpt_neox": ("GPTNeoXForCausalLM", "GPTNeoXConfig",
                 dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)),
    "opt": ("OPTForCausalLM", "OPTConfig", dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                                num_attention_heads=2, word_embed_proj_dim=16)),  # project_out
    "phi": ("PhiForCausalLM", "PhiConfig", dict(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=2, intermediate_size=64)),
    "llama": ("LlamaForCausalLM", "LlamaConfig", LLAMA_LIKE),
    "mistral": ("MistralForCausalLM", "MistralConfig", LLAMA_LIKE),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", LLAMA_LIKE),
    "granite": ("GraniteForCausalLM", "GraniteConfig", {**LLAMA_LIKE, "logits_scaling": 0.25}),
    "cohere": ("CohereForCausalLM", "CohereConfig", {**LLAMA_LIKE, "logit_scale": 3.0}),
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", {**LLAMA_LIKE, "head_dim": 16, "final_logit_softcapping": 0.5}),
    "gemma3_text": ("Gemma3ForCausalLM", "Gemma3TextConfig",
                    {**LLAMA_LIKE, "head_dim": 16, "final_logit_softcapping": 0.5}),
    "granitemoe": ("GraniteMoeForCausalLM", "GraniteMoeConfig",
                   {**LLAMA_LIKE, "num_local_experts": 4, "num_experts_per_tok": 2, "logits_scaling": 0.25}),
}


def _tiny(family: str) -> torch.nn.Module:
    model_class, config_class, kw = CASES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**kw, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():  # random weights far from init scale, so that transforms and norms matter
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.2)
    return model


def test_every_dense_row_has_a_case():
    """Each dense row of the table is tested here (the MoE rows in test_architectures)."""
    assert set(DENSE_FAMILIES) - set(CASES) <= {"gpt_neo", "gptj", "codegen", "gpt_bigcode", "bloom", "falcon",
                                                "cohere2", "vaultgemma", "falcon_h1", "hyperclovax"}
    assert {"gpt2", "gpt_neox", "opt", "phi", "granite", "cohere", "gemma2", "gemma3_text"} <= set(DENSE_FAMILIES)


@pytest.mark.parametrize("family", sorted(CASES))
def test_last_layer_lens_is_the_models_own_logprobs(family: str):
    model = _tiny(family)
    spec = architecture(model)
    assert spec.family == family
    ids = torch.randint(3, V, (2, 9), generator=torch.Generator().manual_seed(1))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    ds = adt_probe.record(model, inputs, routing=None, options=adt_probe.RecordOptions(backend="hooks"))
    with torch.no_grad():
        own = torch.log_softmax(model(**inputs).logits.float(), -1)  # (2, 9, V)
    want = own[:, :-1].gather(-1, ids[:, 1:, None])[..., 0].reshape(-1).numpy()  # positions with a next token
    got = ds.lens_logprob.isel(layer=-1).values
    got = got[~np.isnan(got)]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    top1 = own.argmax(-1).reshape(-1).numpy()
    np.testing.assert_array_equal(ds.lens_top1.isel(layer=-1).values, top1)
    if spec.transforms_logits:  # the transform matters: the raw unembedding gives other log-probs
        x = adt_probe.get_module(model, spec.final_norm)(torch.randn(4, 32, generator=torch.Generator().manual_seed(2)))
        raw = torch.log_softmax(adt_probe.get_module(model, spec.unembed)(x), -1)
        done = torch.log_softmax(spec.readout(model)[1](x), -1)
        assert not torch.allclose(raw, done, atol=1e-2)
