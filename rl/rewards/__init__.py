"""Reward functions with TRL's signature, ``f(prompts, completions, completion_ids, **columns) -> list[float | None]``,
grouped by job. Importing this package registers every reward.

``registry``   the registry configs name rewards from, their evaluation, chat-format completions
``outcome``    the answer and the completion's shape: accuracy, format, adaptive think-accuracy
``reasoning``  the think text itself: consistency of its conclusion with the answer
``judged``     the think text against the reference chain: the hybrid (LLM judge + embedding) and LLM-judge rewards
``embedding``  the sentence embedder (all-MiniLM-L6-v2 from a PyPI package)

Examples
--------
>>> from rl.rewards import accuracy_reward
>>> accuracy_reward(["p"], ["<think>\\n</think><answer>yes</answer>"], [[]], answer=["yes"])
[1.0]
"""

from rl.rewards.judged import HybridReasoningReward, JudgedReward, LLMJudgeReward
from rl.rewards.outcome import accuracy_reward, adaptive_think_accuracy_reward, format_reward
from rl.rewards.reasoning import consistency_reward, think_conclusion
from rl.rewards.registry import (
    REWARDS,
    Reward,
    check_requirements,
    completion_text,
    compute_rewards,
    failure_columns,
    get_reward,
    item_columns,
    register_reward,
    resolve_rewards,
)

__all__ = ["REWARDS", "HybridReasoningReward", "JudgedReward", "LLMJudgeReward", "Reward", "accuracy_reward",
           "adaptive_think_accuracy_reward", "check_requirements", "completion_text", "compute_rewards",
           "consistency_reward", "failure_columns", "format_reward", "get_reward", "item_columns", "register_reward",
           "resolve_rewards", "think_conclusion"]
