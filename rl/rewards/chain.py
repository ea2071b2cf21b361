"""Chain rewards: does the think text cover the reference chain's steps, in its order, with its facts?

The paper's hybrid reward (``rl.rewards.judged.HybridReasoningReward``) compares the whole think text with the whole
reference by one cosine and a judge's likelihood of the *candidate* (a precision direction): a verbatim first step
scores above a complete paraphrase, shuffled steps above ordered ones (issue 19). The scorers here measure the
paper's three criteria directly, in the *recall* direction (ROSCOE's step alignment, arXiv 2212.07919; BARTScore's
``p(reference | candidate)``, arXiv 2106.11520):

* **coverage** -- every reference step is aligned to its best candidate step (all-MiniLM-L6-v2 cosine of sentences,
  plus agreement of their facts); a step counts as covered by how far its best similarity lies between ``lo`` and
  ``hi``; coverage is the mean over reference steps. **precision** is the same in the other direction (every candidate
  step supported by some reference step): filler, off-topic and extra claims lower it.
* **order** -- the one-to-one alignment of steps (Hungarian) read in reference order: each inversion of the matched
  candidate positions costs ``1 / (n_matched - 1)``.
* **facts** -- numbers with units (``440 Hz`` = ``0.44 kHz``, ``250 ms`` = ``0.25 s``, ``three`` = ``3``, ``the
  second`` = ``2``) and attribute words (pitch, duration and loudness levels with their synonyms, trends, yes/no,
  same/different, tone/noise) as multisets: F1 of the candidate's against the reference's; and **agreement**: each
  candidate step that states a value its aligned reference step states otherwise (a wrong level, a flipped verdict,
  a measured value the reference never gives) halves the reward, and so does a concluding last step that names
  another answer than the item's (:func:`concludes_otherwise`, through the ``choices`` column where one is given).
  Other facts outside this lexicon (event names, speaker identities) are invisible to it; the embedding and the judge
  still see them.
* **judge recall** -- the judge model's likelihood of the reference chain *given the candidate* (prompt
  ``recall-likelihood``), normalised between the reference given nothing (0) and the reference given itself (1):
  how much of the reference the candidate lets the judge predict. Truncated, one-step and off-topic chains predict
  little of it.

Rewards (TRL's signature, registered on import; paid only for a correct answer with think text, like the paper's):

* ``chain_alignment`` -- ``coverage * precision * order * facts * agreement`` (no judge; MiniLM only): stage 1's
  reasoning reward in the demo configs (dev styles of ``benchmarks/reasoning_validity.py``: pooled AUROC 0.98 vs
  the MiniLM cosine's 0.73).
* ``chain_judge`` (:class:`ChainJudgeReward`) -- the judge recall alone.
* ``chain_reasoning`` (:class:`ChainReasoningReward`) -- ``judge_weight * chain_judge + (1 - judge_weight) *
  chain_alignment``. Its default judge weight, :data:`DEFAULT_CHAIN_WEIGHT` = 0, was chosen on the dev styles of
  ``benchmarks/reasoning_validity.py`` (every weight above 0 lowered the worst corruption kind's AUROC with the 135M
  judge); a stronger judge may earn a weight, measured the same way.

The two judge rewards are ``rl.rewards.judged.JudgedReward`` classes given the run's judge (the ``[judge]`` table);
that judge must use a likelihood prompt, ``prompt = "recall-likelihood"`` (``rl.judge.prompts``); a server judge
needs ``endpoint = "completions"`` with echoed prompt logprobs.

Costs: sentences are embedded once per content (an in-process cache) and in one batch per call; judge results are
cached by content by the judge; the two normalising judgements are made once per reference.

Examples
--------
>>> sorted(facts("The first tone is at 0.44 kHz and lasts 250 ms, so it is higher."))
['0.25 s', '1', '440 Hz', 'cmp:pitch', 'kind:tone']
"""

from __future__ import annotations

