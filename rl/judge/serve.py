"""A small but real OpenAI-compatible HTTP server for any ``transformers`` causal LM: it returns real
log-probabilities, so :class:`rl.judge.server.OpenAIJudge` can be tried end to end on one machine (the tests, the
reasoning-validity benchmark's ``--server``). ``transformers serve`` needs FastAPI and uvicorn, which the project does
not install; this one is ``http.server`` in a thread on a free localhost port. Not for production serving.

Endpoints: ``GET /v1/models``, ``GET /health``, ``POST /v1/chat/completions`` (the tokenizer's chat template;
``logprobs`` / ``top_logprobs``) and ``POST /v1/completions`` (raw prompt; ``logprobs`` = number of alternatives).
Greedy decoding of up to ``max_tokens`` tokens. Knobs that make it misbehave the way real servers do: ``delay``
(seconds before answering), ``logprobs_supported`` (False: ``"logprobs": null``), ``garbage`` (a 200 response that
is not JSON), ``fail_every`` (every k-th completion request answers HTTP 500), ``trickle`` (seconds between the bytes
of an answer: a server that keeps a connection alive without ever finishing), ``logprob`` (every reported log-prob
replaced by this value: impossible ones such as +0.5, 800, -1e4 or NaN) and ``reply`` (the reply text replaced).
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


class ModelServer:
    def __init__(self, model, tokenizer, name: str = "tiny-judge"):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.reset()
        self.requests = 0  # completion requests received
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    def reset(self) -> None:
        """Every misbehaviour off."""
        self.delay, self.logprobs_supported, self.garbage, self.fail_every = 0.0, True, False, 0
        self.trickle: float = 0.0
        self.logprob: float | None = None
        self.reply: str | None = None
        self.alternatives: list[tuple[str, float]] | None = None  # the top alternatives at every position, if set

    # --- the model ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def complete(self, text: str, max_tokens: int, top_k: int) -> tuple[str, list[tuple[str, float, list]]]:
        """Greedy continuation of ``text``; per generated token (token, logprob, [(alt, logprob) x top_k])."""
        ids = torch.tensor([self.tokenizer.encode(text, add_special_tokens=False)])
        steps, out = [], []
        with self._lock:
            for _ in range(max(1, max_tokens)):
                logp = self.model(input_ids=ids).logits[0, -1].float().log_softmax(-1)
                nxt = int(logp.argmax())
                top = torch.topk(logp, min(top_k, logp.numel()))
                steps.append((self.tokenizer.decode([nxt]), float(logp[nxt]),
                              [(self.tokenizer.decode([int(i)]), float(v)) for v, i in zip(top.values, top.indices)]))
                if nxt == self.tokenizer.eos_token_id:
                    steps.pop()
                    break
                out.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        return self.tokenizer.decode(out), steps

    @torch.no_grad()
    def prompt_logprobs(self, text: str) -> tuple[list[str], list[float | None], list[int]]:
        """Teacher-forced log-probability of every prompt token (None for the first) and its character offset."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor([enc["input_ids"]])
        with self._lock:
            logp = self.model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        values = [None] + logp.gather(-1, ids[0, 1:, None]).squeeze(-1).tolist()
        return ([self.tokenizer.decode([i]) for i in enc["input_ids"]], values,
                [a for a, _ in enc["offset_mapping"]])

    # --- answering a completion request -------------------------------------------------------------------------

    def _answer(self, path: str, body: dict) -> tuple[int, dict | bytes]:
        """Status and body for a POST of ``body`` to ``path``, every misbehaviour knob applied."""
        k = self._count_request()
        if self.delay:
            time.sleep(self.delay)
        refusal = self._refusal(k, body)
        if refusal is not None:
            return refusal
        request = self._parse_request(path, body)
        if request is None:
            return 404, {"error": {"message": f"no route {path}"}}
        chat, text, want, top_k = request
        reply, steps = self._generate(text, int(body.get("max_tokens") or 16), top_k)
        lp = None
        if want and self.logprobs_supported:
            if chat:
                lp = _chat_logprobs(steps, top_k)
            else:
                lp = _completions_logprobs(text, steps, top_k)
                if body.get("echo"):  # the prompt's tokens first, as OpenAI's legacy API and vLLM do
                    lp, reply = self._with_prompt_logprobs(text, lp), text + reply
        return 200, _completion_body(k, self.name, chat, reply, lp)

    def _count_request(self) -> int:
        """Count one more completion request; its number, from 1."""
        with self._lock:
            self.requests += 1
            return self.requests

    def _refusal(self, k: int, body: dict) -> tuple[int, dict | bytes] | None:
        """The answer for request ``k`` if it fails before any generation (injected error, garbage, unknown model)."""
        if self.fail_every and k % self.fail_every == 0:
            return 500, {"error": {"message": "internal error (injected)"}}
        if self.garbage:
            return 200, b"<html>502 Bad Gateway</html>"
        if body.get("model") not in (None, self.name):
            return 404, {"error": {"message": f"model {body.get('model')!r} not found"}}
        return None

    def _parse_request(self, path: str, body: dict) -> tuple[bool, str, bool, int] | None:
        """``(chat, prompt text, logprobs wanted, top_k)`` for a completions route, None for any other path."""
        if path.endswith("/chat/completions"):
            text = self.tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
            return True, text, bool(body.get("logprobs")), int(body.get("top_logprobs") or 0)
        if path.endswith("/completions"):
            return False, body["prompt"], body.get("logprobs") is not None, int(body.get("logprobs") or 0)
        return None

    def _generate(self, text: str, max_tokens: int, top_k: int) -> tuple[str, list[tuple[str, float, list]]]:
        """:meth:`complete`, then the ``logprob``, ``alternatives`` and ``reply`` knobs."""
        reply, steps = self.complete(text, max_tokens, max(top_k, 1))
        if self.logprob is not None:
            steps = [(t, self.logprob, [(a, self.logprob) for a, _ in alts]) for t, _, alts in steps]
        if self.alternatives is not None:
            steps = [(t, v, list(self.alternatives)) for t, v, _ in steps]
        if self.reply is not None:
            reply = self.reply
        return reply, steps

    def _with_prompt_logprobs(self, text: str, lp: dict) -> dict:
        """The legacy ``logprobs`` object ``lp`` with the prompt's own tokens in front (``echo``)."""
        toks, vals, offs = self.prompt_logprobs(text)
        if self.logprob is not None:
            vals = [None] + [self.logprob] * (len(vals) - 1)
        return {"tokens": toks + lp["tokens"], "token_logprobs": vals + lp["token_logprobs"],
                "top_logprobs": [None] * len(toks) + lp["top_logprobs"], "text_offset": offs + lp["text_offset"]}

    # --- HTTP ---------------------------------------------------------------------------------------------------

    def start(self) -> str:
        """Serve in a daemon thread on a free localhost port.

        Returns
        -------
        str
            The base URL, ``http://127.0.0.1:<port>/v1``.
        """
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, model_server=self))
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


