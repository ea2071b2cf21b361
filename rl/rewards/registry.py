"""The reward registry the GRPO config names rewards from, and their safe evaluation.

Every reward is ``f(prompts, completions, completion_ids, **columns) -> list[float | None]`` (TRL's signature): one
value per completion. ``completions`` are strings or TRL's chat form (``[{"role": "assistant", "content": ...}]``;
:func:`completion_text` reads both). ``columns`` holds the item fields repeated once per completion -- ``id``,
``question``, ``choices``, ``answer``, ``reference_chain``, ``family``, ``difficulty``, ``meta`` -- plus
``trainer_state`` (``.global_step``, ``.max_steps``, as TRL's). So the same reward runs unchanged in
``trl.GRPOTrainer`` on a text dataset with those columns.

``None`` means "not applicable" (ignored like TRL: NaN, then ``nansum`` over rewards), except for a reward whose
``none_is_failure`` attribute is true (the judge rewards): there ``None`` is a failed judgement and the trainer leaves
that completion out of the advantage altogether.

A reward is a function, or a class whose ``build(judge=..., judge_weight=..., **kwargs)`` makes one from the run's
shared judge (:mod:`rl.rewards.judged`). Optional attributes the trainer uses, so that it needs to know nothing of a
reward's internals: ``requires`` (item columns needed on every item; checked before the first step by
:func:`check_requirements`), ``warm_up()`` (load what the reward needs when a stage starts; returns a description
or None), ``judges`` (the judges it has asked, for the judge metrics) and ``none_is_failure``.

Registering a reward::

    from rl.rewards.registry import register_reward

    @register_reward("brevity")
    def brevity_reward(prompts, completions, completion_ids, **kwargs):
        return [1.0 / (1 + len(completion_text(c))) for c in completions]

A config then says ``rewards = { accuracy = 1.0, brevity = 0.1 }``; keyword arguments for a reward go in
``[reward_kwargs.brevity]``. ``"package.module:function"`` names any importable function without registering it.

Examples
--------
>>> completion_text([{"role": "assistant", "content": "<answer>yes</answer>"}])
'<answer>yes</answer>'
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rl.data.prompts import Completion, parse_completion
from rl.judge.prompts import DEFAULT_HYBRID_WEIGHT

RewardFunc = Callable[..., list]

#: name -> reward function, or a class with ``build`` (made with the run's judge). Add with :func:`register_reward`.
REWARDS: dict[str, RewardFunc | type] = {}


def completion_text(completion) -> str:
    """A completion as text: a string, or TRL's chat form, a list of messages (the last message's content)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content") or "")
    raise TypeError(f"a completion must be a string or a list of chat messages ({{'role', 'content'}}), got "
                    f"{type(completion).__name__}: {str(completion)[:80]!r}")


def parse_completions(completions: Sequence) -> list[Completion]:
    """Think text, answer and well-formedness of each completion (strings or chat messages)."""
    return [parse_completion(completion_text(c)) for c in completions]


def register_reward(name: str | None = None, *, requires: Sequence[str] = ()) -> Callable[[RewardFunc], RewardFunc]:
    """Decorator: register a reward function or class under ``name`` (default: its name without ``_reward``).

    ``requires`` names item columns the reward needs on every item; stored as the attribute ``requires``.
    Re-registering a name replaces it (so a notebook can redefine a reward).
    """
    def deco(fn: RewardFunc) -> RewardFunc:
        fn.requires = tuple(dict.fromkeys((*getattr(fn, "requires", ()), *requires)))  # type: ignore[attr-defined]
        REWARDS[name or fn.__name__.removesuffix("_reward")] = fn
        return fn

    return deco


# --- lookup and evaluation -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reward:
    """A configured reward: its name (the config key), the callable (kwargs bound), weight, required columns and
    whether its ``None`` is a failure (the completion is then left out of the advantage)."""

    name: str
    func: RewardFunc
    weight: float
    requires: tuple[str, ...]
    none_is_failure: bool = False

    def warm_up(self) -> str | None:
        """Load what the reward needs now (a judge, an embedder), so a missing model fails before any training and
        the memory arrives in the warm-up; a description of what was loaded, or None."""
        warm = getattr(self.func, "warm_up", None)
        return warm() if warm is not None else None

    @property
    def judges(self) -> list:
        """The judges this reward has asked (built ones only), for the judge metrics."""
        return list(getattr(self.func, "judges", ()))


def get_reward(name: str) -> RewardFunc | type:
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


def resolve_rewards(weights: dict[str, float], reward_kwargs: dict[str, dict] | None = None, *, judge=None,
                    judge_weight: float = DEFAULT_HYBRID_WEIGHT) -> list[Reward]:
    """Config ``{name: weight}`` (+ ``{name: kwargs}``) -> list of :class:`Reward`, in the config's order.

    Parameters
    ----------
    judge : the run's judge (an ``rl.judge.Judge`` or ``rl.judge.SharedJudge``), given to every reward class that
        asks one; None: a reward that needs a judge is an error.
    judge_weight : the judge's share in rewards that mix it with something else (the hybrid reward).

    Raises
    ------
    ValueError
        An unknown reward, a keyword argument the reward does not take, or a judge reward without a judge.
    """
    reward_kwargs = reward_kwargs or {}
    out = []
    for name, weight in weights.items():
        entry, kwargs = get_reward(name), dict(reward_kwargs.get(name) or {})
        try:
            if hasattr(entry, "build"):
                func = entry.build(judge=judge, judge_weight=judge_weight, **kwargs)
            else:
                func = functools.update_wrapper(functools.partial(entry, **kwargs), entry) if kwargs else entry
        except TypeError as exc:
            raise ValueError(f"reward {name!r}: bad keyword argument in reward_kwargs.{name} ({exc})") from exc
        out.append(Reward(name, func, float(weight), tuple(getattr(entry, "requires", ())),
                          bool(getattr(entry, "none_is_failure", False))))
    return out


def failure_columns(rewards: Sequence[Reward]) -> list[int]:
    """Indices of the rewards whose ``None`` is a failed judgement (columns of :func:`compute_rewards`' matrix)."""
    return [j for j, r in enumerate(rewards) if r.none_is_failure]


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
    numpy.ndarray, shape (n_completions, n_rewards), float32; NaN where a reward returned None (not applicable, or a
    failed judgement for the columns :func:`failure_columns` names).

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