import collections
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from rl.judge import Judge, SharedJudge, sanitize_candidate
from rl.rewards.embedding import embed
from rl.rewards.judged import JudgedReward, WeightedReward, _reference_text, paid_columns, paid_completions
from rl.rewards.reasoning import named_choices
from rl.rewards.registry import register_reward

__all__ = ["DEFAULT_CHAIN_WEIGHT", "RECALL_PROMPT", "ChainJudgeReward", "ChainReasoningReward", "ChainScores",
           "chain_alignment_reward", "chain_scores", "concludes_otherwise", "facts", "judge_recall", "split_steps"]

#: Weight of the judge recall in ``chain_reasoning``, chosen on the dev styles of benchmarks/reasoning_validity.py
#: (largest worst-kind AUROC, then pooled): with the shipped SmolLM2-135M judge, w = 0 gives worst kind 0.89 and
#: pooled 0.976; every w > 0 lowers the worst kind (0.85 up to w = 0.7, 0.53 at w = 1). A stronger judge (a server)
#: may earn a share: re-run the benchmark with it (``--server``) before raising this.
DEFAULT_CHAIN_WEIGHT = 0.0

#: The judge prompt of the judge recall (defined in ``rl.judge.prompts``, so a [judge] table can name it).
RECALL_PROMPT = "recall-likelihood"

#: What the judge sees instead of a candidate for the normalising baseline ``p(reference | nothing)``.
_NO_REASONING = "(no reasoning given)"

# ==================================================================================================================
# Steps and facts
# ==================================================================================================================

_STEP_SPLIT = re.compile(r"(?<=[.!?;])\s+|\n+")
_LIST_MARK = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022]|step\s+\d+\s*[:.])\s*", re.I)


def split_steps(text: str) -> list[str]:
    """The steps of a reasoning text: its sentences (and lines), list markers removed, exact repeats dropped."""
    seen, steps = set(), []
    for part in _STEP_SPLIT.split(text or ""):
        step = _LIST_MARK.sub("", part).strip()
        key = " ".join(step.lower().split())
        if len(key) > 1 and key not in seen:
            seen.add(key)
            steps.append(step)
    return steps


#: unit word -> (canonical unit, factor to it)
_UNITS = {"hz": ("Hz", 1.0), "hertz": ("Hz", 1.0), "khz": ("Hz", 1e3), "kilohertz": ("Hz", 1e3),
          "ms": ("s", 1e-3), "msec": ("s", 1e-3), "millisecond": ("s", 1e-3), "milliseconds": ("s", 1e-3),
          "s": ("s", 1.0), "sec": ("s", 1.0), "secs": ("s", 1.0), "second": ("s", 1.0), "seconds": ("s", 1.0),
          "min": ("s", 60.0), "minute": ("s", 60.0), "minutes": ("s", 60.0),
          "db": ("dB", 1.0), "dbfs": ("dB", 1.0), "decibel": ("dB", 1.0), "decibels": ("dB", 1.0),
          "bpm": ("bpm", 1.0), "beats per minute": ("bpm", 1.0), "%": ("%", 1.0), "percent": ("%", 1.0),
          "per cent": ("%", 1.0)}
# "one" is left out: "the higher one" is a pronoun; "sound one" is read by _NAMED_ONE
_SMALL = ("zero", "", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
          "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty")
_NUMBER_WORDS = {w: i for i, w in enumerate(_SMALL) if w} | {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
                                                            "hundred": 100, "a hundred": 100, "half": 0.5}
_ORDINALS = {w: i for i, w in enumerate(("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
                                         "ninth", "tenth"), 1)}
_NUM = r"(?:\d+(?:,\d{3})+(?:\.\d+)?|\d*\.\d+|\d+)"
_UNIT_ALT = "|".join(sorted((re.escape(u) for u in _UNITS), key=len, reverse=True))
_WORDS_ALT = "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True))
_QUANTITY = re.compile(rf"(?<![\w.])(?:(?P<num>{_NUM})|(?P<word>{_WORDS_ALT}))"
                       rf"(?:\s*-?\s*(?P<unit>{_UNIT_ALT})(?![\w]))?", re.I)
