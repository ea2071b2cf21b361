"""The SFT control of finding 1: the base fine-tuned on the RL model's own think text, at RL's update norm.

RL's router change could be what any training on the same text does. The control fine-tunes a copy of the base
with plain next-token cross-entropy on the RL model's teacher-forced completions (the loss on think tokens; on every
completion token when there are none), a few dozen Adam steps, then rescales its update per tensor to the norm of
RL's update (:func:`adt_probe.weights.matched_update`). Its router effect at fixed input is reported beside RL's and
the random-direction controls (``analyses.compare.controls``).

Cost: a backward pass per step and Adam's two moments (about 4x the weights in memory), so ``adt-probe compare``
runs it by default only for small models (:data:`analyses.models.AUTO_MAX_PARAMETERS`; the organism has ~4M);
``--sft-control on`` forces it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch

from adt_probe.decompose import batches
from adt_probe.segments import segment_tokens
from adt_probe.weights import matched_update, update_norms

#: prompt-side segments: never a training target
PROMPT_SEGMENTS = ("system", "user", "audio")


def target_masks(tokenizer, inputs: Mapping, batch_size: int) -> list[torch.Tensor]:
    """Per batch, (batch, seq - 1) bool: positions whose *next* token is a training target (think tokens; every
    completion token when no sequence has think tokens)."""
    labels = [segment_tokens(tokenizer, b["input_ids"], b.get("attention_mask")) for b in batches(inputs, batch_size)]
    think = any((lab == "think").any() for lab in labels)
    masks = []
    for b, lab in zip(batches(inputs, batch_size), labels):
        real = b.get("attention_mask", torch.ones_like(b["input_ids"])).bool().numpy()
        target = (lab == "think") if think else (real & ~np.isin(lab, PROMPT_SEGMENTS) & (lab != "other"))
        masks.append(torch.from_numpy(target[:, 1:]))
    return masks


def sft_finetune(base, inputs: Mapping, *, tokenizer, steps: int = 24, lr: float = 1e-4, seed: int = 0,
                 batch_size: int = 8):
    """A copy of ``base`` after ``steps`` Adam steps (no weight decay, no dropout: eval mode) of next-token
    cross-entropy on the target tokens of ``inputs`` (batches in turn). Deterministic for a seed on CPU."""
    model = copy.deepcopy(base).eval()  # eval: no dropout, so the update is a function of the data and the seed
    params = [p for p in model.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr, weight_decay=0.0)  # RL's optimizer family; decay would move every tensor
    data = list(batches(inputs, batch_size))
    masks = target_masks(tokenizer, inputs, batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(steps):
            batch, mask = data[step % len(data)], masks[step % len(data)]
            if not mask.any():
                continue
            logits = model(**batch, use_cache=False).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits[mask].float(), batch["input_ids"][:, 1:][mask])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for p in params:
        p.requires_grad_(False)
    return model.eval()


def sft_control(base, rl, inputs: Mapping, *, tokenizer, steps: int = 24, lr: float = 1e-4, seed: int = 0,
                batch_size: int = 8) -> tuple[object, dict]:
    """The SFT control model (fine-tuned on ``inputs``, update rescaled per tensor to RL's) and its record:
    ``steps``, ``lr``, ``seed``, ``max_rel_error`` of the matched norms, ``unmatched`` tensors and their share."""
    tuned = sft_finetune(base, inputs, tokenizer=tokenizer, steps=steps, lr=lr, seed=seed, batch_size=batch_size)
    model, info = matched_update(base, tuned, update_norms(base, rl))
    return model, {"steps": steps, "lr": lr, "seed": seed, **info,
                   "definition": "base fine-tuned (Adam, next-token cross-entropy) on the RL model's teacher-forced "
                                 "think text, update rescaled per tensor to ||theta_rl - theta_base||"}
