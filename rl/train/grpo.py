"""Minimal GRPO for audio language models, to be read top to bottom.

TRL's ``GRPOTrainer`` takes no audio input, so this is a small loop of its own, with TRL's names and reward-function
signature. One step:

1. **prompts**     B items -> chat prompts with their audio clip (``collate.encode``)
2. **rollouts**    G completions per prompt, sampled at ``temperature``; every per-sequence input (token ids, masks,
                   audio features) is repeated G times, so row ``b * G + j`` is completion j of prompt b (a text
                   decoder runs each prompt once and shares its key-value cache with the G rows, here and in 3)
3. **log-probs**   per-token ``log pi(token)`` of the completion at the sampling temperature, teacher-forced over
                   prompt + completion (with the audio), masked after the first EOS
4. **rewards**     reward functions ``f(prompts, completions, completion_ids, **item_columns)`` -> (B*G, R) matrix
5. **advantages**  group-relative: ``A = (r - mean_group(r)) / scale``, scale = group std, batch std or 1
6. **loss**        clipped surrogate per token, ``-min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)``
                   (+ ``beta`` * k3 KL to a reference model), aggregated ``grpo`` / ``dapo`` / ``dr_grpo``;
                   ``num_iterations`` optimiser steps reuse the same rollouts, ``rho = pi / pi_old``
7. **checkpoint**  every N steps and at each stage end (``rl.train.checkpoint``)

The loss and advantage functions are pure functions of tensors (unit-tested against hand-computed values). The model
stays in ``eval()`` mode throughout: no dropout, so the log-probs of the sampling policy and of the trained policy
come from the same function (the importance ratio is exactly 1 on the first pass, as the theory says).

Data parallel: ``accelerate launch --num_processes N -m rl.train.grpo ...`` (on CPU with accelerate 1.x:
``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N ...``, gloo; its ``--cpu`` flag starts a
single process unless MPI is configured). Each process samples its share of the prompts;
rewards are gathered so groups and batch statistics are global; loss denominators are global too, so N processes
compute the same update as one process with the whole batch. With one process it is plain PyTorch.

Run ``python -m rl.train.grpo --config rl/configs/smoke.toml --out runs/smoke`` (``--resume`` continues a run).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from tqdm.auto import tqdm

from adt_probe.outputs import LOCK, exclusive_lock
from rl import cli_options
from rl.data import prompts
from rl.data.items import Item, load_items
from rl.data.tasks import generate_items
from rl.judge import SharedJudge, sum_stats
from rl.organism import calibrated_audio, load_organism
from rl.rewards.registry import (
    Reward,
    check_requirements,
    compute_rewards,
    failure_columns,
    item_columns,
    resolve_rewards,
)
from rl.train import checkpoint as ckpt
from rl.train import rollout, trackers
from rl.train.config import ConfigError, DataConfig, TrainConfig, load_config
from rl.train.curriculum import mine_boundary_items
from rl.train.rollout import Rollout, Sampling, suppressed_token_ids, token_logprobs

# ==================================================================================================================
# 1. Prompts
# ==================================================================================================================


def load_data(data: DataConfig, *, where: str, model_path: str) -> list[Item]:
    """The items of a ``synthetic`` or ``jsonl`` data spec; ValueError if there are none. Synthetic clips are
    rendered as ``data.calibrated`` says, or (None) as the model in ``model_path`` learned to hear them."""
    if data.source == "synthetic":
        calibrated = calibrated_audio(model_path) if data.calibrated is None else data.calibrated
        items = generate_items(data.n_items, seed=data.seed, families=data.families, difficulty=data.difficulties,
                               prefix=data.prefix, calibrated=calibrated)
    elif data.source == "jsonl":
        items = load_items(data.path)
    else:
        raise ValueError(f"{where}: source {data.source!r} is not loaded from a file (see mine_items)")
    if not items:
        raise ValueError(f"{where}: the dataset is empty ({data.source}{' ' + data.path if data.path else ''}); "
                         "there is nothing to train on")
    return items


class PromptStream:
    """An endless, reproducible order of item indices: epoch e visits every item once, in a permutation fixed by
    ``(seed, e)``. Its state (epoch, position) is the *data position* a checkpoint stores."""

    def __init__(self, n_items: int, seed: list[int], shuffle: bool = True, state: dict | None = None):
        self.n, self.seed, self.shuffle = n_items, seed, shuffle
        self.epoch, self.position = (state["epoch"], state["position"]) if state else (0, 0)

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([*self.seed, epoch]).permutation(self.n)

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            chunk = self._order(self.epoch)[self.position:self.position + k - len(out)]
            out += chunk.tolist()
            self.position += len(chunk)
            if self.position >= self.n:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}


# ==================================================================================================================
# 2. Rollouts
# ==================================================================================================================


def sample_completions(policy, processor, items: list[Item], cfg: TrainConfig, device: torch.device) -> Rollout:
    """Step 2: ``cfg.grpo.num_generations`` completions for each item at the run's temperature (``rl.train.rollout``:
    placeholders suppressed, pure temperature sampling, masked after the first EOS). ``policy`` is unwrapped."""
    g = cfg.grpo
    return rollout.sample(policy, processor, items, Sampling(g.num_generations, g.temperature, g.max_new_tokens),
                          mode=cfg.prompt_mode, device=device)


# ==================================================================================================================
# 3. Per-token log-probabilities (rl.train.rollout.token_logprobs)
# ==================================================================================================================


def _rows(inputs: dict[str, torch.Tensor], sl: slice) -> dict[str, torch.Tensor]:
    return {k: v[sl] for k, v in inputs.items()}


# ==================================================================================================================
# 4. Rewards
# ==================================================================================================================


def score(rollout: Rollout, rewards: list[Reward], *, step: int, max_steps: int) -> np.ndarray:
    """Step 4: (N, R) float32 reward matrix of the rollout, NaN where a reward returned None."""
    ids = [row[m.bool()].tolist() for row, m in zip(rollout.completion_ids, rollout.completion_mask)]
    columns = item_columns(rollout.items)
    columns["trainer_state"] = SimpleNamespace(global_step=step, max_steps=max_steps)  # as TRL passes it
    return compute_rewards(rewards, rollout.prompts, rollout.texts, ids, columns)


# ==================================================================================================================
# 5. Advantages
# ==================================================================================================================


def nanstd(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Unbiased standard deviation ignoring NaNs (as ``torch.std`` and TRL's ``nanstd``); all of ``x`` if no dim."""
    if dim is None:
        x, dim = x.reshape(-1), 0
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=keepdim)
    return (torch.nansum((x - mean) ** 2, dim=dim, keepdim=keepdim) / (count - 1)).sqrt()


