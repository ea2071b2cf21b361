"""Evaluate an audio model on items: direct-answer accuracy, and what it writes when asked to think first.

Run ``python -m rl.evaluate --help``. Direct-answer accuracy is measured with greedy decoding of the ``answer``
prompt; the think-rate (fraction of completions with a non-empty ``<think>`` block) and the similarity of the think
text to the reference chain are measured on the ``think`` prompt, greedy and sampled at temperature 1.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adt_probe.outputs import check_writable
from adt_probe.stats import hierarchical_interval, wilson
from rl import cli_options
from rl.data import collate, prompts
from rl.data.items import SAMPLE_RATE, Item
from rl.train.rollout import Sampling, completion_logits, prompt_batch, sample, suppressed_token_ids

log = logging.getLogger(__name__)


class PreflightError(ValueError):
    """The inputs cannot give a meaningful result (no items, items longer than the model's context); raised before
    any expensive work, naming the items and the fix."""


def context_length(model) -> int | None:
    """The model's context in tokens (``max_position_embeddings`` of its text config), None if it names none."""
    config = model.config
    text = getattr(config, "text_config", None) or getattr(config, "get_text_config", lambda: config)()
    return getattr(text, "max_position_embeddings", None) or getattr(config, "max_position_embeddings", None)


def check_items(items: Sequence[Item], source: str) -> None:
    """Refuse an empty item list (an empty JSONL file), naming ``source``."""
    if not len(items):
        raise PreflightError(f"{source}: no items to evaluate (an empty dataset); check the file, or leave out --data "
                             "to use the synthetic held-out set")


def check_fits(model, processor, items: Sequence[Item], *, max_new_tokens: int, mode: prompts.Mode = "think",
               batch_size: int = 16) -> None:
    """Refuse items whose prompt (audio tokens included) plus ``max_new_tokens`` exceeds the model's context.

    A clip's audio becomes prompt tokens, so a long clip can overflow a small context (the organism reads 512
    tokens; a 10-minute clip is about 7,900). Generation past the context would index positions the model never
    learned and score garbage without a word; this names the items first.

    Raises
    ------
    PreflightError : no items, or which items (id, prompt tokens, audio seconds) do not fit, and what to do.
    """
    check_items(items, "items")
    limit = context_length(model)
    if limit is None:
        return
    over = []
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        lengths = collate.encode_prompts(processor, batch, mode)["attention_mask"].sum(1).tolist()
        over += [(it, n) for it, n in zip(batch, lengths) if n + max_new_tokens > limit]
    if over:
        shown = "; ".join(f"{it.id}: {n} prompt tokens" + (f" ({len(it.audio) / SAMPLE_RATE:.0f} s of audio)"
                                                            if it.audio is not None else "") for it, n in over[:5])
        raise PreflightError(f"{len(over)} of {len(items)} items do not fit the model's context of {limit} tokens "
                             f"with {max_new_tokens} new tokens ({shown}{' ...' if len(over) > 5 else ''}). Cut the "
                             "audio shorter, lower --max-new-tokens, or leave these items out.")


def generate(model, processor, items: Sequence[Item], mode: prompts.Mode, *, max_new_tokens: int = 48,
             temperature: float = 0.0, batch_size: int = 32, seed: int = 0, written_facts: bool = False,
             notes: prompts.Notes | None = None) -> list[str]:
    """Completions (decoded text, special tokens kept, cut before the first EOS) for ``items`` prompted in ``mode``.

    The same sampling rules as GRPO (``rl.train.rollout.sample``). ``temperature == 0`` decodes greedily; otherwise
    samples with ``torch.manual_seed(seed + start)`` set per batch, so the result does not depend on what ran before.
    ``written_facts`` puts each clip's facts in the prompt as text instead of the audio (how well the model answers
    once the facts are written out). ``notes`` (think mode) pre-fills the think block (``prompts.notes_prefill``):
    ``"given"`` with the clip's facts (how well it answers from correct notes), ``"own"`` only their first word (the
    block forced open: how well it answers from the notes it writes itself); the text starts after the pre-fill.
    """
    model.eval()
    sampling = Sampling(1, temperature, max_new_tokens)
    device = next(model.parameters()).device
    out: list[str] = []
    for start in range(0, len(items), batch_size):
        torch.manual_seed(seed + start)
        out += sample(model, processor, items[start:start + batch_size], sampling, mode=mode, device=device,
                      written_facts=written_facts, notes=notes).texts
    return out


#: What a completion that does not think starts with: its empty think block, up to and including ``</think>``.
CLOSED_THINK = prompts.EMPTY_THINK[:prompts.EMPTY_THINK.index("</think>") + len("</think>")]


@torch.no_grad()
def think_propensity(model, processor, items: Sequence[Item], *, batch_size: int = 32) -> dict[str, np.ndarray]:
    """How near the think-first prompt is to opening its think block, per item, from one teacher-forced pass over
    the empty block (no generation, no sampling).

    Greedy think-rate is a count of near ties (one item flips it); this gives the distance to them, and the sampled
    think-rate without sampling noise.

    Returns
    -------
    ``p_open`` : (n,) float, the probability that a completion sampled at T = 1 leaves the empty block
        ``CLOSED_THINK`` (``<think>\n\n</think>``) at some token; its mean is the expected sampled think-rate.
    ``close_margin`` : (n,) float, nats: over the empty block's tokens, the least of (that token's logit minus the
        largest other's; placeholder tokens excluded, as generation excludes them). Greedy decoding writes the empty
        block iff it is > 0: below 0 is a greedy think, a small positive value a near tie.

    Examples
    --------
    >>> from rl.organism import load_organism
    >>> from rl.data.tasks import generate_items
    >>> model, processor = load_organism()
    >>> out = think_propensity(model, processor, generate_items(4, seed=0))
    >>> out["p_open"].shape, bool((out["close_margin"] > 0).all())
    ((4,), True)
    """
    model.eval()
    tokenizer = processor.tokenizer
    closed = torch.tensor(tokenizer(CLOSED_THINK, add_special_tokens=False)["input_ids"])  # (T,)
    suppress = suppressed_token_ids(tokenizer)
    device = next(model.parameters()).device
    p_open, margin = [], []
    for start in range(0, len(items), batch_size):
        _, inputs = prompt_batch(processor, items[start:start + batch_size], "think")
        inputs = {k: v.to(device) for k, v in inputs.items()}
        ids = closed.to(device).expand(inputs["input_ids"].shape[0], -1)  # (b, T)
        logits = completion_logits(model, inputs, ids, torch.ones_like(ids), 1.0, suppress)  # (b, T, V)
        chosen = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # (b, T)
        rival = logits.scatter(-1, ids.unsqueeze(-1), -math.inf).max(-1).values  # (b, T)
        p_open.append(1 - (chosen - logits.logsumexp(-1)).sum(1).exp())  # 1 - P(the whole empty block)
        margin.append((chosen - rival).min(1).values)
    return {"p_open": torch.cat(p_open).cpu().numpy(), "close_margin": torch.cat(margin).cpu().numpy()}


def think_propensity_summary(p_open: np.ndarray, close_margin: np.ndarray, items: Sequence[Item]) -> dict:
    """The base's distance from thinking (:func:`think_propensity`'s arrays, (n,) each), for a report: the expected
    sampled think-rate with its interval, the items greedy decoding opens the block on, and the nearest ties.

    Returns
    -------
    ``{"expected_sampled_think_rate": {value, lo, hi, n}, "greedy_opens": int, "least_margin": float (nats),
    "least_margin_item": str, "margins_below_1_nat": int}``
    """
    least = int(np.argmin(close_margin))
    return {"expected_sampled_think_rate": mean_ci(p_open.astype(float)),
            "greedy_opens": int((close_margin <= 0).sum()),
            "least_margin": float(close_margin[least]), "least_margin_item": items[least].id,
            "margins_below_1_nat": int((close_margin < 1.0).sum())}


@dataclass
class Scores:
    """Per-item scores of one prompting mode."""

    correct: np.ndarray  # (n,) bool: parsed answer equals the item's answer
    thought: np.ndarray  # (n,) bool: non-empty think block
    similarity: np.ndarray  # (n,) float: cosine(think text, reference chain); 0 when no think text
    well_formed: np.ndarray  # (n,) bool
    completions: list[str]
    thinks: list[str]  # the think text of each completion ("" when there is none), parsed once


def score(items: Sequence[Item], completions: Sequence[str], *, with_similarity: bool = True) -> Scores:
    """Parse completions and score them against the items."""
    parsed = [prompts.parse_completion(c) for c in completions]
    correct = np.array([p.answer == it.answer for p, it in zip(parsed, items)])
    thought = np.array([p.thought for p in parsed])
    sims = np.zeros(len(items), dtype=np.float32)
    if with_similarity and thought.any():
        from rl.rewards.embedding import similarity

        idx = np.flatnonzero(thought)
        refs = [" ".join(items[i].reference_chain or []) for i in idx]
        sims[idx] = similarity([parsed[i].think for i in idx], refs)
    return Scores(correct, thought, sims, np.array([p.well_formed for p in parsed]), list(completions),
                  [p.think for p in parsed])


def proportion(mask: np.ndarray) -> dict:
    """``{"value", "lo", "hi", "n"}`` of a boolean array, with a 95% Wilson interval (``adt_probe.stats.wilson``)."""
    ci = wilson(int(mask.sum()), len(mask))
    return {key: ci[key] for key in ("value", "lo", "hi", "n")}


def mean_ci(x: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean with a 95% percentile-bootstrap interval over items."""
    if len(x) == 0:
        return {"value": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    rng = np.random.default_rng(seed)
    boots = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(1)
    return {"value": float(x.mean()), "lo": float(np.quantile(boots, 0.025)), "hi": float(np.quantile(boots, 0.975)),
            "n": int(len(x))}


def _groups(items: Sequence[Item]) -> dict[tuple[str, str], list[int]]:
    """Item indices per (family, difficulty), including the margins ``"all"``."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        for key in ((it.family, it.difficulty), (it.family, "all"), ("all", it.difficulty), ("all", "all")):
            groups[key].append(i)
    return dict(sorted(groups.items()))


def group_table(items: Sequence[Item], values: np.ndarray, summary=None) -> dict:
    """``summary(values[idx])`` per family and difficulty (and the margins ``"all"``): family -> difficulty -> dict.

    ``summary`` defaults to :func:`proportion` for a boolean array and :func:`mean_ci` otherwise. NaN values (a
    judge failure) are left out of their cell, and the cell says how many with ``n_missing``.
    """
    values = np.asarray(values)
    summary = summary or (proportion if values.dtype == bool else mean_ci)
    table: dict = {}
    for (family, difficulty), idx in _groups(items).items():
        v = values[idx]
        missing = np.isnan(v) if v.dtype != bool else np.zeros(len(v), bool)
        cell = summary(v[~missing])
        if missing.any():
            cell["n_missing"] = int(missing.sum())
        table.setdefault(family, {})[difficulty] = cell
    return table


def accuracy_table(items: Sequence[Item], correct: np.ndarray) -> dict:
    """Accuracy per family and difficulty (and overall), each with a Wilson interval and the chance level."""
    table = group_table(items, np.asarray(correct, dtype=bool))
    for (family, difficulty), idx in _groups(items).items():
        table[family][difficulty]["chance"] = float(np.mean([1.0 / len(items[i].choices) for i in idx]))
    return table


def process_scores(judge, items: Sequence[Item], s: Scores) -> np.ndarray:
    """Rubric-style process score per item (as in the MMAR-Rubrics challenge): the judge's score in [0, 1] of the
    think text against the reference chain when the answer is right, 0 otherwise (and 0 for an empty think block).

    Returns (n,) float; NaN where the judge failed (never silently 0) or the item has no reference chain.
    """
    out = np.zeros(len(items))
    paid = [i for i in range(len(items)) if s.correct[i] and s.thought[i]]
    paid_refs = [i for i in paid if items[i].reference_chain]
    out[[i for i in paid if not items[i].reference_chain]] = np.nan
    if paid_refs:
        got = judge.score([s.thinks[i] for i in paid_refs], [items[i].reference_chain for i in paid_refs])
        out[paid_refs] = [np.nan if g is None else g for g in got]
    return out


_FACT = re.compile(r"^Sound \d+: ")


def inference_steps(item: Item) -> list[str]:
    """The inference steps of an item's reference chain: its statements that are not perception facts
    (``"Sound 2 is higher than Sound 1."``, not ``"Sound 2: a high tone, long, loud."``)."""
    return [step for step in item.reference_chain or [] if not _FACT.match(step)]


def inference_coverage(items: Sequence[Item], s: Scores) -> np.ndarray:
    """(n,) float: the share of its item's inference steps the think text states word for word; NaN for an item
    whose reference chain has none (nothing to cover)."""
    steps = [inference_steps(it) for it in items]
    return np.array([np.mean([step in think for step in st]) if st else np.nan
                     for st, think in zip(steps, s.thinks)])


def holds_inference(items: Sequence[Item], s: Scores) -> np.ndarray:
    """(n,) bool: the think text states at least one of its item's inference steps word for word."""
    return np.nan_to_num(inference_coverage(items, s)) > 0  # NaN: no inference step to state


def distinct_ngrams(texts: Sequence[str], n: int) -> dict:
    """Distinct-n of a set of texts (Li et al. 2016): unique word n-grams over all n-grams, pooled over the texts.

    1.0 when no n-gram repeats; a policy that writes the same stereotyped phrases everywhere drives it towards 0.
    Pooled, not per text, because the collapse RL can cause is across completions. Words are lower-cased, split on
    whitespace and punctuation.

    Returns
    -------
    ``{"value", "n_ngrams", "n_texts"}``; value NaN when the texts hold no n-gram.

    Examples
    --------
    >>> distinct_ngrams(["a high tone", "a high tone"], 2)["value"]
    0.5
    """
    grams = [tuple(w[i:i + n]) for w in (re.findall(r"[a-z0-9]+", t.lower()) for t in texts)
             for i in range(len(w) - n + 1)]
    value = len(set(grams)) / len(grams) if grams else math.nan
    return {"value": value, "n_ngrams": len(grams), "n_texts": len(texts)}


def think_columns(items: Sequence[Item], s: Scores, judge=None) -> dict[str, np.ndarray]:
    """Per-item outcomes of think-prompt completions, each (n,): ``accuracy`` and ``think_rate`` (bool),
    ``reference_similarity`` and ``inference_coverage`` (float; see :func:`inference_coverage`) and, with a judge,
    ``process_score`` (float, NaN where the judge failed)."""
    columns = {"accuracy": s.correct, "think_rate": s.thought, "reference_similarity": s.similarity.astype(float),
               "inference_coverage": inference_coverage(items, s)}
    if judge is not None:
        columns["process_score"] = process_scores(judge, items, s)
    return columns


def think_metrics(items: Sequence[Item], s: Scores, columns: dict[str, np.ndarray]) -> dict:
    """Accuracy, think-rate, reference similarity (and the process score with a judge) of think-prompt completions:
    overall values with intervals under their names, and per family x difficulty under ``by_group``."""
    out = {name: group_table(items, v)["all"]["all"] for name, v in columns.items()}
    out["reference_similarity_when_thinking"] = mean_ci(s.similarity[s.thought])
    # How often the think text already holds a step of reasoning (not only perception): what RL can reinforce.
    out["inference_statement_rate"] = proportion(holds_inference(items, s))
    # Whether RL collapses the think text into stereotyped phrases: distinct bigrams / trigrams over the set.
    thinks = [t for t in s.thinks if t]
    out["distinct_ngrams"] = {f"distinct_{n}": distinct_ngrams(thinks, n) for n in (2, 3)}
    out["by_group"] = {name: group_table(items, v) for name, v in columns.items()}
    out["examples"] = s.completions[:3]
    return out


def per_item(items: Sequence[Item], direct: Scores, think_columns: dict[str, np.ndarray],
             completions: Sequence[str] | None = None) -> dict:
    """Each item's outcomes (item order), so runs can be pooled with a hierarchical interval over runs and items:
    ``id``, ``family``, ``difficulty``, ``direct_correct``, and the greedy think prompt's :func:`think_columns`
    (None where the judge failed); with ``completions``, those greedy completions under ``completion`` (what an
    analysis of the same model on the same items would otherwise generate again)."""
    out = {"id": [it.id for it in items], "family": [it.family for it in items],
           "difficulty": [it.difficulty for it in items], "direct_correct": direct.correct.tolist()}
    if completions is not None:
        out["completion"] = list(completions)
    for name, v in think_columns.items():
        out[name] = [None if isinstance(x, float) and math.isnan(x) else x for x in v.tolist()]
    return out


def hierarchical_mean_ci(values: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean over runs and items with a two-level percentile bootstrap (runs, then items within each run:
    ``adt_probe.stats.hierarchical_interval``).

    Parameters
    ----------
    values : (runs, items) float, NaN where an outcome is missing (left out of its run's mean, and counted).

    Returns
    -------
    ``{"value", "lo", "hi", "n_runs", "n_items", "n_missing"}``; ``value`` is the mean of the run means. With one run
    the interval is the items' bootstrap alone.
    """
    values = np.asarray(values, dtype=float)
    present = ~np.isnan(values)
    # Per item (sum, count) of each run: the statistic, sum / count of the resampled items, is the run's mean.
    per_run = [np.column_stack([np.where(ok, row, 0.0), ok]) for row, ok in zip(values, present)]
    ci = hierarchical_interval(per_run, lambda sums: sums[..., 0] / sums[..., 1], n_boot=n_boot, seed=seed,
                               level=level)
    return {"value": ci["value"], "lo": ci["lo"], "hi": ci["hi"], "n_runs": int(values.shape[0]),
            "n_items": int(values.shape[1]), "n_missing": int((~present).sum())}

def evaluate(model, processor, items: Sequence[Item], *, batch_size: int = 32, sample_seed: int = 0,
             think_samples: bool = True, facts_and_notes: bool = True, judge=None,
             max_new_tokens: int = prompts.MAX_NEW_TOKENS) -> dict:
    """Direct-answer accuracy table, and accuracy / think-rate / reference similarity under the think-first prompt.

    Parameters
    ----------
    judge : an ``rl.judge.Judge`` for the rubric-style process score (None: not measured).
    think_samples : also measure the think prompt sampled at temperature 1 (besides greedy).
    facts_and_notes : also measure, on synthetic items, the answers from the facts written out and from correct notes
        (what the model can do once perception is given: three completions per item, about a quarter of the time
        on the organism; RL's before/after needs none of them).

    Returns
    -------
    A JSON-serialisable dict: ``accuracy`` (direct answers; family -> difficulty -> value, lo, hi, n, chance),
    ``accuracy_written_facts`` (synthetic items: the facts written in the prompt instead of the audio),
    ``accuracy_written_facts_think`` (the same under the think-first prompt: inference steps may come first),
    ``accuracy_with_notes`` (synthetic items: the think block pre-filled with the clip's correct facts; these three
    are None for other items or without ``facts_and_notes``),
    ``think_prompt`` (``greedy`` and ``sampled_t1``: see :func:`think_metrics`), ``think_propensity`` (how near
    the think-first prompt is to thinking: :func:`think_propensity_summary`; per item in ``per_item``), examples, and
    ``completion_budget`` (``prompts.completion_budget``: reference completions longer than ``max_new_tokens`` are
    cut, so their reasoning scores as wrong; a warning says so).

    Raises
    ------
    PreflightError : no items, or items that do not fit the model's context (checked before generating).
    """
    check_fits(model, processor, items, max_new_tokens=max_new_tokens)
    # a budget that cuts the reference chains scores the cut reasoning as wrong: said, and kept in the report
    budget = prompts.completion_budget(processor.tokenizer, items, max_new_tokens)
    if problem := prompts.budget_problem(budget, "evaluation (--max-new-tokens)"):
        log.warning(problem)
    direct = score(items, generate(model, processor, items, "answer", max_new_tokens=16, batch_size=batch_size),
                   with_similarity=False)
    result = {"n_items": len(items), "accuracy": accuracy_table(items, direct.correct),
              "accuracy_written_facts": None, "accuracy_written_facts_think": None, "accuracy_with_notes": None,
              "direct_well_formed": proportion(direct.well_formed), "think_prompt": {}, "completion_budget": budget}
    if facts_and_notes and all("description" in it.meta for it in items):  # synthetic: facts can be written out
        facts = score(items, generate(model, processor, items, "answer", max_new_tokens=16, batch_size=batch_size,
                                      written_facts=True), with_similarity=False)
        result["accuracy_written_facts"] = accuracy_table(items, facts.correct)
        # the same facts under the think-first prompt: the model may write its inference steps over them first
        facts_think = score(items, generate(model, processor, items, "think", max_new_tokens=max_new_tokens,
                                            batch_size=batch_size, written_facts=True), with_similarity=False)
        result["accuracy_written_facts_think"] = accuracy_table(items, facts_think.correct)
        # the think budget: after the notes, a model may write its inference steps before answering
        notes = score(items, generate(model, processor, items, "think", max_new_tokens=max_new_tokens,
                                      batch_size=batch_size, notes="given"), with_similarity=False)
        result["accuracy_with_notes"] = accuracy_table(items, notes.correct)
    settings = {"greedy": 0.0, "sampled_t1": 1.0} if think_samples else {"greedy": 0.0}
    for name, temperature in settings.items():
        s = score(items, generate(model, processor, items, "think", temperature=temperature,
                                  max_new_tokens=max_new_tokens, batch_size=batch_size, seed=sample_seed))
        columns = think_columns(items, s, judge if name == "greedy" else None)
        result["think_prompt"][name] = {"temperature": temperature, **think_metrics(items, s, columns)}
        if name == "greedy":
            result["per_item"] = per_item(items, direct, columns, s.completions)
    opening = think_propensity(model, processor, items, batch_size=batch_size)
    result["think_propensity"] = think_propensity_summary(opening["p_open"], opening["close_margin"], items)
    result["per_item"].update({k: v.tolist() for k, v in opening.items()})
    result["examples_direct"] = direct.completions[:3]
    if judge is not None:
        result["judge"] = judge.describe()
    return result


def main(argv: Sequence[str] | None = None) -> None:
    from rl.data.items import load_items
    from rl.data.tasks import FAMILIES, generate_items
    from rl.organism import ORGANISM_DIR, calibrated_audio, load_organism

    args = cli_options.parser(cli_options.evaluate_arguments, __doc__).parse_args(argv)
    torch.manual_seed(0)
    items = load_items(args.data) if args.data else \
        generate_items(args.n_per_cell * len(FAMILIES) * 3, seed=args.seed, prefix="heldout",
                       calibrated=calibrated_audio(args.model or ORGANISM_DIR))
    check_items(items, args.data or "the synthetic set")
    if args.out:
        check_writable(Path(args.out).parent)
    model, processor = load_organism(args.model or ORGANISM_DIR)
    judge = make_eval_judge(args.judge, args.judge_model)
    report = evaluate(model, processor, items, judge=judge, think_samples=not args.no_sampled,
                      facts_and_notes=not args.no_facts_and_notes, max_new_tokens=args.max_new_tokens)
    report.update(model=str(args.model or ORGANISM_DIR), data=args.data or f"synthetic (seed {args.seed})")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))


def make_eval_judge(spec: str | None, model: str | None = None):
    """The judge named on the command line: ``"none"``, ``"smollm2"`` / a model folder, or a server URL."""
    from rl.judge import DEFAULT_SERVER_PROMPT, make_judge

    if spec is None or spec == "none":
        return None
    if spec.startswith(("http://", "https://")):
        return make_judge("openai", base_url=spec, model=model, prompt=DEFAULT_SERVER_PROMPT)
    return make_judge("local", model=spec)


def format_table(report: dict) -> str:
    """The accuracy table (direct answers from the audio; extra columns: with the facts written in the prompt, and
    with correct notes in the think block), and the think-first prompt per family (greedy), as Markdown."""
    acc = report["accuracy"]
    extras = {name: report[key] for name, key in (("facts written out", "accuracy_written_facts"),
                                                  ("facts written out, think-first", "accuracy_written_facts_think"),
                                                  ("with notes", "accuracy_with_notes")) if report.get(key)}
    diffs = ["easy", "medium", "hard", "all"]
    head = "| family | chance | " + " | ".join(diffs) + " |" + "".join(f" {name} |" for name in extras)
    lines = ["Direct answers (accuracy, 95% Wilson intervals):", "", head,
             "|---|---|" + "---|" * (len(diffs) + len(extras))]

    def cell(c: dict) -> str:
        return f"{c['value']:.2f} [{c['lo']:.2f}, {c['hi']:.2f}]"

    families = [f for f in acc if f != "all"] + ["all"]
    for family in families:
        cells = [cell(acc[family][d]) if d in acc[family] else "" for d in diffs]
        extra = "".join(f" {cell(t[family]['all'])} |" for t in extras.values())
        lines.append(f"| {family} | {acc[family]['all']['chance']:.2f} | " + " | ".join(cells) + " |" + extra)
    greedy = report["think_prompt"].get("greedy")
    if greedy and "by_group" in greedy:
        metrics = [m for m in ("accuracy", "think_rate", "reference_similarity", "inference_coverage",
                               "process_score")
                   if m in greedy["by_group"]]
        lines += ["", "Think-first prompt, greedy (95% intervals):", "",
                  "| family | " + " | ".join(m.replace("_", " ") for m in metrics) + " |",
                  "|---|" + "---|" * len(metrics)]
        for family in families:
            lines.append(f"| {family} | " + " | ".join(cell(greedy["by_group"][m][family]["all"]) for m in metrics)
                         + " |")
    for name, t in report["think_prompt"].items():
        tr, sim = t["think_rate"], t["reference_similarity"]
        inference = t.get("inference_statement_rate")
        lines.append(f"\nThink-first prompt, {name}: think-rate {tr['value']:.3f} [{tr['lo']:.3f}, {tr['hi']:.3f}], "
                     f"similarity to reference {sim['value']:.3f} [{sim['lo']:.3f}, {sim['hi']:.3f}], "
                     f"accuracy {t['accuracy']['value']:.3f}"
                     + (f", think text with an inference step {inference['value']:.3f}" if inference else "")
                     + "".join(f", {k.replace('_', '-')} {v['value']:.3f}"
                               for k, v in t.get("distinct_ngrams", {}).items()))
    if opening := report.get("think_propensity"):
        rate = opening["expected_sampled_think_rate"]
        lines.append(f"\nThink block, from its probabilities: expected sampled think-rate {rate['value']:.3f} "
                     f"[{rate['lo']:.3f}, {rate['hi']:.3f}]; greedy opens it on {opening['greedy_opens']} items, "
                     f"least margin {opening['least_margin']:+.2f} nats ({opening['least_margin_item']}), "
                     f"{opening['margins_below_1_nat']} items within 1 nat")
    if problem := prompts.budget_problem(report.get("completion_budget") or {"items_cut": 0}, "Completion budget"):
        lines.append(f"\n{problem}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