_NAMED_ONE = re.compile(r"\b(?:sound|tone|section|part|beep|event|segment|note|number|step)\s+one\b", re.I)
_ORDINAL = re.compile(r"\b(?:(" + "|".join(_ORDINALS) + r")|(\d+)(?:st|nd|rd|th))\b", re.I)

#: attribute phrase -> canonical fact. Levels carry their value; comparisons carry only what is compared (a converse
#: comparison, "2 is higher than 1" / "1 is lower than 2", states the same fact).
_ATTRIBUTES: dict[str, str] = {}
for _canon, _words in {
    "pitch:very low": "very low|very low-pitched|very deep",
    "pitch:low": "low|low-pitched|deep|bass",
    "pitch:middle": "middle|mid|mid-pitched|medium-pitched|medium pitch|mid-range",
    "pitch:high": "high|high-pitched|shrill|treble",
    "pitch:very high": "very high|very high-pitched|very shrill",
    "duration:short": "short|brief|shortest",
    "duration:medium": "medium|medium-length|of medium length|moderate length|medium duration",
    "duration:long": "long|long-lasting|lengthy|longest",
    "loudness:quiet": "quiet|soft|faint|quietest|softest",
    "loudness:medium": "medium-loud|moderately loud|medium loudness|moderate volume",
    "loudness:loud": "loud|loudest",
    "cmp:pitch": "higher|lower|higher-pitched|lower-pitched|highest|lowest",
    "cmp:duration": "longer|shorter|lasts longer",
    "cmp:loudness": "louder|softer|quieter",
    "cmp:tempo": "faster|slower|quicker",
    "trend:up": "rises|rising|increases|increasing|goes up|gets louder|grows louder|climbs",
    "trend:down": "falls|falling|decreases|decreasing|goes down|gets softer|gets quieter|drops|fades",
    "trend:flat": "stays the same|constant|unchanged|steady|keeps the same|does not change",
    "yes": "yes", "no": "no",
    "same": "same|identical|the very same", "different": "different|distinct|not the same",
    "kind:noise": "noise|hiss|noisy", "kind:tone": "tone|beep|tones|beeps",
}.items():
    for _w in _words.split("|"):
        _ATTRIBUTES[_w] = _canon
_ATTRIBUTE = re.compile(r"(?<![\w-])(" + "|".join(re.escape(w) for w in sorted(_ATTRIBUTES, key=len, reverse=True))
                        + r")(?![\w-])", re.I)


def _number_text(value: float, unit: str) -> str:
    text = f"{value:.4g}"
    return f"{text} {unit}" if unit else text


def facts(text: str) -> collections.Counter:
    """The checkable facts of a text: quantities (normalised numbers with units), ordinals as numbers and attribute
    words as canonical facts. A multiset (``collections.Counter``) of strings."""
    out: collections.Counter = collections.Counter()
    rest = text

    def quantity(m: re.Match) -> str:
        raw = m.group("num")
        value = float(raw.replace(",", "")) if raw else float(_NUMBER_WORDS[m.group("word").lower()])
        unit, factor = _UNITS.get((m.group("unit") or "").lower(), ("", 1.0))
        if m.group("word") and not m.group("unit") and m.group("word").lower() in ("half", "a hundred"):
            return m.group(0)  # "half" alone is no quantity
        out[_number_text(value * factor, unit)] += 1
        return " "

    rest = _QUANTITY.sub(quantity, rest)

    def ordinal(m: re.Match) -> str:
        out[_number_text(float(_ORDINALS[m.group(1).lower()] if m.group(1) else int(m.group(2))), "")] += 1
        return " "

    rest = _ORDINAL.sub(ordinal, rest)
    if named_one := len(_NAMED_ONE.findall(rest)):
        out["1"] += named_one
    for m in _ATTRIBUTE.finditer(rest):
        out[_ATTRIBUTES[m.group(1).lower()]] += 1
    return out