def compute_advantages(rewards: torch.Tensor, weights: torch.Tensor, group_size: int, *, scale: str = "group",
                       aggregation: str = "sum_then_normalize", failed: torch.Tensor | None = None,
                       eps: float = 1e-4) -> tuple[torch.Tensor, int]:
    """Group-relative advantages of N = B * G completions.

    Parameters
    ----------
    rewards : (N, R), NaN where a reward does not apply; rows ``b*G .. b*G+G-1`` are one group.
    weights : (R,) weight of each reward.
    scale : ``"group"`` divide by the group's std; ``"batch"`` by the std of all N combined rewards; ``"none"`` only
        subtract the group mean (Dr. GRPO).
    aggregation : TRL's ``multi_objective_aggregation``. ``"sum_then_normalize"`` weighted nansum of the rewards, then
        the above; ``"normalize_then_sum"`` (GDPO) first normalise each reward within its group,
        ``(r_k - mean_group(r_k)) / (std_group(r_k) + eps)``, then the weighted sum, then the above (so one reward's
        scale cannot drown another's signal).
    failed : (N,) bool, True for a completion whose judgement failed: it is left out of every statistic (per-reward,
        group and batch) and gets advantage 0, exactly as if it had not been sampled. Never trained as a 0 reward.
    eps : added to every std.

    Returns
    -------
    advantages : (N,); 0 for a completion no reward applied to, or whose judgement failed.
    zero_std_groups : number of groups whose combined reward has zero std (they carry no learning signal).
    """
    N, R = rewards.shape
    if N % group_size:
        raise ValueError(f"{N} rewards do not split into groups of {group_size}")
    left_out = torch.isnan(rewards).all(1)  # (N,) no reward applied
    if failed is not None:
        left_out = left_out | failed.to(left_out.device)
    rewards = torch.where(left_out[:, None], torch.nan, rewards)  # out of the per-reward statistics too
    if aggregation == "normalize_then_sum":
        grouped = rewards.view(-1, group_size, R)  # (B, G, R)
        per_reward = (grouped - torch.nanmean(grouped, 1, keepdim=True)) / (nanstd(grouped, 1, keepdim=True) + eps)
        combined = (per_reward.reshape(N, R) * weights).nansum(1)  # (N,)
    elif aggregation == "sum_then_normalize":
        combined = (rewards * weights).nansum(1)  # (N,)
    else:
        raise ValueError(f"aggregation must be 'sum_then_normalize' or 'normalize_then_sum', got {aggregation!r}")
    combined = torch.where(left_out, torch.nan, combined)  # keep them out of the group baselines
    grouped = combined.view(-1, group_size)  # (B, G)
    group_mean = torch.nanmean(grouped, 1).repeat_interleave(group_size)  # (N,)
    group_std = nanstd(grouped, 1)  # (B,)
    advantages = combined - group_mean
    if scale == "group":
        advantages = advantages / (group_std.repeat_interleave(group_size) + eps)
    elif scale == "batch":
        advantages = advantages / (nanstd(combined) + eps)
    elif scale != "none":
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    zero_std_groups = int(torch.isclose(group_std, torch.zeros_like(group_std)).sum())
    return torch.nan_to_num(advantages, nan=0.0), zero_std_groups


