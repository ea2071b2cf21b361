"""Prompt sharing in rl.train.rollout (text decoders and the audio thinker): a group's prompt runs once and its G
completions reuse the key-value cache. The sampled tokens equal ``generate``'s for the same seed, and the log-probs
and their gradients equal the one-pass teacher-forced forward's."""

import pytest
import torch

from rl import testing as tiny_lm
from rl.data.collate import TextProcessor
from rl.data.items import Item
from rl.data.tasks import generate_items
from rl.train import rollout

G = 3


@pytest.fixture(scope="module")
def tok():
    return tiny_lm.build_tokenizer()


def _items(n=3):
    return [Item(id=it.id, question=it.question, choices=it.choices, answer=it.answer, audio=None, family=it.family,
                 difficulty=it.difficulty) for it in generate_items(n, seed=4)]


def _model(kind, tok):
    if kind == "llama":
        return tiny_lm.build_model(tok, seed=1)
    return tiny_lm.build_moe_model(tok, seed=1, layers=2, hidden=32)


@pytest.mark.parametrize("kind", ["llama", "moe"])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_shared_prompt_sampling_draws_what_generate_draws(tok, kind, temperature):
    model, items = _model(kind, tok), _items()
    sampling = rollout.Sampling(G, temperature, 24)
    _, batch = rollout.prompt_batch(TextProcessor(tok), items, "think")
    inputs = {k: v.repeat_interleave(G, 0) for k, v in batch.items()}
    assert rollout.shares_prompts(model, inputs)
    torch.manual_seed(5)
    ro = rollout.sample(model, TextProcessor(tok), items, sampling)
    torch.manual_seed(5)
    ids = model.generate(**inputs, generation_config=rollout.generation_config(tok, sampling))
    assert torch.equal(ro.completion_ids, ids[:, inputs["input_ids"].shape[1]:])


@pytest.mark.parametrize("kind", ["llama", "moe"])
def test_shared_prompt_logprobs_and_gradients_equal_the_one_pass_forward(tok, kind):
    model, items = _model(kind, tok), _items()
    torch.manual_seed(0)
    ro = rollout.sample(model, TextProcessor(tok), items, rollout.Sampling(G, 1.0, 16))
    suppress, m = rollout.suppressed_token_ids(tok), ro.completion_mask.bool()
    out = []
    for group_size in (1, G):
        model.zero_grad()
        logp, entropy = rollout.token_logprobs(model, ro.inputs, ro.completion_ids, ro.completion_mask, 0.7, suppress,
                                               group_size=group_size)
        (logp * ro.completion_mask).sum().backward()
        out.append((logp.detach(), entropy, [p.grad.clone() for p in model.parameters()]))
    (a, ea, ga), (b, eb, gb) = out
    torch.testing.assert_close(a[m], b[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ea[m], eb[m], atol=1e-5, rtol=1e-5)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_rows_that_do_not_repeat_in_groups_take_the_one_pass_forward(tok):
    model, items = _model("llama", tok), _items()
    torch.manual_seed(0)
    ro = rollout.sample(model, TextProcessor(tok), items, rollout.Sampling(G, 1.0, 8))
    perm = torch.randperm(ro.completion_ids.shape[0], generator=torch.Generator().manual_seed(1))
    inputs = {k: v[perm] for k, v in ro.inputs.items()}
    assert not rollout._grouped(inputs, G)
    a, _ = rollout.token_logprobs(model, inputs, ro.completion_ids[perm], ro.completion_mask[perm], 1.0, group_size=G)
    b, _ = rollout.token_logprobs(model, inputs, ro.completion_ids[perm], ro.completion_mask[perm], 1.0)
    assert torch.equal(a, b)


# The audio thinker (the organism's class): a random 2-layer organism, prompts with their clips.

@pytest.fixture(scope="module")
def thinker(tokenizer):
    from rl import organism

    return organism.build_model(tokenizer, seed=3, num_hidden_layers=2).eval()


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_audio_thinker_shared_prompt_sampling_draws_what_generate_draws(one_thread, thinker, processor, items,
                                                                         temperature):
    sampling = rollout.Sampling(G, temperature, 16)
    _, batch = rollout.prompt_batch(processor, items[:3], "think")
    inputs = {k: v.repeat_interleave(G, 0) for k, v in batch.items()}
    assert "input_features" in inputs and rollout.shares_prompts(thinker, inputs)
    clips = []  # clips per audio-encoder call: the shared path encodes each prompt's clip once, not G times
    hook = thinker.model.audio_tower.register_forward_hook(lambda m, a, kw, o: clips.append(len(kw["feature_lens"])),
                                                           with_kwargs=True)
    torch.manual_seed(5)
    try:
        ro = rollout.sample(thinker, processor, items[:3], sampling)
    finally:
        hook.remove()
    assert clips == [3]
    torch.manual_seed(5)
    ids = thinker.generate(**inputs, generation_config=rollout.generation_config(processor.tokenizer, sampling))
    assert torch.equal(ro.completion_ids, ids[:, inputs["input_ids"].shape[1]:])


def test_audio_thinker_shared_prompt_logprobs_and_gradients_equal_the_one_pass_forward(one_thread, thinker,
                                                                                         processor, items):
    torch.manual_seed(0)
    ro = rollout.sample(thinker, processor, items[:3], rollout.Sampling(G, 1.0, 12))
    ro.completion_mask[0, 5:] = 0  # an early end: masked completion tokens, as after an EOS
    suppress, m = rollout.suppressed_token_ids(processor.tokenizer), ro.completion_mask.bool()
    out = []
    for group_size in (1, G):
        thinker.zero_grad()
        logp, entropy = rollout.token_logprobs(thinker, ro.inputs, ro.completion_ids, ro.completion_mask, 0.7,
                                               suppress, group_size=group_size)
        (logp * ro.completion_mask).sum().backward()
        out.append((logp.detach(), entropy, {n: p.grad.clone() for n, p in thinker.named_parameters()
                                             if p.grad is not None}))
    thinker.zero_grad()
    (a, ea, ga), (b, eb, gb) = out
    torch.testing.assert_close(a[m], b[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ea[m], eb[m], atol=1e-5, rtol=1e-5)
    assert ga.keys() == gb.keys() and any(n.startswith("model.audio_tower") for n in ga)
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], atol=1e-5, rtol=1e-4, msg=n)


def test_only_the_unwrapped_text_or_audio_models_share_prompts(thinker, processor, items):
    _, batch = rollout.prompt_batch(processor, items[:2], "think")
    assert rollout.shares_prompts(thinker, batch)
    assert not rollout.shares_prompts(thinker, {**batch, "pixel_values": torch.zeros(1)})  # images: general path
    assert not rollout.shares_prompts(torch.nn.Module(), {k: batch[k] for k in ("input_ids", "attention_mask")})

    class Wrapper(torch.nn.Module):  # as DistributedDataParallel: a module around the model
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert not rollout.shares_prompts(Wrapper(thinker), batch)
