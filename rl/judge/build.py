"""A judge from settings: the one place that maps a backend name to its class."""

from __future__ import annotations

from rl.judge.base import Judge
from rl.judge.local import LocalJudge
from rl.judge.server import OpenAIJudge

__all__ = ["BACKENDS", "make_judge"]

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
