"""A judge from settings: the one place that maps a backend name to its class, and a judge shared by a run."""

from __future__ import annotations

import threading

from rl.judge.base import Judge
from rl.judge.local import LocalJudge
from rl.judge.server import OpenAIJudge

__all__ = ["BACKENDS", "SharedJudge", "make_judge"]

#: backend name -> judge class
BACKENDS: dict[str, type[Judge]] = {"local": LocalJudge, "openai": OpenAIJudge}


def make_judge(backend: str = "local", **kwargs) -> Judge:
    """A judge from config-style keyword arguments.

    ``backend = "local"``: :class:`~rl.judge.local.LocalJudge` (``model`` default ``"smollm2"``); ``"openai"``:
    :class:`~rl.judge.server.OpenAIJudge` (``base_url`` required). Other keywords go to the class.

    Raises
    ------
    ValueError
        An unknown backend, or ``"openai"`` without ``base_url``.
    TypeError
        A keyword the backend's class does not take.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown judge backend {backend!r}; use one of {sorted(BACKENDS)}")
    if backend == "openai" and not kwargs.get("base_url"):
        raise ValueError("judge backend 'openai' needs base_url (e.g. 'http://localhost:8000/v1')")
    return BACKENDS[backend](**kwargs)


class SharedJudge:
    """A judge built with :func:`make_judge` on first use, then shared by every reward it is given to (one model
    loaded per run, however many rewards and stages ask it).

    Examples
    --------
    >>> shared = SharedJudge("local", model="smollm2", batch_size=16)
    >>> shared.built is None  # nothing is loaded until a reward needs it
    True
    """

    def __init__(self, backend: str = "local", **settings):
        self.backend, self.settings = backend, settings
        self._judge: Judge | None = None
        self._lock = threading.Lock()

    def get(self) -> Judge:
        """The judge, built now if it was not yet (JudgeUnavailableError if it cannot be)."""
        with self._lock:
            if self._judge is None:
                self._judge = make_judge(self.backend, **self.settings)
            return self._judge

    @property
    def built(self) -> Judge | None:
        """The judge if it has been built, else None (reading metrics never loads a model)."""
        return self._judge
