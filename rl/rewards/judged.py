"""Rewards that compare the think text with the item's reference chain: the hybrid reasoning-similarity reward of
stage 1 (LLM judge + sentence-embedding cosine) and the LLM-judge reward of stage 2.

They are callables with TRL's signature built around a judge (``rl.judge``), so they run unchanged in
``trl.GRPOTrainer``::

    from rl.judge import OpenAIJudge
    from rl.rewards import HybridReasoningReward

    hybrid = HybridReasoningReward(OpenAIJudge("http://judge:8000/v1", "Qwen/Qwen3-8B"), judge_weight=0.5)
    trainer = GRPOTrainer(..., reward_funcs=[accuracy_reward, format_reward, hybrid])

In ``rl.train.grpo`` the run's ``[judge]`` table makes one shared judge (``rl.judge.SharedJudge``) that every judge
reward of every stage asks. Both pay only for a correct answer with think text (only those are judged). ``None`` is a
failed judgement (``none_is_failure``): never 0; the trainer leaves that completion out of the advantage, and too
many failures stop the run (``JudgeFailureError``). A reward owns its warm-up (``warm_up``) and reports the judges it
asked (``judges``), so the trainer needs to know nothing of its internals.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rl.judge import DEFAULT_HYBRID_WEIGHT, Judge, SharedJudge
from rl.rewards.embedding import embed, similarity
from rl.rewards.registry import parse_completions, register_reward

__all__ = ["HybridReasoningReward", "JudgedReward", "LLMJudgeReward", "paid_columns", "paid_completions"]


def _reference_text(ref) -> str:
    return ref.strip() if isinstance(ref, str) else " ".join(s.strip() for s in ref)


def _check_references(name: str, reference_chain, n: int, ids=None) -> list:
    """The reference chains, or a ValueError naming the reward and the first item without one."""
    if reference_chain is None:
        raise ValueError(f"reward {name!r} needs the item column 'reference_chain' (a list of reasoning steps), but "
                         "the data has no such column; add reference chains or drop the reward")
    for i, ref in enumerate(reference_chain):
        if ref is None or (isinstance(ref, str) and not ref.strip()) or (not isinstance(ref, str) and not
                                                                          any(str(s).strip() for s in ref)):
            which = f"item {ids[i]!r}" if ids is not None else f"completion {i}"
            raise ValueError(f"reward {name!r} needs a reference chain for every item, but {which} has none "
                             "('reference_chain' is empty or None)")
    if len(reference_chain) != n:
        raise ValueError(f"reward {name!r}: {len(reference_chain)} reference chains for {n} completions")
    return list(reference_chain)


def paid_completions(name: str, completions: Sequence, answer: Sequence[str], reference_chain,
                     ids=None) -> tuple[list[str], list, list[int]]:
    """(think texts, references, indices) of the completions a reference-chain reward pays for: a correct answer and a
    non-empty think block. ValueError (naming reward ``name``) if an item has no reference chain."""
    refs = _check_references(name, reference_chain, len(completions), ids)
    parsed = parse_completions(completions)
    paid = [i for i, (p, a) in enumerate(zip(parsed, answer)) if p.answer == a and p.thought]
    return [parsed[i].think for i in paid], [refs[i] for i in paid], paid


def paid_columns(paid: Sequence[int], answer: Sequence[str], columns: dict) -> tuple[list[str], list | None]:
    """The paid completions' answers and choices (None without a ``choices`` column)."""
    choices = columns.get("choices")
    return [answer[i] for i in paid], None if choices is None else [choices[i] for i in paid]


class JudgedReward:
    """Shared part of the judge rewards: the judge (given, or shared and built on first use), the paid completions,
    warm-up and the judges asked.

    Parameters
    ----------
    judge : an ``rl.judge.Judge``, or an ``rl.judge.SharedJudge`` (built when first needed).
    """

    name = "judged"
    requires: tuple[str, ...] = ("reference_chain",)
    none_is_failure = True  # None = the judge failed for that completion: masked from the advantage, never 0

    def __init__(self, judge: Judge | SharedJudge):
        if not isinstance(judge, (Judge, SharedJudge)):
            raise TypeError(f"reward {self.name!r} needs a judge (rl.judge.LocalJudge, OpenAIJudge or SharedJudge), "
                            f"got {type(judge).__name__}")
        self._judge = judge
        self.__name__ = f"{self.name}_reward"  # TRL names a reward's log columns after __name__

    @classmethod
    def build(cls, *, judge: Judge | SharedJudge | None, judge_weight: float = DEFAULT_HYBRID_WEIGHT, **kwargs):
        """The reward for a run (``rl.rewards.registry.resolve_rewards``): the run's judge and its settings."""
        if judge is None:
            raise ValueError(f"reward {cls.name!r} asks an LLM judge, but none was configured (a [judge] table)")
        return cls(judge, **kwargs)

    @property
    def judge(self) -> Judge:
        """The judge (a shared one is built now if it was not yet)."""
        return self._judge.get() if isinstance(self._judge, SharedJudge) else self._judge

    @property
    def judges(self) -> list[Judge]:
        """The judges this reward has asked: built ones only (metrics never load a model)."""
        built = self._judge.built if isinstance(self._judge, SharedJudge) else self._judge
        return [built] if built is not None else []

    def warm_up(self) -> str:
        """Build the judge and page its weights in (an unreachable server or a missing model fails here)."""
        judge = self.judge
        judge.warm_up()
        return f"judge {judge.describe()}"

    def _paid(self, completions: Sequence, answer: Sequence[str], reference_chain, ids) -> tuple[list, list, list]:
        return paid_completions(self.name, completions, answer, reference_chain, ids)