# ==================================================================================================================
# 6. Loss
# ==================================================================================================================


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor, clamp: float = 10.0) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref): ``exp(d) - d - 1`` with ``d = ref - logp`` clamped to [-clamp, clamp]
    (unbiased, always >= 0; the clamp keeps one wild token from producing inf). Shapes (n, T) -> (n, T)."""
    d = (ref_logp - logp).clamp(-clamp, clamp)
    return torch.exp(d) - d - 1


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              epsilon: float = 0.2, epsilon_high: float | None = None, loss_type: str = "grpo",
              ref_logp: torch.Tensor | None = None, beta: float = 0.0, max_completion_length: int | None = None,
              num_sequences: int | None = None, num_tokens: float | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped token-level policy loss.

    Parameters
    ----------
    logp : (n, T) log-probs of the completion tokens under the policy being trained (differentiable).
    old_logp : (n, T) log-probs at sampling time (constant). ``rho = exp(logp - old_logp)``.
    advantages : (n,) one per completion, broadcast over its tokens.
    mask : (n, T) 1 on tokens that count.
    epsilon, epsilon_high : clip ``rho`` to ``[1 - epsilon, 1 + epsilon_high]`` (epsilon_high defaults to epsilon).
    loss_type : how token losses become one number:
        ``grpo``    mean over each sequence's tokens, then mean over sequences;
        ``dapo``    sum over all tokens / number of tokens in the batch;
        ``dr_grpo`` sum over all tokens / (number of sequences * max_completion_length).
    ref_logp, beta : add ``beta * k3_kl(logp, ref_logp)`` per token when beta > 0.
    max_completion_length : the dr_grpo constant (default: T).
    num_sequences, num_tokens : denominators of the *whole* batch when this call sees one chunk of it (gradient
        accumulation, several processes): then the chunks' losses sum to the full batch's loss. Default: this call's.

    Returns
    -------
    loss : scalar tensor.
    stats : sums over the masked tokens (detached): ``tokens``, ``clip_low`` (rho < 1 - eps and A < 0, the clip
        binds), ``clip_high`` (rho > 1 + eps_high and A > 0), ``clip_region`` (either), ``kl``.
    """
    eps_high = epsilon if epsilon_high is None else epsilon_high
    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype).unsqueeze(1)  # (n, 1)
    ratio = torch.exp(logp - old_logp)  # (n, T)
    per_token = -torch.min(ratio * adv, ratio.clamp(1 - epsilon, 1 + eps_high) * adv)  # (n, T)
    kl = None
    if beta != 0.0 and ref_logp is not None:
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl
    n = num_sequences if num_sequences is not None else logp.shape[0]
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / n
    elif loss_type == "dapo":
        tokens = num_tokens if num_tokens is not None else mask.sum().clamp(min=1)
        loss = (per_token * mask).sum() / tokens
    elif loss_type == "dr_grpo":
        loss = (per_token * mask).sum() / (n * (max_completion_length or logp.shape[1]))
    else:
        raise ValueError(f"loss_type must be 'grpo', 'dapo' or 'dr_grpo', got {loss_type!r}")
    with torch.no_grad():
        low = ((ratio < 1 - epsilon) & (adv < 0)).to(mask.dtype) * mask
        high = ((ratio > 1 + eps_high) & (adv > 0)).to(mask.dtype) * mask
        stats = {"tokens": mask.sum(), "clip_low": low.sum(), "clip_high": high.sum(),
                 "clip_region": (low + high).sum(), "kl": (kl * mask).sum() if kl is not None else torch.zeros(())}
    return loss, stats


# ==================================================================================================================
# Optimiser and learning-rate schedule
# ==================================================================================================================


def lr_factor(update: int, *, schedule: str, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimiser update ``update`` (0-based): linear warm-up over ``warmup``
    updates, then ``constant``, ``linear`` or ``cosine`` decay to ``min_ratio`` at ``total``."""
    if update < warmup:
        return (update + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (update - warmup) / max(1, total - warmup))
    decay = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def build_optimizer(policy, cfg: TrainConfig, lr: float, total_updates: int
                    ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters and its LambdaLR schedule over ``total_updates`` (fresh every stage)."""
    o = cfg.optim
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(o.adam_betas[0], o.adam_betas[1]), eps=o.adam_eps,
                                  weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: lr_factor(
        u, schedule=o.lr_schedule, warmup=o.warmup_steps, total=total_updates, min_ratio=o.min_lr_ratio))
    return optimizer, scheduler


# ==================================================================================================================
# One GRPO step: 2 -> 6
# ==================================================================================================================


@dataclass
class Run:
    """What a step needs: ``model`` (maybe DDP-wrapped, used for the differentiable forward), ``policy`` (the same
    module unwrapped: generation, no-grad passes, saving), the frozen reference (or None), the processor, the
    accelerator, the config and the current stage's rewards, optimiser and schedule."""

    cfg: TrainConfig
    model: torch.nn.Module
    policy: torch.nn.Module
    ref_model: torch.nn.Module | None
    processor: object
    accelerator: object
    rewards: list[Reward]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    suppress: list[int]  # token ids never sampled (suppressed_token_ids)
    timings: dict[str, float] | None = None  # when a dict: seconds per phase of the steps are added to it (profiling)


