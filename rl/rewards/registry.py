"""Reward functions with TRL's signature, the registry the GRPO config names them from, and their safe evaluation.

Every reward is ``f(prompts, completions, completion_ids, **columns) -> list[float | None]``: one value per
completion, ``None`` meaning "not applicable" (ignored like TRL: NaN, then ``nansum`` over rewards). ``columns`` holds
the item fields repeated once per completion -- ``id``, ``question``, ``choices``, ``answer``, ``reference_chain``,
``family``, ``difficulty``, ``meta`` -- plus ``trainer_state`` (``.global_step``, ``.max_steps``, as TRL's). So the same
function runs unchanged in ``trl.GRPOTrainer`` on a text dataset with those columns.

Registering a reward (importing ``rl.rewards`` registers every reward of the package)::

    from rl.rewards.registry import register_reward

    @register_reward("hybrid", requires=("reference_chain",))
    def hybrid_reward(prompts, completions, completion_ids, *, answer, reference_chain, **kwargs):
        ...

A config then says ``rewards = { accuracy = 1.0, hybrid = 0.5 }``; keyword arguments for a reward go in
``[reward_kwargs.hybrid]``. ``"package.module:function"`` names any importable function without registering it.
``requires`` (a function attribute) lists item columns that must be present (not None) on *every* item; the trainer
checks it before the first step (:func:`check_requirements`).

Examples
--------
>>> accuracy_reward(["p"] * 2, ["<think>\\n</think><answer>yes</answer>", "no answer"], [[], []], answer=["yes"] * 2)
[1.0, 0.0]
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rl.data.prompts import parse_completion

RewardFunc = Callable[..., list]

#: name -> reward function. Add with :func:`register_reward`.
REWARDS: dict[str, RewardFunc] = {}


def register_reward(name: str | None = None, *, requires: Sequence[str] = ()) -> Callable[[RewardFunc], RewardFunc]:
    """Decorator: register a reward under ``name`` (default: the function name without ``_reward``).

    ``requires`` names item columns the reward needs on every item; stored as the function attribute ``requires``.
    Re-registering a name replaces it (so a notebook can redefine a reward).
    """
    def deco(fn: RewardFunc) -> RewardFunc:
        fn.requires = tuple(dict.fromkeys((*getattr(fn, "requires", ()), *requires)))  # type: ignore[attr-defined]
        REWARDS[name or fn.__name__.removesuffix("_reward")] = fn
        return fn

    return deco


@register_reward("accuracy")
def accuracy_reward(prompts: list, completions: list[str], completion_ids: list, *, answer: list[str],
                    **kwargs) -> list[float]:
    """1.0 when the text inside the last ``<answer>...</answer>`` equals the item's answer exactly, else 0.0."""
    return [1.0 if parse_completion(c).answer == a else 0.0 for c, a in zip(completions, answer)]


@register_reward("format")
def format_reward(prompts: list, completions: list[str], completion_ids: list, **kwargs) -> list[float]:
    """1.0 for a well-formed completion with a non-empty think block, 0.5 well-formed with an empty one, else 0.0.

    Well formed: ``<think>...</think>`` then ``<answer>...</answer>`` and nothing else (``prompts.parse_completion``).
    Why 0.5 for the empty think block: the base organism answers in exactly that shape (Qwen3's non-thinking mode),
    so the format part stays satisfied while it learns, and writing a think block is worth the other half. The half
    is paid for *any* think text; what the text says is the job of the similarity / judge rewards.
    """
    out = []
    for c in completions:
        p = parse_completion(c)
        out.append((1.0 if p.thought else 0.5) if p.well_formed else 0.0)
    return out


# --- lookup and evaluation -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reward:
    """A configured reward: its name (the config key), the callable (kwargs bound), weight and required columns."""

    name: str
    func: RewardFunc
    weight: float
    requires: tuple[str, ...]


def get_reward(name: str) -> RewardFunc:
    """The reward registered as ``name``, or the function ``"module:attr"``; ValueError listing the names if none."""
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"reward {name!r}: cannot import {attr!r} from {module!r} ({exc})") from exc
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; registered rewards: {sorted(REWARDS)} "
                         "(or give 'package.module:function')")
    return REWARDS[name]


def resolve_rewards(weights: dict[str, float], reward_kwargs: dict[str, dict] | None = None) -> list[Reward]:
    """Config ``{name: weight}`` (+ ``{name: kwargs}``) -> list of :class:`Reward`, in the config's order."""
    reward_kwargs = reward_kwargs or {}
    out = []
    for name, weight in weights.items():
        fn = get_reward(name)
        bound = functools.partial(fn, **reward_kwargs[name]) if reward_kwargs.get(name) else fn
        out.append(Reward(name, bound, float(weight), tuple(getattr(fn, "requires", ()))))
    return out


def item_columns(items: Sequence, repeat: int = 1) -> dict[str, list]:
    """The per-completion columns of ``items`` (each item repeated ``repeat`` times, the G completions of a group)."""
    fields = ("id", "question", "choices", "answer", "reference_chain", "family", "difficulty", "meta")
    return {f: [getattr(it, f) for it in items for _ in range(repeat)] for f in fields}


def check_requirements(rewards: Sequence[Reward], items: Sequence, where: str = "dataset") -> None:
    """Raise ValueError if a reward needs an item column that some item lacks (None or empty)."""
    for r in rewards:
        for col in r.requires:
            missing = [it.id for it in items if getattr(it, col, None) in (None, [], "")]
            if missing:
                raise ValueError(
                    f"reward {r.name!r} requires '{col}' on every item, but {len(missing)} of {len(items)} items in "
                    f"{where} have none (e.g. {missing[0]!r}). Add {col} to the data or drop the reward.")


def compute_rewards(rewards: Sequence[Reward], prompts: list, completions: list[str], completion_ids: list,
                    columns: dict[str, list]) -> np.ndarray:
    """Call every reward and stack the results.

    Returns
    -------
    numpy.ndarray, shape (n_completions, n_rewards), float32; NaN where a reward returned None.

    Raises
    ------
    ValueError
        A reward returned the wrong number of values, a NaN (use None for "not applicable"), or a non-number; the
        message names the reward.
    """
    n = len(completions)
    out = np.full((n, len(rewards)), np.nan, dtype=np.float32)
    for j, r in enumerate(rewards):
        values = r.func(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
        try:
            length = len(values)
        except TypeError:
            raise ValueError(f"reward {r.name!r} returned {type(values).__name__}, expected a list of {n} floats "
                             "(or None)") from None
        if length != n:
            raise ValueError(f"reward {r.name!r} returned {length} values for {n} completions "
                             "(one per completion expected)")
        for i, v in enumerate(values):
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
                raise ValueError(f"reward {r.name!r} returned {v!r} ({type(v).__name__}) for completion {i}; "
                                 "expected a float or None")
            if not math.isfinite(float(v)):
                raise ValueError(f"reward {r.name!r} returned {float(v)} for completion {i}; return None for "
                                 "'not applicable' (a NaN or inf is treated as a bug)")
            out[i, j] = float(v)
    return out
