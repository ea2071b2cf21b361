"""A judge served by an OpenAI-compatible server (vLLM, SGLang, ``transformers serve``, llama.cpp server).

HTTP is ``httpx`` (async, so a request can be cancelled at its deadline) and retries are ``tenacity``'s. A judgement
is read from ``/v1/chat/completions`` or ``/v1/completions`` with ``logprobs`` / ``top_logprobs`` (score tokens), from
echoed prompt logprobs (the likelihood prompt), or, when a server gives no logprobs, from a strict JSON reply
``{"score": N}``. Whatever the server sends, ``score()`` returns a number in [0, 1] or ``None`` (a counted failure),
never raises for one bad answer:

* every request attempt has an **overall deadline** (``timeout`` seconds from sending to the last byte), however the
  server trickles its answer;
* logprobs must be finite and at most 0; positive ones (impossible), NaN, infinities and sets that lie far below zero
  (the most likely token of any vocabulary under 10^13 entries has log p > -30; so does, on a sane server, at least
  one token of an echoed candidate) are failures.

Examples
--------
>>> judge = OpenAIJudge("http://localhost:8000/v1", "Qwen/Qwen3-8B", prompt="criteria-0-9")  # doctest: +SKIP
>>> judge.score(["The first sound is high, so the first."], [["Sound 1: a high tone.", "So the first."]]
...             )  # doctest: +SKIP
[0.78]
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
from collections.abc import Coroutine

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from rl.judge.base import Job, Judge, JudgeUnavailableError
from rl.judge.prompts import DEFAULT_SERVER_PROMPT, JudgePrompt

__all__ = ["MIN_TOP_LOGPROB", "OpenAIJudge"]

#: The most likely token has p >= 1 / vocabulary size, so its log-prob is above -ln(10^13) ~ -29.9 for any real
#: vocabulary: a set of alternatives whose best lies below this is impossible (a broken server), not a judgement.
MIN_TOP_LOGPROB = -30.0
#: Rounding slack above 0 for a log-prob (a server computing in float16 can report +1e-4 for a certain token).
_LOGPROB_SLACK = 1e-3


class _Transient(Exception):
    """An attempt failed in a way worth retrying (connection error, timeout, 5xx / 429, garbage)."""


class _Permanent(Exception):
    """An attempt failed in a way a retry cannot fix (4xx other than 429)."""


def _logprob(value) -> float:
    """A log-prob as float; _Transient if it is not a number, not finite or positive (impossible)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Transient(f"a logprob is not a number: {value!r}")
    v = float(value)
    if not math.isfinite(v) or v > _LOGPROB_SLACK:
        raise _Transient(f"impossible logprob {v!r} (a log-probability is finite and <= 0)")
    return min(v, 0.0)