def _f1(a: collections.Counter, b: collections.Counter) -> float:
    """F1 of two multisets; 1.0 when both are empty."""
    if not a and not b:
        return 1.0
    common = sum((a & b).values())
    return 2.0 * common / (sum(a.values()) + sum(b.values()))


_VALUE_TYPES = ("pitch", "duration", "loudness", "trend")  # attribute facts whose values can contradict each other
_VERDICTS = {"yes": "verdict", "no": "verdict", "same": "identity", "different": "identity"}
_LEVEL_TYPES = (*_VALUE_TYPES, "verdict", "identity")  # values stated in words (not numbers)


def _value_type(fact: str) -> str | None:
    """The kind of value a fact states (``'pitch'``, ``'verdict'``, ``'count'``, ``'Hz'``...), None for a fact that
    states no value (a comparison word, tone/noise)."""
    if fact in _VERDICTS:
        return _VERDICTS[fact]
    head, _, tail = fact.partition(":")
    if tail:
        return head if head in _VALUE_TYPES else None
    unit = fact.partition(" ")[2]
    return unit or "count"


def _derivable(fact: str, chain_values: dict[str, set[float]]) -> bool:
    """A quantity with a unit is true of the chain if the chain states it, or the difference of two of its
    quantities of that unit (a paraphrase may say "20 dB louder" for 50 -> 70 dB)."""
    value, _, unit = fact.partition(" ")
    known = chain_values.get(unit, set())
    v = float(value)
    return any(math.isclose(v, k, rel_tol=1e-3) for k in known) or any(
        math.isclose(v, abs(a - b), rel_tol=1e-3) for a in known for b in known)


def contradicts(step: collections.Counter, ref_step: collections.Counter, chain_values: dict[str, set[float]]) -> bool:
    """Does a candidate step (its facts) state a value its aligned reference step states otherwise?

    For each kind of value both steps state (a pitch level, a trend, yes/no, same/different, a count or identifier),
    every value of the candidate must be among the reference step's. A quantity with a unit must be true of the whole
    reference chain (``_derivable``): measured values are often restated in another step.
    """
    ref_types: dict[str, set[str]] = collections.defaultdict(set)
    for f in ref_step:
        t = _value_type(f)
        if t:
            ref_types[t].add(f)
    for f in step:
        t = _value_type(f)
        if t is None:
            continue
        if t == "count" and any(_derivable(f"{f} {unit}", chain_values) for unit in chain_values):
            continue  # a bare number that is a measured value with its unit left out ("90 BPM exceeds 80")
        if t in ("count", *_VALUE_TYPES, "verdict", "identity"):
            if t in ref_types and f not in ref_types[t]:
                return True
        elif not _derivable(f, chain_values):
            return True
    return False


def _chain_values(ref_facts: Sequence[collections.Counter]) -> dict[str, set[float]]:
    values: dict[str, set[float]] = collections.defaultdict(set)
    for counter in ref_facts:
        for f in counter:
            t = _value_type(f)
            if t and t not in ("count", *_VALUE_TYPES, "verdict", "identity"):
                values[t].add(float(f.partition(" ")[0]))
    return values