class WeightedReward(JudgedReward):
    """``judge_weight * judge part + (1 - judge_weight) * embedding part`` for a correct answer with think text; 0.0
    otherwise; None where the judge failed. Subclasses supply the two parts (each a list of scores in [0, 1] for the
    paid completions); ``judge_weight`` = 0 never asks the judge, 1 never loads the embedder."""

    def __init__(self, judge: Judge | SharedJudge, judge_weight: float, embedding_model: str | None = None):
        if not 0.0 <= judge_weight <= 1.0:
            raise ValueError(f"reward {self.name!r}: judge_weight must lie in [0, 1], got {judge_weight}")
        super().__init__(judge)
        self.judge_weight, self.embedding_model = float(judge_weight), embedding_model

    @property
    def judges(self) -> list[Judge]:
        return super().judges if self.judge_weight > 0 else []

    def warm_up(self) -> str:
        """Build and warm the judge (if it is weighed) and load the embedder (if it is)."""
        said = super().warm_up() if self.judge_weight > 0 else "no judge (judge_weight = 0)"
        if self.judge_weight < 1:
            embed(["warm-up"], self.embedding_model)
            said += f", embedder {self.embedding_model or 'all-MiniLM-L6-v2'}"
        return said

    def judge_part(self, thinks: list[str], refs: list) -> list[float | None]:
        raise NotImplementedError

    def embedding_part(self, thinks: list[str], refs: list, answers: list[str], choices: list | None) -> list[float]:
        """Scores of the paid completions; ``answers`` and ``choices`` (or None) are their items' columns."""
        raise NotImplementedError

    def __call__(self, prompts: list, completions: list, completion_ids: list, *, answer: list[str],
                 reference_chain: list | None = None, **columns) -> list[float | None]:
        thinks, refs, paid = self._paid(completions, answer, reference_chain, columns.get("id"))
        out: list[float | None] = [0.0] * len(completions)
        if not paid:
            return out
        w = self.judge_weight
        judged = self.judge_part(thinks, refs) if w > 0 else [0.0] * len(paid)
        embedded = (self.embedding_part(thinks, refs, *paid_columns(paid, answer, columns)) if w < 1
                    else [0.0] * len(paid))
        for i, j, e in zip(paid, judged, embedded):
            out[i] = None if j is None else float(w * j + (1.0 - w) * e)
        return out


@register_reward("hybrid_reasoning")
class HybridReasoningReward(WeightedReward):
    """The stage-1 reward: ``judge_weight * judge + (1 - judge_weight) * cosine(embed(think), embed(reference))`` for a
    correct answer.

    Paid only when the answer is correct (0.0 otherwise, and 0.0 for a correct answer with an empty think block); only
    those completions are judged. The cosine (all-MiniLM-L6-v2 unless ``embedding_model`` names another
    sentence-transformers folder) is clipped to [0, 1], so the reward lies in [0, 1]. None where the judge failed.
    ``judge_weight`` = 1 is the judge alone, 0 the embedding alone (the judge is then never asked).
    """

    name = "hybrid_reasoning"

    def __init__(self, judge: Judge | SharedJudge, judge_weight: float = DEFAULT_HYBRID_WEIGHT,
                 embedding_model: str | None = None):
        super().__init__(judge, judge_weight, embedding_model)

    @classmethod
    def build(cls, *, judge: Judge | SharedJudge | None, judge_weight: float = DEFAULT_HYBRID_WEIGHT, **kwargs):
        if judge is None and judge_weight > 0:
            raise ValueError("reward 'hybrid_reasoning' asks an LLM judge, but none was configured (a [judge] table)")
        return cls(judge if judge is not None else SharedJudge(), judge_weight, **kwargs)

    def judge_part(self, thinks: list[str], refs: list) -> list[float | None]:
        return self.judge.score(thinks, refs)

    def embedding_part(self, thinks: list[str], refs: list, answers: list[str], choices: list | None) -> list[float]:
        cos = similarity(thinks, [_reference_text(r) for r in refs], self.embedding_model)
        return np.clip(cos, 0.0, 1.0).tolist()


@register_reward("llm_judge")
class LLMJudgeReward(JudgedReward):
    """The stage-2 reward: the judge's score in [0, 1] of the think text against the reference chain when the answer
    is correct; 0.0 otherwise (and for an empty think block); None where the judge failed."""

    name = "llm_judge"

    def __call__(self, prompts: list, completions: list, completion_ids: list, *, answer: list[str],
                 reference_chain: list | None = None, **columns) -> list[float | None]:
        thinks, refs, paid = self._paid(completions, answer, reference_chain, columns.get("id"))
        out: list[float | None] = [0.0] * len(completions)
        for i, s in zip(paid, self.judge.score(thinks, refs) if paid else []):
            out[i] = s
        return out