@contextlib.contextmanager
def _phase(run: Run, name: str):
    """Add the block's wall time to ``run.timings[name]`` when the run collects timings; nothing otherwise."""
    if run.timings is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        run.timings[name] = run.timings.get(name, 0.0) + time.perf_counter() - t0


def _global_sum(acc, values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=acc.device)
    return (acc.reduce(t, reduction="sum") if acc.num_processes > 1 else t).tolist()


def _shared_group(model, sl: slice, G: int) -> int:
    """The group size token_logprobs may share prompts over in chunk ``sl`` (1: none). Not through
    DistributedDataParallel: it allows one forward per backward, and the shared prompt pass is a second."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) or sl.start % G or (sl.stop - sl.start) % G:
        return 1
    return G


@torch.no_grad()
def _logprobs_no_grad(model, ro: Rollout, chunks: list[slice], temperature: float, suppress: list[int], G: int
                      ) -> torch.Tensor:
    return torch.cat([token_logprobs(model, _rows(ro.inputs, sl), ro.completion_ids[sl], ro.completion_mask[sl],
                                     temperature, suppress, group_size=_shared_group(model, sl, G))[0]
                      for sl in chunks])


def train_step(run: Run, items: list[Item], *, step: int, max_steps: int) -> tuple[dict, list[dict]]:
    """One GRPO step on this process's ``items``: sample, score, advantages, ``num_iterations`` updates.

    Returns the step's metrics (global over processes) and a few sampled completions for the log.
    """
    cfg, g, acc = run.cfg, run.cfg.grpo, run.accelerator
    G, world, rank = g.num_generations, acc.num_processes, acc.process_index

    with _phase(run, "generation"):
        ro = sample_completions(run.policy, run.processor, items, cfg, acc.device)  # 2. N = len(items) * G rows
    n = ro.completion_ids.shape[0]

    # 4. Rewards of this process's completions, then everyone's: groups and batch statistics must be global.
    with _phase(run, "rewards"):
        local_rewards = torch.from_numpy(score(ro, run.rewards, step=step, max_steps=max_steps)).to(acc.device)
    all_rewards = acc.gather(local_rewards) if world > 1 else local_rewards  # (N_all, R)
    weights = torch.tensor([r.weight for r in run.rewards], device=acc.device)
    failed = torch.isnan(all_rewards[:, failure_columns(run.rewards)]).any(1)  # (N_all,) a judgement failed

    # 5. Advantages over all processes' groups; keep this process's rows.
    all_adv, zero_std = compute_advantages(all_rewards, weights, G, scale=g.scale_rewards,
                                           aggregation=g.multi_objective_aggregation, failed=failed)
    advantages = all_adv[rank * n:(rank + 1) * n]  # (n,)
    mask = ro.completion_mask * (~failed[rank * n:(rank + 1) * n]).float().unsqueeze(1)  # failed: out of the loss
    if g.mask_truncated_completions:  # a cut-off completion has no real ending to reward or punish
        mask = mask * (~ro.truncated).float().unsqueeze(1)

    # Denominators of the whole batch (every process, every chunk), so the chunk losses add up to the batch loss.
    num_tokens, = _global_sum(acc, [float(mask.sum())])
    num_sequences = n * world
    size = g.micro_batch_size or n
    chunks = [slice(i, min(i + size, n)) for i in range(0, n, size)]

    # 3. Log-probs at sampling time and under the reference, computed once before any update. With a single
    # iteration the sampling-time log-probs equal the first forward's, so `logp.detach()` serves (no extra pass).
    with _phase(run, "logprobs_old_ref"):
        old_logp = _logprobs_no_grad(run.policy, ro, chunks, g.temperature, run.suppress, G) \
            if g.num_iterations > 1 else None
        ref_logp = _logprobs_no_grad(run.ref_model, ro, chunks, g.temperature, run.suppress, G) \
            if run.ref_model is not None else None

    # 6. num_iterations optimiser updates on these rollouts; each a gradient accumulation over the chunks.
    sums = update(run, ro, mask, advantages, chunks, old_logp, ref_logp, num_sequences=num_sequences,
                  num_tokens=num_tokens)
    sums["num_tokens"] = num_tokens
    metrics = step_metrics(run, ro, all_rewards, failed, sums, zero_std)
    # A few completions, one per prompt first, for completions.jsonl.
    order = [b * G + j for j in range(G) for b in range(n // G)][:cfg.logging.completions_per_step]
    samples = [{"item_id": ro.items[i].id, "question": ro.items[i].question, "answer": ro.items[i].answer,
                "completion": ro.texts[i], "truncated": bool(ro.truncated[i]), "advantage": float(advantages[i]),
                "rewards": {r.name: (None if math.isnan(v := float(local_rewards[i, j])) else v)
                            for j, r in enumerate(run.rewards)}} for i in order]
    return metrics, samples


def update(run: Run, ro: Rollout, mask: torch.Tensor, advantages: torch.Tensor, chunks: list[slice],
           old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None, *, num_sequences: int,
           num_tokens: float) -> dict[str, float]:
    """Step 6: ``num_iterations`` optimiser updates on one rollout, each a gradient accumulation over ``chunks`` of
    its rows. ``mask`` (n, T) the tokens that count; ``advantages`` (n,); ``old_logp`` / ``ref_logp`` (n, T) or None;
    ``num_sequences`` and ``num_tokens`` the whole batch's loss denominators.

    Returns sums over the updates: ``loss``, ``clip_low``, ``clip_high``, ``clip_region``, ``kl``, ``tokens``, the
    sampling policy's ``entropy`` and the mean ``grad_norm``.
    """
    g, acc, world = run.cfg.grpo, run.accelerator, run.accelerator.num_processes
    sums = dict.fromkeys(("loss", "clip_low", "clip_high", "clip_region", "kl", "tokens", "entropy"), 0.0)
    grad_norms = []
    params = [p for p in run.policy.parameters() if p.requires_grad]
    for it in range(g.num_iterations):
        for ci, sl in enumerate(chunks):
            # DDP all-reduces gradients on every backward; skip it until the last chunk of the update.
            sync = ci == len(chunks) - 1
            with contextlib.nullcontext() if sync or world == 1 else acc.no_sync(run.model):
                with _phase(run, "logprobs_policy"):
                    logp, entropy = token_logprobs(run.model, _rows(ro.inputs, sl), ro.completion_ids[sl],
                                                   mask[sl], g.temperature, run.suppress,
                                                   group_size=_shared_group(run.model, sl, g.num_generations))
                    loss, stats = grpo_loss(
                        logp, logp.detach() if old_logp is None else old_logp[sl], advantages[sl], mask[sl],
                        epsilon=g.epsilon, epsilon_high=g.epsilon_high, loss_type=g.loss_type,
                        ref_logp=None if ref_logp is None else ref_logp[sl], beta=g.beta,
                        max_completion_length=g.max_new_tokens, num_sequences=num_sequences, num_tokens=num_tokens)
                # DDP averages gradients over processes; the denominators are already global, so undo the average.
                with _phase(run, "backward"):
                    acc.backward(loss * world)
            sums["loss"] += float(loss.detach())
            for k in ("clip_low", "clip_high", "clip_region", "kl", "tokens"):
                sums[k] += float(stats[k])
            if it == 0:  # entropy of the policy that sampled
                sums["entropy"] += float((entropy * mask[sl]).sum())
        with _phase(run, "optimizer"):
            max_norm = run.cfg.optim.max_grad_norm if run.cfg.optim.max_grad_norm > 0 else float("inf")
            grad_norms.append(float(acc.clip_grad_norm_(params, max_norm)))
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)

    sums["grad_norm"] = float(np.mean(grad_norms))
    return sums


def step_metrics(run: Run, ro: Rollout, all_rewards: torch.Tensor, failed: torch.Tensor, sums: dict[str, float],
                 zero_std: int) -> dict:
    """The step's log line, global over processes: loss and clipping (``sums`` of :func:`train_step`), rewards
    (``all_rewards`` (N_all, R); ``failed`` (N_all,) completions left out for a failed judgement), sampling statistics
    of this process's rollout ``ro`` summed over processes, and the judges' cumulative counters."""
    acc, g = run.accelerator, run.cfg.grpo
    num_sequences = ro.completion_ids.shape[0] * acc.num_processes
    parsed = [prompts.parse_completion(t) for t in ro.texts]
    local = [sums["loss"], sums["clip_low"], sums["clip_high"], sums["clip_region"], sums["kl"], sums["tokens"],
             sums["entropy"], float(sum(p.thought for p in parsed)),
             float(sum(p.answer == it.answer for p, it in zip(parsed, ro.items))),
             float(sum(p.well_formed for p in parsed)), float(ro.completion_mask.sum()), float(ro.truncated.sum())]
    (loss_sum, clip_low, clip_high, clip_region, kl, tokens, entropy, thought, correct, well_formed, length,
     truncated) = _global_sum(acc, local)
    weights = torch.tensor([r.weight for r in run.rewards], device=all_rewards.device)
    total = (all_rewards * weights).nansum(1)
    total = torch.where(torch.isnan(all_rewards).all(1) | failed, torch.nan, total)  # the rewards that were paid
    it_tokens = max(tokens, 1.0)  # summed over iterations
    per_reward = {}
    for j, r in enumerate(run.rewards):
        per_reward[f"rewards/{r.name}/mean"] = float(torch.nanmean(all_rewards[:, j]))
        per_reward[f"rewards/{r.name}/std"] = float(nanstd(all_rewards[:, j]))
        # None (not applicable, or a failed judgement) is left out, never paid as 0: counted here
        per_reward[f"rewards/{r.name}/missing"] = int(torch.isnan(all_rewards[:, j]).sum())
    judges = [j for r in run.rewards for j in r.judges]
    return {
        "loss": loss_sum / g.num_iterations, "grad_norm": sums["grad_norm"],
        "reward": float(torch.nanmean(total)), "reward_std": float(nanstd(total)),
        "frac_reward_zero_std": zero_std / (num_sequences // g.num_generations), "zero_std_groups": zero_std,
        "failed_judgements": int(failed.sum()), **per_reward,
        "kl": kl / it_tokens if g.beta > 0 else None, "entropy": entropy / max(sums["num_tokens"], 1.0),
        "clip_ratio/low": clip_low / it_tokens, "clip_ratio/high": clip_high / it_tokens,
        "clip_ratio/region": clip_region / it_tokens,
        "completion_length": length / num_sequences, "truncated_frac": truncated / num_sequences,
        "think_rate": thought / num_sequences, "accuracy": correct / num_sequences,
        "well_formed": well_formed / num_sequences,
        **{f"judge/{k}": v for k, v in sum_stats(judges).items()},  # cumulative, the judges this stage's rewards ask
    }


# ==================================================================================================================
# Curriculum mining (between stages) and the run
# ==================================================================================================================


def mine_items(policy, processor, cfg: TrainConfig, accelerator) -> list[Item]:
    """Stage data from the policy's own rollouts: ``rl.train.curriculum.mine_boundary_items`` picks items of the
    ``[mining]`` pool by pass rate.

    The miner's contract: ``mine_boundary_items(policy, processor, pool, mining, *, cfg, accelerator) -> list[Item]``,
    a subset of ``pool`` (a resume rebuilds the pool and selects the saved ids), the same on every process.
    """
    pool = load_data(cfg.mining.pool, where="mining.pool", model_path=cfg.model_path())
    check_budget(processor, pool, cfg, "mining.pool")  # before the rollouts: cut chains would also skew pass rates
    mined = mine_boundary_items(policy, processor, pool, cfg.mining, cfg=cfg, accelerator=accelerator)
    pool_ids = {it.id for it in pool}
    if not mined:
        raise ValueError(f"curriculum mining kept no items of {len(pool)} (pass_band {cfg.mining.pass_band}); "
                         "widen the band or enlarge the pool")
    if any(it.id not in pool_ids for it in mined):
        raise ValueError("rl.train.curriculum.mine_boundary_items returned items that are not in the pool")
    return mined


def check_budget(processor, items: list[Item], cfg: TrainConfig, where: str) -> None:
    """Refuse ``items`` whose reference reasoning ``grpo.max_new_tokens`` would cut, unless
    ``grpo.allow_truncated_chains`` (``prompts.check_completion_budget``)."""
    if not cfg.grpo.allow_truncated_chains:
        prompts.check_completion_budget(processor.tokenizer, items, cfg.grpo.max_new_tokens,
                                        f"{where} (grpo.max_new_tokens; grpo.allow_truncated_chains = true cuts them)")


def warm_up_rewards(rewards: list[Reward], say) -> None:
    """Let every reward load what it needs now (``Reward.warm_up``: a judge, an embedder) rather than at the first
    paid completion: an unreachable server or a missing model fails before any training, and the memory is part of
    the warm-up, not a jump mid-run."""
    for r in rewards:
        said = r.warm_up()
        if said:
            say(f"reward {r.name!r}: {said}")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _truncate_jsonl(path: Path, max_step: int) -> None:
    """Keep the lines of ``path`` with ``step <= max_step`` (a resumed run rewrites what came after)."""
    if path.exists():
        keep = []
        for ln in path.read_text().splitlines():
            try:
                if json.loads(ln)["step"] <= max_step:
                    keep.append(ln)
            except (ValueError, KeyError):  # a line cut short by a crash (SIGKILL mid-write): dropped
                continue
        path.write_text("".join(ln + "\n" for ln in keep))


@dataclass
class Session:
    """What stays the same across the stages of one ``train`` call: the accelerator, the models, the output paths,
    the trainer state (step, stage, data position) and the run's shared judge."""

    cfg: TrainConfig
    acc: object
    say: Callable[[str], None]
    out: Path
    state: ckpt.TrainerState
    start: Path | None  # the checkpoint a resume starts from (None: a fresh run, or past the resumed stage)
    model: torch.nn.Module
    policy: torch.nn.Module
    ref_model: torch.nn.Module | None
    processor: object
    judge: SharedJudge
    lock: object = None  # the main process's exclusive lock on ``out``: a second run there stops at once

    @property
    def root(self) -> Path:
        return self.out / "checkpoints"

    @property
    def main(self) -> bool:
        return self.acc.is_main_process