def concludes_otherwise(step: str, answer: str, choices: Sequence[str] | None = None) -> bool:
    """Does a conclusion step name another answer than ``answer`` (the item's correct one)?

    By the choices first: a step that names exactly one choice concludes it ("So the first tone is higher." names
    "the first"); one that names several ("A comes before B") decides nothing. Without a named choice, by the facts:
    a level, trend or verdict of a kind the answer states, stated otherwise ("The loudness goes down." against
    "it rises"). Counts and ordinals are read through the choices only: a conclusion restates measured values.

    Examples
    --------
    >>> concludes_otherwise("So the first tone is higher.", "the second", ["the first", "the second"])
    True
    >>> concludes_otherwise("The loudness goes up over the clip.", "it rises")
    False
    """
    if choices:
        named = named_choices(step, list(choices))
        if named:
            return len(named) == 1 and choices[named[0]].strip().lower() != answer.strip().lower()
    said = collections.Counter({f: n for f, n in facts(answer).items() if _value_type(f) in _LEVEL_TYPES})
    stated = collections.Counter({f: n for f, n in facts(step).items() if _value_type(f) in _LEVEL_TYPES})
    return bool(said) and contradicts(stated, said, {})


# ==================================================================================================================
# Step alignment
# ==================================================================================================================

_EMBED_CACHE: collections.OrderedDict[tuple[str | None, str], np.ndarray] = collections.OrderedDict()
_EMBED_LOCK = threading.Lock()
_EMBED_CACHE_SIZE = 8192


def embed_cached(texts: Sequence[str], model_path: str | None = None) -> np.ndarray:
    """Unit-norm sentence embeddings, shape (len(texts), 384) float32: each distinct text is embedded once per process
    (an LRU cache of ``_EMBED_CACHE_SIZE`` sentences), the new ones in one batch."""
    with _EMBED_LOCK:
        new = list(dict.fromkeys(t for t in texts if (model_path, t) not in _EMBED_CACHE))
    if new:
        vectors = embed(new, model_path)
        with _EMBED_LOCK:
            for t, v in zip(new, vectors):
                _EMBED_CACHE[(model_path, t)] = v
            while len(_EMBED_CACHE) > _EMBED_CACHE_SIZE:
                _EMBED_CACHE.popitem(last=False)
    with _EMBED_LOCK:
        rows = [_EMBED_CACHE.get((model_path, t)) for t in texts]
    missing = [t for t, r in zip(texts, rows) if r is None]  # evicted meanwhile by a huge call: embed again
    if missing:
        again = dict(zip(missing, embed(missing, model_path)))
        rows = [again[t] if r is None else r for t, r in zip(texts, rows)]
    return np.stack(rows) if rows else np.zeros((0, 384), dtype=np.float32)


@dataclass(frozen=True)
class ChainScores:
    """The criteria of one candidate against its reference chain, each in [0, 1].

    coverage : mean over reference steps of how well the best-aligned candidate step covers it (recall direction).
    precision : mean over candidate steps of how well the best-aligned reference step supports it.
    order : 1 - (inversions of the one-to-one alignment in reference order) / (matched steps - 1), at least 0.
    facts : F1 of the candidate's facts against the reference's (numbers with units, attribute words).
    contradictions : candidate steps that state a value their aligned reference step states otherwise
        (:func:`contradicts`): a wrong fact; and, when the answer is known, a last step aligned to the reference's
        last (the conclusion) that names another answer (:func:`concludes_otherwise`).
    """

    coverage: float
    precision: float
    order: float
    facts: float
    contradictions: int = 0

    @property
    def agreement(self) -> float:
        """``CONTRADICTION_FACTOR ** contradictions``: each false step costs a fixed fraction of the reward."""
        return CONTRADICTION_FACTOR ** self.contradictions

    @property
    def alignment(self) -> float:
        """The ``chain_alignment`` reward: the product of the criteria (any one failing fails the chain)."""
        return self.coverage * self.precision * self.order * self.facts * self.agreement


#: Similarity (cosine + fact agreement, halves) at or below which a step counts as not covered, and at or above
#: which it counts as fully covered; chosen on the dev styles of benchmarks/reasoning_validity.py.
COVER_LO, COVER_HI = 0.35, 0.75
#: Weight of the per-step fact F1 in the step similarity (the rest is the cosine).
FACT_WEIGHT = 0.5
#: What each contradicting step multiplies the alignment reward by.
CONTRADICTION_FACTOR = 0.5


