"""The judge interface shared by the backends: the content cache, statistics and failure accounting.

``judge.score(candidates, references) -> list[float | None]``: a score in [0, 1] per candidate, ``None`` where the
judgement failed (never 0: the trainer leaves a failed judgement out of the advantage). Results are cached by content,
``sha256(model id + prompt)`` -> score, in memory and optionally in a JSON file. More than ``max_failure_fraction``
failures among the recent judgements raise :class:`JudgeFailureError`. A backend implements ``_jobs`` (the prompts)
and ``_run`` (the scores); :mod:`rl.judge.local` and :mod:`rl.judge.server` are the two.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rl.judge.prompts import DEFAULT_PROMPT, JudgePrompt, format_reference, get_prompt, sanitize_candidate

__all__ = ["Judge", "JudgeError", "JudgeFailureError", "JudgeStats", "JudgeUnavailableError", "Job", "sum_stats"]


class JudgeError(RuntimeError):
    """Base class of the judge's errors."""


class JudgeUnavailableError(JudgeError):
    """The judge cannot be used at all: server unreachable, model folder missing, model not served, bad tokenizer."""


class JudgeFailureError(JudgeError):
    """Too many judgements failed recently (more than ``max_failure_fraction``)."""


@dataclass
class JudgeStats:
    """Counters of a judge.

    calls : judgements asked for (one per candidate passed to ``score``).
    cache_hits : answered from the cache.
    judged : computed by the model or server (calls - cache_hits).
    failures : judgements that ended without a score (``None``).
    timeouts : HTTP attempts that timed out (each retry counts).
    retries : HTTP attempts repeated after a failure.
    seconds : wall time spent computing judgements.
    """

    calls: int = 0
    cache_hits: int = 0
    judged: int = 0
    failures: int = 0
    timeouts: int = 0
    retries: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["seconds"] = round(d["seconds"], 3)
        return d


@dataclass
class Job:
    """One prompt to judge: the shared part (``prefix``), the per-candidate part (``suffix``) and its cache key."""

    prefix: str
    suffix: str
    key: str
    payload: dict = field(default_factory=dict)


