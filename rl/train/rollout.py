"""The one way to sample completions and score their tokens: used by GRPO, curriculum mining, evaluation and the
sequences ``analyses`` records.

One set of rules everywhere: the multimodal placeholder tokens are never sampled, a completion ends at its first EOS
(the mask covers it, the decoded text drops it), sampling is pure temperature sampling (no top-k / top-p from a
model's defaults), and ``temperature = 0`` decodes greedily.

Examples
--------
>>> from rl.train.rollout import Sampling, sample                              # doctest: +SKIP
>>> ro = sample(model, processor, items, Sampling(num_generations=4), mode="think")  # doctest: +SKIP
>>> ro.completion_ids.shape                                                  # doctest: +SKIP
torch.Size([len(items) * 4, T])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from rl.data import collate
from rl.data.items import Item

#: Tokenizer attributes of the multimodal placeholder and delimiter tokens. A completion must never contain one: the
#: teacher-forced pass would look for audio (or image) features for it and fail, or shift the rotary positions.
PLACEHOLDER_TOKENS = ("audio_token", "image_token", "video_token", "audio_bos_token", "audio_eos_token",
                      "vision_bos_token", "vision_eos_token")


@dataclass(frozen=True)
class Sampling:
    """How completions are drawn.

    num_generations : completions per prompt (G).
    temperature : sampling temperature; 0 decodes greedily.
    max_new_tokens : length cap of a completion, in tokens.
    """

    num_generations: int = 1
    temperature: float = 1.0
    max_new_tokens: int = 48


@dataclass
class Rollout:
    """G completions of each of B prompts; N = B * G rows, row ``b * G + j`` is completion j of prompt b.

    inputs : the prompt batch repeated per completion: ``input_ids`` / ``attention_mask`` (N, P) left padded,
        ``input_features`` (N, 128, frames), ``feature_attention_mask`` (N, frames) (no audio keys for text prompts).
    completion_ids : (N, T) sampled tokens; T <= max_new_tokens, pad after EOS.
    completion_mask : (N, T) float, 1 on the completion's tokens up to and including its first EOS.
    truncated : (N,) bool, no EOS within max_new_tokens.
    prompts : N chat-formatted prompt strings; texts : N decoded completions (special tokens kept, EOS dropped).
    items : N items (each prompt's item repeated G times).
    """

    inputs: dict[str, torch.Tensor]
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    truncated: torch.Tensor
    prompts: list[str]
    texts: list[str]
    items: list[Item]


def suppressed_token_ids(tokenizer) -> list[int]:
    """Ids of the tokenizer's multimodal placeholder tokens (those it has), never sampled in a completion."""
    ids = {tokenizer.convert_tokens_to_ids(t) for name in PLACEHOLDER_TOKENS if (t := getattr(tokenizer, name, None))}
    return sorted(i for i in ids if i is not None and i != tokenizer.unk_token_id)


def eos_mask(completion_ids: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) ids -> ((N, T) float mask up to and including the first EOS, (N,) bool: no EOS at all)."""
    is_eos = (completion_ids == eos_token_id).int()
    before = is_eos.cumsum(1) - is_eos  # EOS tokens strictly before each position: > 0 means past the end
    return (before == 0).float(), is_eos.sum(1) == 0


def prompt_batch(processor, items: Sequence[Item], mode: str, *, written_facts: bool = False,
                 notes: bool = False) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Chat prompts of ``items`` in ``mode`` and their encoded batch (left padded; audio unless ``written_facts``).

    ``written_facts`` puts each clip's facts in the prompt as text instead of the audio; ``notes`` pre-fills the
    think block with the clip's facts (the completion then starts after the notes).
    """
    if written_facts:
        texts = collate.prompt_texts(processor, items, mode, contexts=[it.meta["description"] for it in items])
        return texts, collate.encode(processor, texts, None)
    texts = collate.prompt_texts(processor, items, mode)
    if notes:
        texts = [t + f"<think>\n{it.meta['description']}\n" for t, it in zip(texts, items)]
    return texts, collate.encode(processor, texts, [it.audio for it in items])


def generation_config(tokenizer, sampling: Sampling) -> GenerationConfig:
    """An explicit GenerationConfig: pure sampling at the temperature (or greedy at 0), placeholders suppressed, so
    the sampling distribution is exactly the one :func:`token_logprobs` scores."""
    mode = dict(do_sample=True, temperature=sampling.temperature, top_k=0, top_p=1.0) if sampling.temperature > 0 \
        else dict(do_sample=False)
    return GenerationConfig(**mode, max_new_tokens=sampling.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=tokenizer.eos_token_id,
                            suppress_tokens=suppressed_token_ids(tokenizer) or None)


@torch.no_grad()
def sample(policy, processor, items: Sequence[Item], sampling: Sampling, *, mode: str = "think",
           device: torch.device | str = "cpu", written_facts: bool = False, notes: bool = False) -> Rollout:
    """Sample ``sampling.num_generations`` completions for each item with ``policy.generate``.

    Parameters
    ----------
    policy : the unwrapped model (generation never goes through DistributedDataParallel).
    items : B items; mode : the prompt mode (``rl.data.prompts``: ``think``, ``answer``, ``describe``).
    written_facts, notes : see :func:`prompt_batch`.

    Returns
    -------
    Rollout with N = B * G rows. Random draws come from torch's global generator: seed it for reproducible samples.
    """
    G, tok = sampling.num_generations, processor.tokenizer
    texts, batch = prompt_batch(processor, items, mode, written_facts=written_facts, notes=notes)
    inputs = {k: v.repeat_interleave(G, dim=0).to(device) for k, v in batch.items()}  # every row tensor -> (B*G, ...)
    ids = policy.generate(**inputs, generation_config=generation_config(tok, sampling))  # (N, P + T)
    completion_ids = ids[:, inputs["input_ids"].shape[1]:]  # (N, T)
    mask, truncated = eos_mask(completion_ids, tok.eos_token_id)
    keep = mask.bool() & (completion_ids != tok.eos_token_id)
    decoded = [tok.decode(row[m], skip_special_tokens=False) for row, m in zip(completion_ids, keep)]
    return Rollout(inputs, completion_ids, mask, truncated, [t for t in texts for _ in range(G)], decoded,
                   [it for it in items for _ in range(G)])


def token_logprobs(model, inputs: dict[str, torch.Tensor], completion_ids: torch.Tensor,
                   completion_mask: torch.Tensor, temperature: float,
                   suppress: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced ``log softmax(logits / temperature)`` of each completion token, and the policy's entropy there.

    Parameters
    ----------
    inputs : prompt tensors of n rows (``input_ids`` (n, P), ``attention_mask`` (n, P), audio features).
    completion_ids, completion_mask : (n, T).
    suppress : token ids generation never samples (``suppressed_token_ids``): their logits are -inf here too.

    Returns
    -------
    logp : (n, T), differentiable. entropy : (n, T), detached. Values past the mask are meaningless (mask them).
    """
    P = inputs["input_ids"].shape[1]
    audio = {k: inputs[k] for k in ("input_features", "feature_attention_mask") if k in inputs}  # none: text LM
    out = model(input_ids=torch.cat([inputs["input_ids"], completion_ids], 1),
                attention_mask=torch.cat([inputs["attention_mask"], completion_mask.long()], 1),
                use_cache=False, **audio)
    # Position P - 1 + t predicts completion token t; divide by the sampling temperature so that these are the
    # log-probs of the distribution the tokens were drawn from.
    logits = out.logits[:, P - 1:-1].float() / temperature  # (n, T, V)
    if suppress:
        logits = logits.index_fill(-1, torch.tensor(suppress, device=logits.device), -math.inf)
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)  # (n, T)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all.clamp(min=-1e30)).nansum(-1)  # (n, T); 0 * -inf counts as 0
    return logp, entropy
