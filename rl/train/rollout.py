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

from rl.data import collate, prompts
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
                 notes: prompts.Notes | None = None) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Chat prompts of ``items`` in ``mode`` and their encoded batch (left padded; audio unless ``written_facts``).

    ``written_facts`` puts each clip's facts in the prompt as text instead of the audio; ``notes`` pre-fills the
    think block (``prompts.notes_prefill``: the clip's facts, or the block forced open); the completion then starts
    after the pre-filled text.
    """
    contexts = [it.meta["description"] for it in items] if written_facts else None
    texts = collate.prompt_texts(processor, items, mode, contexts=contexts)
    if notes is not None:
        texts = [t + prompts.notes_prefill(it, notes) for t, it in zip(texts, items)]
    return texts, collate.encode(processor, texts, None if written_facts else [it.audio for it in items])


def generation_config(tokenizer, sampling: Sampling) -> GenerationConfig:
    """An explicit GenerationConfig: pure sampling at the temperature (or greedy at 0), placeholders suppressed, so
    the sampling distribution is exactly the one :func:`token_logprobs` scores."""
    mode = dict(do_sample=True, temperature=sampling.temperature, top_k=0, top_p=1.0) if sampling.temperature > 0 \
        else dict(do_sample=False)
    return GenerationConfig(**mode, max_new_tokens=sampling.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=tokenizer.eos_token_id,
                            suppress_tokens=suppressed_token_ids(tokenizer) or None)


#: Inputs of the audio thinker (Qwen3-Omni-MoE) that a shared prompt pass takes: the prompt tokens and its clip.
_AUDIO_KEYS = ("input_features", "feature_attention_mask")
_THINKER = "Qwen3OmniMoeThinkerForConditionalGeneration"


def _is_audio_thinker(model) -> bool:
    """A Qwen3-Omni-MoE thinker (the organism's class or a subclass); not a wrapper such as DDP."""
    return any(c.__name__ == _THINKER for c in type(model).__mro__)


def shares_prompts(model, inputs: dict[str, torch.Tensor]) -> bool:
    """Whether the prompt of a group can be run once and its key-value cache shared by the group's G rows: a plain
    text decoder (a transformers ``*ForCausalLM``: 1-D rotary positions, a ``DynamicCache``) with text-only inputs,
    or the Qwen3-Omni-MoE thinker (the organism) with text and audio inputs (its audio encoder and prompt then run
    once per group; its 3-D rotary positions are computed as ``generate`` / the one-pass forward compute them).
    Anything else (images or video, other multimodal models, DDP wrappers) takes the general path."""
    if type(model).__name__.endswith("ForCausalLM"):
        return set(inputs) <= {"input_ids", "attention_mask"}
    return _is_audio_thinker(model) and set(inputs) <= {"input_ids", "attention_mask", *_AUDIO_KEYS}


def _prompt_cache(model, prompt: dict[str, torch.Tensor], G: int,
                  position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, object]:
    """Run B distinct prompts (``input_ids``, ``attention_mask`` and the thinker's audio features) once; returns
    their last position's logits and the key-value cache, both repeated to B * G rows (row ``b * G + j`` is prompt
    b). Differentiable when grad is enabled: the G rows' gradients flow back into the one prompt pass (and the one
    audio encoder pass) through the repeated cache."""
    if _is_audio_thinker(model):  # its forward has no logits_to_keep: all positions' logits, as generate has them
        out = model(**prompt, position_ids=position_ids, use_cache=True)
    else:
        out = model(**prompt, position_ids=position_ids, use_cache=True, logits_to_keep=1)
    cache = out.cache
    cache.batch_repeat_interleave(G)
    return out.logits[:, -1].repeat_interleave(G, dim=0), cache


def _generation_positions(policy, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The prompt positions ``generate`` gives ``policy``: (B, P) the cumulative attention mask for a text decoder;
    (4, B, P) for the thinker (its text positions, then the 3-D multimodal rotary positions of ``get_rope_index``),
    from the thinker's own ``_prepare_position_ids_for_generation`` (which also sets its ``rope_deltas``)."""
    ids, am = batch["input_ids"], batch["attention_mask"]
    if _is_audio_thinker(policy):
        return policy._prepare_position_ids_for_generation(ids, dict(batch))
    return (am.long().cumsum(-1) - 1).masked_fill(am == 0, 0)  # as generate's _prepare_position_ids_for_generation


def _sample_shared_prompts(policy, batch: dict[str, torch.Tensor], G: int, sampling: Sampling, tok) -> torch.Tensor:
    """``policy.generate``'s sampling loop (same logits processing: placeholders at -inf, divide by the temperature,
    ``torch.multinomial`` of the softmax, pad after EOS, stop when every row has ended; same positions: the cumulative
    attention mask, or the thinker's 3-D rotary positions, advanced by one per token), with each prompt's forward
    (and audio encoding) run once for its G completions. (B*G, T) completion ids."""
    ids, am = batch["input_ids"], batch["attention_mask"]
    pos = _generation_positions(policy, batch)
    logits, cache = _prompt_cache(policy, batch, G, position_ids=pos)
    am, last = am.repeat_interleave(G, dim=0), pos[..., -1:].repeat_interleave(G, dim=-2)  # batch dim: -2
    n = am.shape[0]
    suppress = suppressed_token_ids(tok)
    suppress = torch.tensor(suppress, device=ids.device) if suppress else None
    eos, pad = tok.eos_token_id, tok.pad_token_id
    unfinished = torch.ones(n, dtype=torch.bool, device=ids.device)
    out = []
    for step in range(sampling.max_new_tokens):
        scores = logits.float()
        if suppress is not None:
            scores = scores.index_fill(-1, suppress, -math.inf)
        if sampling.temperature > 0:
            nxt = torch.multinomial(torch.softmax(scores / sampling.temperature, -1), num_samples=1).squeeze(1)
        else:
            nxt = scores.argmax(-1)
        nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad))
        out.append(nxt)
        unfinished = unfinished & (nxt != eos)
        if step == sampling.max_new_tokens - 1 or not bool(unfinished.any()):
            break
        am = torch.cat([am, torch.ones_like(am[:, :1])], 1)
        last = last + 1
        logits = policy(input_ids=nxt[:, None], attention_mask=am, position_ids=last, cache=cache,
                        use_cache=True).logits[:, -1]
    return torch.stack(out, 1)


@torch.no_grad()
def sample(policy, processor, items: Sequence[Item], sampling: Sampling, *, mode: str = "think",
           device: torch.device | str = "cpu", written_facts: bool = False,
           notes: prompts.Notes | None = None) -> Rollout:
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
    if G > 1 and shares_prompts(policy, inputs):
        completion_ids = _sample_shared_prompts(policy, {k: v.to(device) for k, v in batch.items()}, G, sampling, tok)
    else:
        ids = policy.generate(**inputs, generation_config=generation_config(tok, sampling))  # (N, P + T)
        completion_ids = ids[:, inputs["input_ids"].shape[1]:]  # (N, T)
    mask, truncated = eos_mask(completion_ids, tok.eos_token_id)
    keep = mask.bool() & (completion_ids != tok.eos_token_id)
    decoded = [tok.decode(row[m], skip_special_tokens=False) for row, m in zip(completion_ids, keep)]
    return Rollout(inputs, completion_ids, mask, truncated, [t for t in texts for _ in range(G)], decoded,
                   [it for it in items for _ in range(G)])


def _grouped(inputs: dict[str, torch.Tensor], G: int) -> bool:
    """Rows ``b*G .. b*G+G-1`` of every input are copies of row ``b*G``."""
    for v in inputs.values():
        if v.shape[0] % G:
            return False
        g = v.reshape(v.shape[0] // G, G, *v.shape[1:])
        if not bool((g == g[:, :1]).all()):
            return False
    return True


def _thinker_positions(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      feature_attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(3, n, L) the 3-D rotary positions the thinker's forward computes for these whole sequences when given none
    (``compute_3d_position_ids`` without a cache: ``get_rope_index``; it also sets the thinker's ``rope_deltas``, as
    that forward does)."""
    lengths = None if feature_attention_mask is None else feature_attention_mask.sum(1)
    return model.model.compute_3d_position_ids(input_ids=input_ids, image_grid_thw=None, video_grid_thw=None,
                                               inputs_embeds=None, attention_mask=attention_mask, cache=None,
                                               audio_feature_lengths=lengths)


def completion_logits(model, inputs: dict[str, torch.Tensor], completion_ids: torch.Tensor,
                      completion_mask: torch.Tensor, temperature: float,
                      suppress: list[int] | None = None, group_size: int = 1) -> torch.Tensor:
    """Teacher-forced logits over the vocabulary before each completion token, divided by the sampling
    temperature: the distribution token t was drawn from (what :func:`token_logprobs` scores).

    Parameters
    ----------
    inputs : prompt tensors of n rows (``input_ids`` (n, P), ``attention_mask`` (n, P), audio features).
    completion_ids, completion_mask : (n, T).
    suppress : token ids generation never samples (``suppressed_token_ids``): their logits are -inf here too.
    group_size : G when rows ``b*G .. b*G+G-1`` share one prompt: a text decoder or the audio thinker then runs
        each prompt (and its clip through the audio encoder) once and the G completions on its shared key-value
        cache (same positions and masks as the one-pass forward; equal to it up to float rounding). Ignored when the
        rows do not repeat that way or the model does not share prompts (:func:`shares_prompts`).

    Returns
    -------
    (n, T, V) float, differentiable; suppressed tokens -inf. Values past the mask are meaningless (mask them).
    """
    P = inputs["input_ids"].shape[1]
    attention_mask = torch.cat([inputs["attention_mask"], completion_mask.long()], 1)
    G = group_size if group_size > 1 and shares_prompts(model, inputs) and _grouped(inputs, group_size) else 1
    audio = {k: inputs[k] for k in _AUDIO_KEYS if k in inputs}  # none: text LM
    if G > 1:  # each prompt (and clip) once; its cache (and gradient) shared by the G completions
        pos = None  # a text decoder: positions from the attention mask and the cache, as in the one-pass forward
        if _is_audio_thinker(model):  # the one-pass forward's own 3-D positions of the whole sequences
            pos = _thinker_positions(model, torch.cat([inputs["input_ids"], completion_ids], 1), attention_mask,
                                     audio.get("feature_attention_mask"))
        prompt = {"input_ids": inputs["input_ids"][::G], "attention_mask": inputs["attention_mask"][::G],
                  **{k: v[::G] for k, v in audio.items()}}
        first, cache = _prompt_cache(model, prompt, G, None if pos is None else pos[:, ::G, :P])
        logits = first[:, None]
        if completion_ids.shape[1] > 1:  # positions P .. P + T - 2, as in the one-pass forward
            rest = model(input_ids=completion_ids[:, :-1], attention_mask=attention_mask[:, :-1],
                         position_ids=None if pos is None else pos[:, :, P:-1], cache=cache, use_cache=True).logits
            logits = torch.cat([logits, rest], 1)
        logits = logits.float() / temperature  # (n, T, V)
    else:
        out = model(input_ids=torch.cat([inputs["input_ids"], completion_ids], 1), attention_mask=attention_mask,
                    use_cache=False, **audio)
        # Position P - 1 + t predicts completion token t; divide by the sampling temperature so that these are the
        # log-probs of the distribution the tokens were drawn from.
        logits = out.logits[:, P - 1:-1].float() / temperature  # (n, T, V)
    if suppress:
        logits = logits.index_fill(-1, torch.tensor(suppress, device=logits.device), -math.inf)
    return logits


def token_logprobs(model, inputs: dict[str, torch.Tensor], completion_ids: torch.Tensor,
                   completion_mask: torch.Tensor, temperature: float,
                   suppress: list[int] | None = None, group_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced ``log softmax(logits / temperature)`` of each completion token, and the policy's entropy there
    (the arguments of :func:`completion_logits`).

    Returns
    -------
    logp : (n, T), differentiable. entropy : (n, T), detached. Values past the mask are meaningless (mask them).
    """
    logits = completion_logits(model, inputs, completion_ids, completion_mask, temperature, suppress, group_size)
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)  # (n, T)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all.clamp(min=-1e30)).nansum(-1)  # (n, T); 0 * -inf counts as 0
    return logp, entropy
