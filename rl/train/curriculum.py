"""Curriculum mining between stages: boundary cases picked by the current policy's own pass rate.

``rl.train.grpo`` calls :func:`mine_boundary_items` when a stage takes ``data.source = "mined"``. Every item of the
``[mining]`` pool gets ``k_rollouts`` think-mode completions from the current policy, sampled at the training
temperature exactly as GRPO samples (``rl.train.rollout.sample``: same generation config, multimodal placeholder
tokens suppressed), in batches. The pass rate of an item is the fraction of its completions whose answer is right
(``rl.rewards.registry.accuracy_reward``). Kept:

1. items with ``pass_band[0] <= pass rate <= pass_band[1]`` -- solved sometimes, not reliably: the boundary cases;
2. with ``keep_hard``, also every item whose ``difficulty`` is ``"hard"`` (the acoustically hard cases, whatever the
   policy's pass rate on them);

then at most ``max_items`` (0: no cap): band items first, then hard-only ones, each in pool order (the synthetic pool
cycles through the task families, so a cut keeps them balanced). The result is returned in pool order.

Determinism and processes: the pool is split into chunks of ``grpo.batch_size`` items; chunk ``c`` is sampled under
the torch seed ``(seed, 7919, c)``, inside ``torch.random.fork_rng`` so the training RNG stream is untouched. With N
processes, process r samples chunks r, r + N, ...; the per-item pass counts are summed over processes
(``accelerator.reduce``), so every process selects the same list, and the result does not depend on N. The policy
is used in eval mode, as the GRPO loop keeps it.

Examples
--------
>>> from rl.data.items import Item
>>> pool = [Item(id=str(i), question="q", choices=["a", "b"], answer="a", audio=None, difficulty=d)
...         for i, d in enumerate(["easy", "medium", "medium", "hard"])]
>>> select_items(pool, [0.0, 0.25, 0.5, 1.0], pass_band=[0.125, 0.625], keep_hard=True, max_items=0)
[1, 2, 3]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import torch

from rl.data.items import Item
from rl.rewards import accuracy_reward
from rl.train.rollout import Sampling, sample

__all__ = ["LAST_MINING", "mine_boundary_items", "pass_counts", "select_items"]

#: Summary of the last mining run in this process (pool size, kept counts, pass-rate histogram), for logs and tests.
LAST_MINING: dict = {}

_SEED_SALT = 7919


def select_items(pool: Sequence[Item], pass_rates: Sequence[float], *, pass_band: Sequence[float],
                 keep_hard: bool, max_items: int) -> list[int]:
    """Indices (into ``pool``, ascending) of the items to keep; see the module docstring for the rule."""
    lo, hi = pass_band
    band = [i for i, r in enumerate(pass_rates) if lo <= r <= hi]
    in_band = set(band)
    hard = [i for i, it in enumerate(pool) if keep_hard and it.difficulty == "hard" and i not in in_band]
    chosen = band + hard
    if max_items > 0:
        chosen = chosen[:max_items]
    return sorted(chosen)


def pass_counts(policy, processor, pool: Sequence[Item], *, k: int, cfg, device, rank: int = 0, world: int = 1,
                chunk_items: int | None = None) -> np.ndarray:
    """Correct answers out of ``k`` think-mode rollouts per item, for the chunks this process owns (zeros for the
    others); shape (len(pool),) float64. Chunk c (``chunk_items`` items) is sampled under seed ``(cfg.seed, c)``."""
    sampling = Sampling(k, cfg.grpo.temperature, cfg.grpo.max_new_tokens)
    size = max(1, chunk_items or cfg.grpo.batch_size)
    counts = np.zeros(len(pool), dtype=np.float64)
    devices = [device] if torch.device(device).type == "cuda" else []
    for c, start in enumerate(range(0, len(pool), size)):
        if c % world != rank:
            continue
        chunk = list(pool[start:start + size])
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(np.random.SeedSequence([cfg.seed, _SEED_SALT, c]).generate_state(1)[0]))
            ro = sample(policy, processor, chunk, sampling, mode="think", device=device)
        correct = accuracy_reward(ro.prompts, ro.texts, [[] for _ in ro.texts], answer=[it.answer for it in ro.items])
        counts[start:start + len(chunk)] = np.asarray(correct, dtype=np.float64).reshape(len(chunk), k).sum(1)
    return counts


def mine_boundary_items(policy, processor, pool: Sequence[Item], mining, *, cfg, accelerator) -> list[Item]:
    """The ``[mining]`` hook of ``rl.train.grpo``: the pool items whose pass rate under ``policy`` makes them
    boundary cases.

    Parameters
    ----------
    policy : the current (unwrapped) model; processor : its processor.
    pool : candidate items (``cfg.mining.pool``).
    mining : ``rl.train.config.MiningConfig`` -- ``k_rollouts``, ``pass_band``, ``keep_hard``, ``max_items``.
    cfg : the run's ``TrainConfig`` (generation settings: temperature, max_new_tokens, batch_size, seed).
    accelerator : an ``accelerate.Accelerator`` (``process_index``, ``num_processes``, ``device``, ``reduce``).

    Returns
    -------
    A subset of ``pool`` in pool order, the same on every process.
    """
    rank, world = accelerator.process_index, accelerator.num_processes
    counts = pass_counts(policy, processor, pool, k=mining.k_rollouts, cfg=cfg, device=accelerator.device,
                         rank=rank, world=world)
    if world > 1:
        total = accelerator.reduce(torch.tensor(counts, device=accelerator.device), reduction="sum")
        counts = total.cpu().numpy().astype(np.float64)
    rates = counts / mining.k_rollouts
    keep = select_items(pool, rates, pass_band=mining.pass_band, keep_hard=mining.keep_hard,
                        max_items=mining.max_items)
    lo, hi = mining.pass_band
    in_band = int(sum(lo <= r <= hi for r in rates))
    hist, _ = np.histogram(rates, bins=mining.k_rollouts + 1, range=(-0.5 / mining.k_rollouts,
                                                                     1 + 0.5 / mining.k_rollouts))
    LAST_MINING.clear()
    LAST_MINING.update({"pool": len(pool), "kept": len(keep), "in_band": in_band,
                        "hard_kept": sum(pool[i].difficulty == "hard" for i in keep),
                        "mean_pass_rate": float(rates.mean()) if len(rates) else 0.0,
                        "pass_rate_histogram": hist.tolist(), "pass_rates": rates.tolist()})
    if accelerator.is_main_process:
        print(f"[curriculum] pool {len(pool)} items x {mining.k_rollouts} rollouts: mean pass rate "
              f"{LAST_MINING['mean_pass_rate']:.3f}, {in_band} in pass_band {list(mining.pass_band)}, kept {len(keep)}"
              f" (hard: {LAST_MINING['hard_kept']})", file=sys.stderr)
    return [pool[i] for i in keep]