def _accelerator(accelerator, report_to: list[str], out: Path):
    """The given accelerator or a new one (with the trackers of ``logging.report_to``, logging under ``out``);
    refuses N processes that each think they train alone."""
    acc = accelerator or Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
                                     **trackers.accelerator_kwargs(report_to, out))
    if acc.num_processes == 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but accelerate set up a single process; on CPU "
                           "set ACCELERATE_USE_CPU=true (accelerate launch --multi_gpu --num_processes N)")
    return acc


def _resume_point(cfg: TrainConfig, root: Path, resume: bool, world: int, say) -> tuple[Path | None,
                                                                                         ckpt.TrainerState]:
    """(checkpoint to start from or None, trainer state): the newest complete checkpoint with ``resume``; a fresh
    state otherwise (a folder that already holds checkpoints is refused without ``resume``)."""
    state = ckpt.TrainerState(config=cfg.to_dict(), world_size=world)
    if not resume:
        if ckpt.list_checkpoints(root):
            raise FileExistsError(f"{root} already holds checkpoints: pass --resume to continue that run, or choose "
                                  "another --out")
        return None, state
    start = ckpt.find_latest(root, say)
    if start is None:
        say(f"--resume: no complete checkpoint in {root}; starting from the beginning")
        return None, state
    state = ckpt.load_trainer_state(start)
    if state.stage >= len(cfg.stages):
        raise ConfigError(f"{start} is in stage {state.stage} but {cfg.source} has {len(cfg.stages)} stages")
    say(f"resuming from {start.name}: step {state.step}, stage {cfg.stages[state.stage].name!r}")
    if state.config != cfg.to_dict():
        say("warning: the config differs from the one the checkpoint was written with")
    state.config, state.world_size = cfg.to_dict(), world
    return start, state