def _step_similarity(cos: np.ndarray, cand_facts: list, ref_facts: list) -> np.ndarray:
    """(n_cand, n_ref) similarity of steps: ``(1 - FACT_WEIGHT) * cosine + FACT_WEIGHT * fact F1``."""
    fact = np.array([[_f1(a, b) for b in ref_facts] for a in cand_facts]).reshape(cos.shape)
    return (1.0 - FACT_WEIGHT) * cos + FACT_WEIGHT * fact


def _covered(sim: np.ndarray) -> np.ndarray:
    return np.clip((sim - COVER_LO) / (COVER_HI - COVER_LO), 0.0, 1.0)


def _order(sim: np.ndarray) -> float:
    """1 - inversions / (matched - 1) of the Hungarian alignment of candidate to reference steps, over the pairs
    above ``COVER_LO`` (1.0 when fewer than two steps match: nothing can be out of order)."""
    rows, cols = linear_sum_assignment(-sim)
    keep = sim[rows, cols] > COVER_LO
    positions = rows[keep][np.argsort(cols[keep])]  # candidate position of each matched reference step, in ref order
    n = len(positions)
    if n < 2:
        return 1.0
    inversions = sum(int(positions[i] > positions[j]) for i in range(n) for j in range(i + 1, n))
    return max(0.0, 1.0 - inversions / (n - 1))


def chain_scores(candidates: Sequence[str], references: Sequence[str | Sequence[str]],
                 model_path: str | None = None, *, answers: Sequence[str] | None = None,
                 choices: Sequence[Sequence[str] | None] | None = None) -> list[ChainScores]:
    """Coverage, precision, order and facts of each candidate text against its reference chain.

    Parameters
    ----------
    candidates : think texts (sanitised here: delimiters removed, repetition collapsed).
    references : reference chains, each a list of steps or a text (split into sentences).
    model_path : a sentence-transformers folder (default: the shipped all-MiniLM-L6-v2).
    answers : each item's correct answer (optional): a conclusion step naming another one counts as a contradiction.
    choices : each item's answer choices (optional; they let a conclusion be read where the fact lexicon is blind).

    Returns
    -------
    list of :class:`ChainScores`, one per candidate; all zeros for a candidate without steps.
    """
    if len(candidates) != len(references):
        raise ValueError(f"chain_scores: {len(candidates)} candidates but {len(references)} references")
    cand_steps = [split_steps(sanitize_candidate(c)) for c in candidates]
    ref_steps = [list(r) if not isinstance(r, str) else split_steps(r) for r in references]
    ref_steps = [[s.strip() for s in r if s.strip()] for r in ref_steps]
    vectors = embed_cached([s for steps in (*cand_steps, *ref_steps) for s in steps], model_path)
    offsets = np.cumsum([0] + [len(s) for s in (*cand_steps, *ref_steps)])
    answers = answers if answers is not None else [None] * len(candidates)
    choices = choices if choices is not None else [None] * len(candidates)
    out = []
    for i, (cand, ref) in enumerate(zip(cand_steps, ref_steps)):
        if not cand or not ref:
            out.append(ChainScores(0.0, 0.0, 0.0, 0.0))
            continue
        j = len(cand_steps) + i
        cos = np.clip(vectors[offsets[i]:offsets[i + 1]] @ vectors[offsets[j]:offsets[j + 1]].T, 0.0, 1.0)
        flipped = answers[i] is not None and concludes_otherwise(cand[-1], answers[i], choices[i])
        out.append(_criteria(cos, [facts(s) for s in cand], [facts(s) for s in ref], flipped))
    return out