def _chat_logprobs(steps: list[tuple[str, float, list]], top_k: int) -> dict:
    """The chat API's ``logprobs`` object: per token its log-prob and ``top_k`` alternatives."""
    return {"content": [{"token": t, "logprob": v,
                         "top_logprobs": [{"token": a, "logprob": b} for a, b in alts[:top_k]]}
                        for t, v, alts in steps]}


def _completions_logprobs(text: str, steps: list[tuple[str, float, list]], top_k: int) -> dict:
    """The legacy completions API's ``logprobs`` object (parallel lists) for a continuation of ``text``."""
    return {"tokens": [t for t, _, _ in steps], "token_logprobs": [v for _, v, _ in steps],
            "top_logprobs": [dict(alts[:top_k]) for _, _, alts in steps],
            "text_offset": [len(text)] * len(steps)}


def _completion_body(k: int, model: str, chat: bool, reply: str, lp: dict | None) -> dict:
    """The JSON answer to completion request ``k``, in the chat or the legacy completions shape."""
    choice = {"index": 0, "finish_reason": "length", "logprobs": lp}
    choice.update({"message": {"role": "assistant", "content": reply}} if chat else {"text": reply})
    return {"id": f"cmpl-{k}", "object": "chat.completion" if chat else "text_completion", "model": model,
            "choices": [choice]}


class _Handler(BaseHTTPRequestHandler):
    """The HTTP side of a :class:`ModelServer`: routes, and writes answers (byte by byte under ``trickle``)."""

    def __init__(self, *args, model_server: ModelServer, **kwargs):
        self.model_server = model_server  # before the base class, which handles the request inside __init__
        super().__init__(*args, **kwargs)

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body) -> None:
        """Write ``body`` (JSON-encoded unless bytes) with status ``code``."""
        server = self.model_server
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            if not server.trickle:
                self.wfile.write(raw)
            for i in range(len(raw) if server.trickle else 0):  # one byte at a time, never idle long
                self.wfile.write(raw[i:i + 1])
                self.wfile.flush()
                time.sleep(server.trickle)

    def do_GET(self):
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": self.model_server.name, "object": "model"}]})
        elif self.path == "/health":
            self._send(200, {"status": "ok"})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self._send(*self.model_server._answer(self.path, body))
