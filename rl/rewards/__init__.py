"""Reward functions with TRL's signature, ``f(prompts, completions, completion_ids, **columns) -> list[float | None]``.

``registry`` names them for configs and evaluates them safely; ``reasoning`` holds the paper's reasoning rewards
(hybrid judge + embedding similarity, LLM judge, consistency, adaptive think-accuracy); ``chain`` the rewards that
measure coverage, order and facts of the think text against the reference chain; ``embedding`` the sentence
embedder. Importing this package registers every reward.

Examples
--------
>>> from rl.rewards import accuracy_reward
>>> accuracy_reward(["p"], ["<think>\\n</think><answer>yes</answer>"], [[]], answer=["yes"])
[1.0]
"""

from rl.rewards.reasoning import (  # noqa: I001  (registers the reasoning rewards after the registry)
    adaptive_think_accuracy_reward,
    consistency_reward,
    hybrid_reasoning_reward,
    llm_judge_reward,
)
from rl.rewards.chain import chain_alignment_reward, chain_judge_reward, chain_reasoning_reward
from rl.rewards.registry import (
    REWARDS,
    Reward,
    accuracy_reward,
    check_requirements,
    compute_rewards,
    format_reward,
    get_reward,
    item_columns,
    register_reward,
    resolve_rewards,
)

__all__ = ["REWARDS", "Reward", "accuracy_reward", "adaptive_think_accuracy_reward", "chain_alignment_reward",
           "chain_judge_reward", "chain_reasoning_reward", "check_requirements",
           "compute_rewards", "consistency_reward", "format_reward", "get_reward", "hybrid_reasoning_reward",
           "item_columns", "llm_judge_reward", "register_reward", "resolve_rewards"]