def _criteria(cos: np.ndarray, cand_facts: list, ref_facts: list, flipped: bool = False) -> ChainScores:
    """The criteria from the (n_cand, n_ref) cosine matrix of steps, each step's facts, and whether the candidate's
    last step names another answer than the item's (``flipped``). That step counts as a contradiction only when it
    concludes, i.e. its nearest reference step is the last: a think text that stops after its perception facts
    ("Sound 2: noise, short, quiet.") names a choice without concluding it."""
    sim = _step_similarity(cos, cand_facts, ref_facts)
    values = _chain_values(ref_facts)
    nearest = sim.argmax(1)  # each candidate step's reference step (facts help to tell "sound 1" from "sound 2")
    bad = np.array([contradicts(cf, ref_facts[k], values) for cf, k in zip(cand_facts, nearest)], dtype=bool)
    bad[-1] |= flipped and nearest[-1] == len(ref_facts) - 1
    wrong = int(bad.sum())
    return ChainScores(coverage=float(_covered(sim.max(0)).mean()), precision=float(_covered(sim.max(1)).mean()),
                       order=_order(sim), facts=_f1(sum(cand_facts, collections.Counter()),
                                                    sum(ref_facts, collections.Counter())),
                       contradictions=int(wrong))


# ==================================================================================================================
# Judge recall
# ==================================================================================================================


def _check_likelihood(judge: Judge, reward: str) -> Judge:
    """``judge``, or a ValueError if its prompt reads score tokens (the recall needs token likelihoods)."""
    if judge.prompt.method != "likelihood":
        raise ValueError(f"reward {reward!r}: the judge's prompt {judge.prompt.name!r} reads score tokens; the judge "
                         f"recall needs a likelihood prompt: set prompt = {RECALL_PROMPT!r} in the [judge] table (a "
                         "server judge also needs endpoint = 'completions' with echoed logprobs)")
    return judge


def judge_recall(judge, candidates: Sequence[str], references: Sequence[str | Sequence[str]]) -> list[float | None]:
    """How much of each reference the judge can predict from the candidate, in [0, 1]; None where the judge failed.

    ``L(x) = mean log p(reference tokens | x)`` under the recall prompt; the score is
    ``(L(candidate) - L(nothing)) / (L(reference) - L(nothing))`` clipped to [0, 1]: 0 = the candidate helps no more
    than no reasoning at all, 1 = as much as the reference itself (BARTScore's recall, normalised per reference).
    """
    refs = [_reference_text(r) for r in references]
    unique = list(dict.fromkeys(refs))
    # the judge's "candidate" slot holds the text whose likelihood is measured: the reference; its "reference" slot
    # holds the text conditioned on: the (sanitised) candidate, the reference itself, or nothing
    cands = [sanitize_candidate(c) for c in candidates]
    scored = judge.score(refs + unique + unique, cands + unique + [_NO_REASONING] * len(unique))
    n, u = len(refs), len(unique)
    self_lp = {r: s for r, s in zip(unique, scored[n:n + u])}
    null_lp = {r: s for r, s in zip(unique, scored[n + u:])}
    out: list[float | None] = []
    for ref, s in zip(refs, scored[:n]):
        top, bottom = self_lp[ref], null_lp[ref]
        if s is None or top is None or bottom is None:
            out.append(None)
            continue
        lc, ltop, lbot = (math.log(max(x, 1e-12)) for x in (s, top, bottom))
        out.append(float(np.clip((lc - lbot) / max(ltop - lbot, 0.05), 0.0, 1.0)))
    return out


# ==================================================================================================================
# Rewards
# ==================================================================================================================


def _alignment(thinks: list[str], refs: list, embedding_model: str | None, answers: list[str],
               choices: list | None) -> list[float]:
    return [sc.alignment for sc in chain_scores(thinks, refs, embedding_model, answers=answers, choices=choices)]