def _open_session(cfg: TrainConfig, out: Path, resume: bool, acc) -> Session:
    """Output folder, resume point, models (policy trainable except ``optim.freeze``; the frozen KL reference),
    seeds and logs: everything before the first stage."""
    main, rank, world = acc.is_main_process, acc.process_index, acc.num_processes
    say = (lambda msg: tqdm.write(f"[grpo] {msg}", file=sys.stderr)) if main else (lambda msg: None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.grpo.batch_size % world:
        raise ConfigError(f"{cfg.source}: grpo.batch_size = {cfg.grpo.batch_size} does not split over {world} "
                          "processes")
    lock = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        lock = exclusive_lock(out / LOCK, f"the training run in {out}")  # before touching another run's temp dirs
        ckpt.remove_temp_dirs(out / "checkpoints", say)
    acc.wait_for_everyone()
    start, state = _resume_point(cfg, out / "checkpoints", resume, world, say)
    policy, processor = load_organism(start or cfg.model_path())  # eval mode: see the module docstring
    for name, p in policy.named_parameters():
        p.requires_grad_(not any(name.startswith(prefix) for prefix in cfg.optim.freeze))
    ref_model = None
    if cfg.grpo.beta > 0:  # the KL anchor: the run's starting model (not the checkpoint a resume starts from)
        ref_model = load_organism(cfg.ref_model or cfg.model_path())[0].requires_grad_(False).to(acc.device)
    model = acc.prepare_model(policy)  # DDP wrapper with several processes; the model itself with one
    _seed_everything(cfg.seed + rank)  # each process samples differently (a resume restores the saved states)
    if main:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
        for path in (out / "log.jsonl", out / "completions.jsonl"):
            if start is None:
                path.unlink(missing_ok=True)
            else:
                _truncate_jsonl(path, state.step)
    return Session(cfg, acc, say, out, state, start, model, acc.unwrap_model(model), ref_model, processor,
                   SharedJudge(cfg.judge.backend, **cfg.judge.settings()), lock)


def _enter_stage(se: Session, si: int) -> tuple[Run, list[Item], PromptStream]:
    """Stage ``si``: its items (mined ones from the policy's rollouts, or a resume's saved selection), rewards
    (warmed up), a fresh optimiser and schedule, the prompt stream; restored from the checkpoint when resuming
    inside this stage."""
    cfg, state, stage = se.cfg, se.state, se.cfg.stages[si]
    here = se.start is not None and si == state.stage  # resuming inside (or at the end of) this stage
    where = f"stage {stage.name!r}"
    if stage.data.source == "mined":
        if here and state.mined_item_ids is not None:
            by_id = {it.id: it for it in load_data(cfg.mining.pool, where="mining.pool", model_path=cfg.model_path())}
            items = [by_id[i] for i in state.mined_item_ids]
        else:
            items = mine_items(se.policy, se.processor, cfg, se.acc)
        mined_ids = [it.id for it in items]
    else:
        items, mined_ids = load_data(stage.data, where=where, model_path=cfg.model_path()), None
    rewards = resolve_rewards(stage.rewards, cfg.reward_kwargs, judge=se.judge, judge_weight=cfg.judge.weight)
    check_requirements(rewards, items, where=where)
    check_budget(se.processor, items, cfg, where)
    warm_up_rewards(rewards, se.say)
    lr = cfg.optim.lr if stage.lr is None else stage.lr
    optimizer, scheduler = build_optimizer(se.policy, cfg, lr, stage.steps * cfg.grpo.num_iterations)
    stream = PromptStream(len(items), [cfg.seed, si], stage.data.shuffle, state.data_position if here else None)
    if here:
        scheduler.load_state_dict(state.scheduler)
        ckpt.restore(se.start, optimizer, rank=se.acc.process_index, log=se.say)  # last: no random draws after it
    else:
        state.stage, state.stage_step, state.data_position, state.mined_item_ids = si, 0, stream.state(), mined_ids
    se.say(f"{where}: {len(items)} items, {stage.steps} steps, rewards {stage.rewards}")
    return Run(cfg, se.model, se.policy, se.ref_model, se.processor, se.acc, rewards, optimizer, scheduler,
               suppressed_token_ids(se.processor.tokenizer)), items, stream


def _log_step(se: Session, metrics: dict, samples: list[dict], seconds: float, lr: float, bar) -> None:
    """Append the step's line to log.jsonl (strict JSON: NaN as null) and its samples to completions.jsonl."""
    if not se.main:
        return
    stage = se.cfg.stages[se.state.stage].name
    record = {"step": se.state.step, "stage": stage, "lr": lr, "seconds": round(seconds, 3),
              **{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}}
    with open(se.out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    trackers.log(se.acc, record, se.state.step)
    with open(se.out / "completions.jsonl", "a") as f:
        f.writelines(json.dumps({"step": se.state.step, **s}) + "\n" for s in samples)
    bar.set_postfix(reward=f"{metrics['reward']:.3f}", acc=f"{metrics['accuracy']:.2f}",
                    think=f"{metrics['think_rate']:.2f}")


def _checkpoint_if_due(se: Session, run: Run) -> None:
    """7. A checkpoint every ``checkpoint.every`` global steps and at the end of each stage."""
    cfg, state = se.cfg, se.state
    if state.step % cfg.checkpoint.every == 0 or state.stage_step == cfg.stages[state.stage].steps:
        path = ckpt.save_checkpoint(se.root, state, se.policy, se.processor, run.optimizer,
                                    keep_last=cfg.checkpoint.keep_last, rank=se.acc.process_index, is_main=se.main,
                                    barrier=se.acc.wait_for_everyone)
        se.say(f"saved {path}")


def train(cfg: TrainConfig, out: str | Path, *, resume: bool = False, stop_after: int | None = None,
          accelerator=None) -> torch.nn.Module:
    """Run every stage of ``cfg``, writing ``out/log.jsonl``, ``out/completions.jsonl`` and ``out/checkpoints``.

    Parameters
    ----------
    resume : continue from the newest complete checkpoint in ``out/checkpoints`` (start afresh if there is none).
        Without it, a folder that already holds checkpoints is refused.
    stop_after : stop once global step ``stop_after`` (>= 1) is done, without a final checkpoint (an interruption, for
        tests and time boxes): a fresh run trains exactly that many steps; a resumed run already past it trains none.
    accelerator : an ``accelerate.Accelerator``; default: a new one.

    Returns
    -------
    The trained (unwrapped) model.

    Raises
    ------
    ValueError
        ``stop_after`` < 1 (it would train nothing).
    """
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after must be >= 1 (the global step to stop after), got {stop_after}: "
                         "0 would train nothing")
    se = _open_session(cfg, Path(out), resume, _accelerator(accelerator, cfg.logging.report_to, Path(out)))
    state = se.state
    trackers.start(se.acc, cfg.to_dict())
    max_steps = sum(s.steps for s in cfg.stages)
    bar = tqdm(total=max_steps, initial=state.step, desc="grpo", disable=not (se.main and cfg.logging.progress_bar))
    local_n, rank = cfg.grpo.batch_size // se.acc.num_processes, se.acc.process_index
    for si in range(state.stage, len(cfg.stages)):
        if stop_after is not None and state.step >= stop_after:
            break
        run, items, stream = _enter_stage(se, si)
        for stage_step in range(state.stage_step, cfg.stages[si].steps):
            t0, lr = time.time(), run.optimizer.param_groups[0]["lr"]
            batch = stream.take(cfg.grpo.batch_size)  # the same global batch on every process ...
            mine = [items[i] for i in batch[rank * local_n:(rank + 1) * local_n]]  # ... each samples its share
            metrics, samples = train_step(run, mine, step=state.step, max_steps=max_steps)
            state.step, state.stage_step, state.data_position = state.step + 1, stage_step + 1, stream.state()
            state.scheduler = run.scheduler.state_dict()
            _log_step(se, metrics, samples, time.time() - t0, lr, bar)
            bar.update(1)
            _checkpoint_if_due(se, run)
            if stop_after is not None and state.step >= stop_after:
                bar.close()
                trackers.end(se.acc)
                return se.policy
        se.start = None
    bar.close()
    trackers.end(se.acc)
    se.acc.wait_for_everyone()
    return se.policy


def main(argv: list[str] | None = None) -> None:
    ap = cli_options.parser(cli_options.train_arguments, __doc__.splitlines()[0],
                            epilog="Data parallel: accelerate launch -m rl.train.grpo ...")
    args = ap.parse_args(argv)
    if args.stop_after is not None and args.stop_after < 1:
        ap.error(f"--stop-after must be >= 1 (the global step to stop after), got {args.stop_after}")
    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    train(cfg, args.out, resume=args.resume, stop_after=args.stop_after)


if __name__ == "__main__":
    main()
