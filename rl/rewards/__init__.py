"""Reward functions with TRL's signature, ``f(prompts, completions, completion_ids, **columns) -> list[float | None]``,
grouped by job. Importing this package registers every reward.

``registry``   the registry configs name rewards from, their evaluation, chat-format completions
``outcome``    the answer and the completion's shape: accuracy, format, adaptive think-accuracy
``reasoning``  the think text itself: consistency of its conclusion with the answer
``judged``     the think text against the reference chain: the hybrid (LLM judge + embedding) and LLM-judge rewards
``chain``      the think text's steps against the reference chain's: coverage, order and facts (``chain_alignment``,
               no judge), the judge's recall of the reference (``chain_judge``) and their mix (``chain_reasoning``)
``embedding``  the sentence embedder (all-MiniLM-L6-v2 from a PyPI package)

Examples
--------
>>> from rl.rewards import accuracy_reward
>>> accuracy_reward(["p"], ["<think>\\n</think><answer>yes</answer>"], [[]], answer=["yes"])
[1.0]
"""

from rl.rewards.chain import ChainJudgeReward, ChainReasoningReward, chain_alignment_reward
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

__all__ = ["REWARDS", "ChainJudgeReward", "ChainReasoningReward", "HybridReasoningReward", "JudgedReward",
           "LLMJudgeReward", "Reward", "accuracy_reward", "adaptive_think_accuracy_reward", "chain_alignment_reward",
           "check_requirements", "completion_text", "compute_rewards", "consistency_reward", "failure_columns",
           "format_reward", "get_reward", "item_columns", "register_reward", "resolve_rewards", "think_conclusion"]