class Judge:
    """Shared machinery of the backends: prompt building, the content cache, statistics and the failure check.

    Parameters
    ----------
    prompt : a name from :data:`PROMPTS` or a :class:`JudgePrompt`.
    cache_path : a JSON file of ``{key: score}`` read at start and rewritten (atomically) when new scores come in.
        One writer per file: give each process its own file.
    max_failure_fraction : raise :class:`JudgeFailureError` when more than this fraction of the last
        ``failure_window`` computed judgements failed (checked once at least ``min_judgements`` are in the window).
        ``None`` never raises.
    max_candidate_chars : candidates are cut to this length (bounds the judge's cost of a runaway completion).
    """

    model_id: str = "judge"

    def __init__(self, *, prompt: str | JudgePrompt = DEFAULT_PROMPT, cache_path: str | os.PathLike | None = None,
                 max_failure_fraction: float | None = 0.25, failure_window: int = 32, min_judgements: int = 8,
                 max_candidate_chars: int = 2000):
        if max_failure_fraction is not None and not 0.0 <= max_failure_fraction <= 1.0:
            raise ValueError(f"max_failure_fraction must lie in [0, 1] (or be None), got {max_failure_fraction}")
        self.prompt = get_prompt(prompt)
        self.scale = self.prompt.scale_obj
        self.stats = JudgeStats()
        self.max_failure_fraction = max_failure_fraction
        self.min_judgements = min_judgements
        self.max_candidate_chars = max_candidate_chars
        self._recent: collections.deque[bool] = collections.deque(maxlen=failure_window)  # True = failed
        self._cache: dict[str, float] = {}
        self._lock = threading.Lock()
        self.cache_path = Path(cache_path) if cache_path else None
        if self.cache_path and self.cache_path.exists():
            try:
                loaded = json.loads(self.cache_path.read_text())
            except json.JSONDecodeError as exc:
                raise JudgeError(f"judge cache {self.cache_path} is not valid JSON ({exc}); delete it") from exc
            self._cache.update({k: float(v) for k, v in loaded.items()})

    # --- to implement by a backend ------------------------------------------------------------------------------

    def _jobs(self, references: list[str], candidates: list[str]) -> list[Job]:
        raise NotImplementedError

    def _run(self, jobs: list[Job]) -> list[float | None]:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{type(self).__name__}({self.model_id}, prompt={self.prompt.name!r})"

    def warm_up(self) -> None:
        """Make the judge ready before training needs it (a no-op for judges that hold no model in this process)."""

    def _special_tokens(self) -> Sequence[str]:
        return ()

    # --- the public interface -----------------------------------------------------------------------------------

    def key(self, text: str) -> str:
        """The cache key of a prompt: ``sha256(model id + prompt)``."""
        return hashlib.sha256(f"{self.model_id}\x1f{text}".encode()).hexdigest()

    def score(self, candidates: Sequence[str], references: Sequence[str | Sequence[str]]) -> list[float | None]:
        """Score ``candidates[i]`` against ``references[i]`` (a list of steps or a text).

        Returns
        -------
        list of float in [0, 1], or None where the judgement failed (counted in ``stats.failures``); 0.0 for a
        candidate that is empty after sanitising (no model call).

        Raises
        ------
        JudgeFailureError
            More than ``max_failure_fraction`` of the recent judgements failed.
        """
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
        refs = [format_reference(r) for r in references]
        cands = [sanitize_candidate(c, self._special_tokens(), self.max_candidate_chars) for c in candidates]
        jobs = self._jobs(refs, cands)
        out: list[float | None] = [None] * len(jobs)
        todo: dict[str, list[int]] = {}  # key -> positions (duplicates in one call are computed once)
        for i, job in enumerate(jobs):
            if not cands[i]:  # nothing to judge (empty after sanitising): no reasoning, no credit
                out[i] = 0.0
            elif job.key in self._cache:
                out[i] = self._cache[job.key]
                self.stats.cache_hits += 1
            else:
                todo.setdefault(job.key, []).append(i)
        self.stats.calls += len(jobs) - sum(not c for c in cands)
        self.stats.cache_hits += sum(len(v) - 1 for v in todo.values())  # repeats within this call
        if todo:
            unique = [jobs[v[0]] for v in todo.values()]
            t0 = time.perf_counter()
            results = self._run(unique)
            self.stats.seconds += time.perf_counter() - t0
            self.stats.judged += len(unique)
            new = False
            for job, value, positions in zip(unique, results, todo.values()):
                failed = value is None or not math.isfinite(value)
                self._recent.append(failed)
                if failed:
                    self.stats.failures += 1
                    continue
                value = min(1.0, max(0.0, float(value)))
                self._cache[job.key] = value
                new = True
                for p in positions:
                    out[p] = value
            if new:
                self._save_cache()
            self._check_failures()
        return out

    def score_one(self, candidate: str, reference: str | Sequence[str]) -> float | None:
        return self.score([candidate], [reference])[0]

    @property
    def cache_hit_rate(self) -> float:
        return self.stats.cache_hits / self.stats.calls if self.stats.calls else 0.0

    def _check_failures(self) -> None:
        if self.max_failure_fraction is None or len(self._recent) < min(self.min_judgements, self._recent.maxlen):
            return
        failed = sum(self._recent)
        fraction = failed / len(self._recent)
        if fraction > self.max_failure_fraction:
            raise JudgeFailureError(
                f"{failed} of the last {len(self._recent)} judgements by {self.describe()} failed ({fraction:.0%}), "
                f"more than max_failure_fraction={self.max_failure_fraction:g}; stats: {self.stats.as_dict()}")

    def _save_cache(self) -> None:
        if not self.cache_path:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_name(f"{self.cache_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._cache))
        tmp.replace(self.cache_path)

    def clear_cache(self) -> None:
        self._cache.clear()


def sum_stats(judges: Sequence[Judge]) -> dict[str, float]:
    """Counters summed over ``judges`` (each counted once, however often it is listed); empty if there are none."""
    unique = list({id(j): j for j in judges}.values())
    stats = [j.stats.as_dict() for j in unique]
    return {k: sum(s[k] for s in stats) for k in stats[0]} if stats else {}