class OpenAIJudge(Judge):
    """A judge served by an OpenAI-compatible server.

    Parameters
    ----------
    base_url : the server, e.g. ``http://localhost:8000`` or ``http://localhost:8000/v1``.
    model : the served model's name (default: the first one ``/v1/models`` lists).
    timeout : seconds per request attempt, an overall deadline from sending the request to the answer's last byte.
    retries : attempts repeated after a transient failure (connection error, timeout, HTTP 5xx or 429, a body that
        is not the expected JSON, impossible logprobs); waits ``backoff * 2**k`` seconds before repeat k.
    endpoint : ``"chat"`` (``/v1/chat/completions``: the server applies the model's chat template; no prefill, the
        first generated token is the score) or ``"completions"`` (``/v1/completions`` with the prompt text rendered
        here, cue included: give ``tokenizer`` to use the model's chat template, else a plain layout).
    mode : ``"auto"`` (logprobs; if the server returns none, switch to JSON for good), ``"logprobs"`` or ``"json"``
        (ask for ``{"score": N}``; the reply must be exactly that JSON with N on the scale).
    top_logprobs : alternatives requested per token (OpenAI allows at most 20; vLLM's default limit is 20 too).
    max_workers : concurrent requests.
    health_check : query ``/v1/models`` now; an unreachable server or a model it does not serve raises
        :class:`JudgeUnavailableError`.
    api_key : sent as ``Authorization: Bearer`` if given.
    prompt : default ``DEFAULT_SERVER_PROMPT`` (score tokens); the likelihood prompt needs ``endpoint="completions"``
        and a server that echoes prompt logprobs. cache_path, max_failure_fraction, ... : see
        :class:`rl.judge.base.Judge`.
    """

    last_error: str = ""  #: why the latest failed judgement failed

    def __init__(self, base_url: str, model: str | None = None, *, timeout: float = 30.0, retries: int = 2,
                 backoff: float = 0.5, endpoint: str = "chat", mode: str = "auto", top_logprobs: int = 20,
                 max_workers: int = 8, health_check: bool = True, api_key: str | None = None, tokenizer=None,
                 prompt: str | JudgePrompt = DEFAULT_SERVER_PROMPT, **kwargs):
        super().__init__(prompt=prompt, **kwargs)
        if endpoint not in ("chat", "completions"):
            raise ValueError(f"endpoint must be 'chat' or 'completions', got {endpoint!r}")
        if mode not in ("auto", "logprobs", "json"):
            raise ValueError(f"mode must be 'auto', 'logprobs' or 'json', got {mode!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        url = base_url.rstrip("/")
        self.base_url = url if url.endswith("/v1") else url + "/v1"
        self.model, self.timeout, self.retries, self.backoff = model, float(timeout), int(retries), float(backoff)
        self.endpoint, self.mode, self.top_logprobs = endpoint, mode, int(top_logprobs)
        self.max_workers, self.api_key, self.tokenizer = max(1, int(max_workers)), api_key, tokenizer
        self.json_mode = mode == "json"
        if self.prompt.method == "likelihood" and endpoint != "completions":
            raise ValueError(f"judge prompt {self.prompt.name!r} scores the candidate's likelihood: it needs "
                             "endpoint='completions' (a server that echoes prompt logprobs, e.g. vLLM)")
        if health_check:
            self.check_health()
        self.model_id = f"{self.base_url}|{self.model}"

    def describe(self) -> str:
        return f"OpenAIJudge({self.base_url}, model={self.model!r}, prompt={self.prompt.name!r})"

    # --- HTTP ---------------------------------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=self.timeout,
                                 limits=httpx.Limits(max_connections=self.max_workers))

    async def _request(self, client: httpx.AsyncClient, path: str, body: dict | None = None) -> dict:
        """One attempt, over within ``timeout`` seconds whatever the server does; the JSON body, or _Transient /
        _Permanent."""
        try:
            async with asyncio.timeout(self.timeout):
                resp = await (client.get(path) if body is None else client.post(path, json=body))
        except (TimeoutError, httpx.TimeoutException) as exc:
            with self._lock:
                self.stats.timeouts += 1
            raise _Transient(f"timed out: no complete answer within {self.timeout:g} s") from exc
        except httpx.ConnectError as exc:
            raise _Transient(f"cannot connect: {exc}") from exc
        except httpx.TransportError as exc:  # reset mid-response, broken pipe, protocol garbage
            raise _Transient(f"connection error: {exc!r}") from exc
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Transient(f"HTTP {resp.status_code}: {resp.text[:300]}")
        if resp.status_code >= 400:
            raise _Permanent(f"HTTP {resp.status_code}: {resp.text[:300]}")
        try:
            return resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _Transient(f"the response is not JSON: {resp.content[:120]!r}") from exc

    def check_health(self) -> None:
        """Ask ``/v1/models``; sets ``model`` to the first served one if none was given.

        Raises
        ------
        JudgeUnavailableError
            The server cannot be reached or answers with an error, or it does not serve ``model``.
        """
        async def listing() -> dict:
            async with self._client() as client:
                return await self._request(client, "/models")

        try:
            answer = _run_sync(listing())
        except (_Transient, _Permanent) as exc:
            raise JudgeUnavailableError(
                f"LLM judge server {self.base_url} is not usable: GET /v1/models failed ({exc}). Start an "
                "OpenAI-compatible server there (vLLM, SGLang, `transformers serve`) or use the in-process judge "
                "([judge] backend = 'local').") from exc
        served = [m.get("id") for m in answer.get("data", []) if isinstance(m, dict)] \
            if isinstance(answer, dict) else []
        if self.model is None:
            if not served:
                raise JudgeUnavailableError(f"LLM judge server {self.base_url} lists no models at /v1/models")
            self.model = served[0]
        elif served and self.model not in served:
            raise JudgeUnavailableError(f"LLM judge server {self.base_url} does not serve model {self.model!r}; it "
                                        f"serves {served}")

    # --- prompts ------------------------------------------------------------------------------------------------

    def _completion_text(self, messages: list[dict], cue: str) -> str:
        tok = self.tokenizer
        if tok is not None and getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = f"{messages[0]['content']}\n\n{messages[1]['content']}\n\n"
        return text + cue

    def _body(self, reference: str, candidate: str, json_mode: bool) -> dict:
        messages = self.prompt.messages(reference, candidate, json_mode=json_mode)
        if self.prompt.method == "likelihood":  # echo the prompt with its logprobs; the candidate is the reply
            prefix = self._completion_text(messages, self.prompt.cue)
            return {"model": self.model, "prompt": prefix + candidate, "max_tokens": 1, "temperature": 0.0,
                    "echo": True, "logprobs": 1, "_prefix_chars": len(prefix)}
        body: dict = {"model": self.model, "temperature": 0.0, "max_tokens": 16 if json_mode else 1}
        if self.endpoint == "chat":
            body["messages"] = messages
            if not json_mode:
                body.update(logprobs=True, top_logprobs=self.top_logprobs)
        else:
            body["prompt"] = self._completion_text(messages, "" if json_mode else self.prompt.cue)
            if not json_mode:
                body["logprobs"] = self.top_logprobs
        return body

    def _jobs(self, references: list[str], candidates: list[str]) -> list[Job]:
        jobs = []
        for ref, cand in zip(references, candidates):
            body = self._body(ref, cand, self.json_mode)
            text = json.dumps({k: body.get(k) for k in ("messages", "prompt")}, sort_keys=True)
            jobs.append(Job(ref, cand, self.key(f"{self.endpoint}|{'json' if self.json_mode else 'lp'}|{text}"),
                            {"reference": ref, "candidate": cand}))
        return jobs

    # --- parsing ------------------------------------------------------------------------------------------------

    def _from_logprobs(self, response: dict) -> float | None:
        """Score from the first generated token's alternatives; None if the server sent no logprobs.

        Raises _Transient if the body is malformed, a logprob is impossible or no scale token is among the
        alternatives.
        """
        try:
            choice = response["choices"][0]
            lp = choice.get("logprobs")
            if not lp:
                return None
            if "content" in lp:  # chat: content[0].top_logprobs = [{"token", "logprob"}, ...]
                first = lp["content"][0]
                pairs = [(d["token"], d["logprob"]) for d in first.get("top_logprobs") or []]
                pairs.append((first["token"], first["logprob"]))
            else:  # completions: top_logprobs[0] = {token: logprob}
                pairs = list((lp.get("top_logprobs") or [{}])[0].items())
                if lp.get("tokens"):
                    pairs.append((lp["tokens"][0], lp["token_logprobs"][0]))
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise _Transient(f"malformed logprobs in the response: {str(response)[:160]}") from exc
        pairs = [(str(token), _logprob(value)) for token, value in pairs]
        if not pairs or max(v for _, v in pairs) < MIN_TOP_LOGPROB:
            raise _Transient(f"impossible logprobs: the best of {len(pairs)} alternatives lies below "
                             f"{MIN_TOP_LOGPROB:g}")
        scored: dict[str, tuple[float, float]] = {}  # token -> (value, logprob); a token listed twice counts once
        for token, logprob in pairs:
            value = self.scale.value_of(token)
            if value is not None:
                scored.setdefault(token, (value, logprob))
        if not scored:
            raise _Transient(f"no score token {list(self.scale.tokens)} among the top {len(pairs)} alternatives")
        top = max(lp for _, lp in scored.values())  # renormalise in log space: nothing under- or overflows
        weights = [(value, math.exp(lp - top)) for value, lp in scored.values()]
        return sum(v * w for v, w in weights) / sum(w for _, w in weights)

    @staticmethod
    def _from_echo(response: dict, start: int, end: int) -> float:
        """exp(mean logprob) of the echoed prompt tokens whose text offset lies in [start, end) (the candidate)."""
        try:
            lp = response["choices"][0]["logprobs"]
            picked = [v for v, off in zip(lp["token_logprobs"], lp["text_offset"])
                      if isinstance(off, int) and start <= off < end and v is not None]
        except (KeyError, IndexError, TypeError) as exc:
            raise _Transient(f"no echoed prompt logprobs in the response: {str(response)[:160]}") from exc
        if not picked:
            raise _Transient("the server echoed no logprobs for the candidate's tokens (echo unsupported?)")
        values = [_logprob(v) for v in picked]
        if max(values) < MIN_TOP_LOGPROB:
            raise _Transient(f"impossible logprobs: every one of the candidate's {len(values)} tokens lies below "
                             f"{MIN_TOP_LOGPROB:g}")
        return math.exp(math.fsum(values) / len(values))

    def _from_json(self, response: dict) -> float:
        """Score from a strict JSON reply ``{"score": N}``; raises _Transient otherwise."""
        try:
            choice = response["choices"][0]
            text = choice["message"]["content"] if "message" in choice else choice["text"]
        except (KeyError, IndexError, TypeError) as exc:
            raise _Transient(f"malformed response (no text): {str(response)[:160]}") from exc
        try:
            reply = json.loads((text or "").strip())
        except (json.JSONDecodeError, TypeError) as exc:
            raise _Transient(f"the judge's reply is not strict JSON: {str(text)[:80]!r}") from exc
        if not isinstance(reply, dict) or set(reply) != {"score"}:
            raise _Transient(f'the judge\'s reply is not {{"score": N}}: {str(text)[:80]!r}')
        raw = reply["score"]
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise _Transient(f"score {raw!r} is not on the scale {list(self.scale.tokens)}")
        token = str(int(raw)) if isinstance(raw, float) and raw.is_integer() else str(raw)
        value = self.scale.value_of(token)
        if value is None:
            raise _Transient(f"score {raw!r} is not on the scale {list(self.scale.tokens)}")
        return value

    # --- running ------------------------------------------------------------------------------------------------

    async def _attempt(self, client: httpx.AsyncClient, job: Job) -> float:
        """One request and its reading; _Transient / _Permanent when no score comes out of it."""
        path = "/chat/completions" if self.endpoint == "chat" else "/completions"
        reference, candidate = job.payload["reference"], job.payload["candidate"]
        json_mode = self.json_mode
        body = self._body(reference, candidate, json_mode)
        start = body.pop("_prefix_chars", None)
        response = await self._request(client, path, body)
        if not isinstance(response, dict):
            raise _Transient(f"the response is not a JSON object: {str(response)[:120]}")
        if start is not None:
            return self._from_echo(response, start, len(body["prompt"]))
        if json_mode:
            return self._from_json(response)
        value = self._from_logprobs(response)
        if value is not None:
            return value
        if self.mode == "logprobs":
            raise _Transient("the server returned no logprobs (mode='logprobs')")
        self.json_mode = True  # the server does not do logprobs: strict JSON from now on
        return self._from_json(await self._request(client, path, self._body(reference, candidate, True)))

    def _count_retry(self, _state) -> None:
        with self._lock:
            self.stats.retries += 1

    async def _judge_one(self, client: httpx.AsyncClient, gate: asyncio.Semaphore, job: Job) -> float | None:
        retrying = AsyncRetrying(stop=stop_after_attempt(self.retries + 1), wait=wait_exponential(self.backoff),
                                 retry=retry_if_exception_type(_Transient), before_sleep=self._count_retry,
                                 reraise=True)
        async with gate:
            try:
                async for attempt in retrying:
                    with attempt:
                        return await self._attempt(client, job)
            except (_Transient, _Permanent) as exc:
                self.last_error = str(exc)
        return None

    async def _run_async(self, jobs: list[Job]) -> list[float | None]:
        gate = asyncio.Semaphore(self.max_workers)
        async with self._client() as client:
            return list(await asyncio.gather(*(self._judge_one(client, gate, j) for j in jobs)))

    def _run(self, jobs: list[Job]) -> list[float | None]:
        return _run_sync(self._run_async(jobs))


def _run_sync(coro: Coroutine):
    """Run ``coro`` to completion from synchronous code, also when the caller's thread already runs an event loop
    (a Jupyter cell): then in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