@register_reward("chain_alignment", requires=("reference_chain",))
def chain_alignment_reward(prompts: list, completions: list, completion_ids: list, *, answer: list[str],
                           reference_chain: list | None = None, embedding_model: str | None = None,
                           **columns) -> list[float | None]:
    """``coverage * precision * order * facts * agreement`` of the think text against the reference chain (MiniLM
    step alignment, no judge) for a correct answer with think text; 0.0 otherwise. In [0, 1]; one per completion."""
    thinks, refs, paid = paid_completions("chain_alignment", completions, answer, reference_chain, columns.get("id"))
    scores = _alignment(thinks, refs, embedding_model, *paid_columns(paid, answer, columns)) if paid else []
    out: list[float | None] = [0.0] * len(completions)
    for i, a in zip(paid, scores):
        out[i] = a
    return out


def _warm_up_alignment() -> str:
    """Load the sentence embedder when a stage starts (a missing model fails before any training)."""
    embed(["warm-up"])
    return "embedder all-MiniLM-L6-v2"


chain_alignment_reward.warm_up = _warm_up_alignment  # type: ignore[attr-defined]  # Reward.warm_up calls it


@register_reward("chain_judge")
class ChainJudgeReward(JudgedReward):
    """The judge recall alone (how much of the reference the judge predicts from the think text, normalised) for a
    correct answer with think text; 0.0 otherwise; None where the judge failed. In [0, 1].

    The judge must use a likelihood prompt (``[judge] prompt = "recall-likelihood"``); checked at warm-up and call.
    """

    name = "chain_judge"

    def warm_up(self) -> str:
        said = super().warm_up()
        _check_likelihood(self.judge, self.name)
        return said

    def _recall(self, thinks: list[str], refs: list) -> list[float | None]:
        return judge_recall(_check_likelihood(self.judge, self.name), thinks, refs)

    def __call__(self, prompts: list, completions: list, completion_ids: list, *, answer: list[str],
                 reference_chain: list | None = None, **columns) -> list[float | None]:
        thinks, refs, paid = self._paid(completions, answer, reference_chain, columns.get("id"))
        out: list[float | None] = [0.0] * len(completions)
        for i, s in zip(paid, self._recall(thinks, refs) if paid else []):
            out[i] = s
        return out


@register_reward("chain_reasoning")
class ChainReasoningReward(WeightedReward):
    """``judge_weight * judge recall + (1 - judge_weight) * chain_alignment`` for a correct answer with think text;
    0.0 otherwise; None where the judge failed. In [0, 1].

    ``judge_weight`` = 0 needs no judge (then it equals ``chain_alignment``), 1 is the judge recall alone. The run's
    ``judge.weight`` is the hybrid's share; this reward takes its own (``[reward_kwargs.chain_reasoning]
    chain_weight``, default :data:`DEFAULT_CHAIN_WEIGHT`, measured on the dev styles).
    """

    name = "chain_reasoning"

    def __init__(self, judge: Judge | SharedJudge, judge_weight: float = DEFAULT_CHAIN_WEIGHT,
                 embedding_model: str | None = None):
        super().__init__(judge, judge_weight, embedding_model)

    @classmethod
    def build(cls, *, judge: Judge | SharedJudge | None, judge_weight: float = DEFAULT_CHAIN_WEIGHT,
              chain_weight: float = DEFAULT_CHAIN_WEIGHT, **kwargs):
        """The reward for a run: the run's judge and ``chain_weight`` (the run's ``judge.weight`` belongs to the
        hybrid reward and is not used here)."""
        if judge is None and chain_weight > 0:
            raise ValueError("reward 'chain_reasoning' asks an LLM judge, but none was configured (a [judge] table); "
                             "use chain_alignment for no judge")
        return cls(judge if judge is not None else SharedJudge(), chain_weight, **kwargs)

    def warm_up(self) -> str:
        said = super().warm_up()
        if self.judge_weight > 0:
            _check_likelihood(self.judge, self.name)
        return said

    def judge_part(self, thinks: list[str], refs: list) -> list[float | None]:
        return judge_recall(_check_likelihood(self.judge, self.name), thinks, refs)

    def embedding_part(self, thinks: list[str], refs: list, answers: list[str], choices: list | None) -> list[float]:
        return _alignment(thinks, refs, self.embedding_model, answers, choices)
