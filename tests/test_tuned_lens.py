"""The tuned lens: starts as the logit lens, lowers held-out KL once trained, round-trips through safetensors."""

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from adt_probe import LogitLens, TunedLens, record, train_tuned_lens


def model_and_inputs():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         initializer_range=0.3)).eval()  # large weights: layers disagree
    ids = torch.randint(0, 64, (24, 24), generator=torch.Generator().manual_seed(1))
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_untrained_tuned_lens_is_the_logit_lens():
    model, inputs = model_and_inputs()
    logit = record(model, inputs, lens=LogitLens())
    tuned = record(model, inputs, lens=TunedLens(4, 32))
    assert (logit.attrs["lens"], tuned.attrs["lens"]) == ("logit", "tuned")
    np.testing.assert_allclose(logit.lens_logprob.values, tuned.lens_logprob.values, atol=1e-5)


def test_training_lowers_heldout_kl_and_round_trips(tmp_path):
    model, inputs = model_and_inputs()
    lens, report = train_tuned_lens(model, inputs, steps=150, lr=3e-3, seed=0)
    logit, tuned = report["heldout_kl_logit"][:-1], report["heldout_kl_tuned"][:-1]
    assert (tuned < logit).all(), (logit, tuned)
    assert tuned.mean() < 0.8 * logit.mean()
    assert report["heldout_tokens"] > 0 and report["train_tokens"] > report["heldout_tokens"]
    lens.save(tmp_path / "lens.safetensors")
    back = TunedLens.load(tmp_path / "lens.safetensors")
    assert back.meta["architecture"] == "llama"
    a = record(model, inputs, lens=lens)
    b = record(model, inputs, lens=back)
    np.testing.assert_array_equal(a.lens_kl_final.values, b.lens_kl_final.values)
    # the recorded held-out KL agrees: tuned below logit on average, except the last layer (both 0)
    logit_ds = record(model, inputs, lens=LogitLens())
    assert a.lens_kl_final.isel(layer=slice(0, 3)).mean() < logit_ds.lens_kl_final.isel(layer=slice(0, 3)).mean()
    assert not any(p.requires_grad is False for p in model.parameters())  # training left the model untouched
    assert all(p.grad is None for p in model.parameters())  # and wrote no gradient into lm_head or the final norm


def test_training_writes_no_gradient_into_the_model():
    """The lens trains through the final norm and the unembedding, never into them (nor anything else)."""
    model, inputs = model_and_inputs()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_tuned_lens(model, inputs, steps=3, seed=0)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
