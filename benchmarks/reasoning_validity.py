"""Does a reasoning reward pay a complete paraphrase of the reference chain more than a corrupted chain, on chain
styles it was never tuned on? AUROC per corruption kind, dev styles (to choose defaults) and held-out styles.

    python -m benchmarks.reasoning_validity [--items 10] [--server] [--out benchmarks/results/reasoning_validity.json]

**Styles** (every item: a question, its correct answer, a reference chain, and a paraphrase with the same facts):

* dev: ``organism`` (``rl.data.tasks``, every family; paraphrased by ``benchmarks.judge_validity.paraphrase``),
  ``measured_tones`` (two tones in Hz and ms; the paraphrase says kHz and seconds, other verbs, the comparison
  clause first), ``rhythm`` (two sections' tempi in BPM; "beats per minute", "quicker");
* held-out: ``issue_tones`` (the issue's style: full sentences, measured values with units, an explicit comparison,
  tones named A and B), ``scene_events`` (which everyday sound comes first, onsets in seconds / milliseconds),
  ``loudness_db`` (a level trend over three segments in dB / decibels).

**Candidates**, every one with the correct answer in ``<answer>``, the think text in the paraphrase's words:
``paraphrase`` (the positive) and the corruptions ``shuffled`` (another order), ``swapped`` (two steps exchanged),
``wrong_facts`` (the measured values / levels of the fact steps changed, conclusion kept), ``flipped_conclusion``,
``truncated`` (cut at every step boundary: one candidate per boundary), ``one_step`` (the conclusion alone),
``extra_wrong_step`` (a false fact inserted), ``off_topic`` (the chain of an item of another style),
``padding`` (the first step, filler sentences and the first step repeated), ``verbatim_step`` (the reference's first
step copied verbatim, alone).

Every reward is called through its TRL signature ``f(prompts, completions, completion_ids, **columns)``. AUROC =
P(score(paraphrase) > score(corruption)) over all pairs of the split (ties 1/2), per kind and pooled; 95% intervals
from a bootstrap over items (500 resamples). Defaults (the weight ``w`` of ``chain_reasoning``; the alignment's
constants with ``--grid``) are chosen on the dev styles only: the largest worst-kind AUROC, then pooled, then ``w``
nearest 0.5. Also: mean score per kind (no kind may average above the
paraphrase), seconds per 100 completions of each reward with cold caches (on a sample of ``--timing`` candidates),
and (``--server N``) the judge recall through the OpenAI-compatible path against ``rl/judge/serve.py`` serving
SmolLM2 on localhost, on N held-out candidates, compared with the in-process judge.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.judge_validity import auroc, paraphrase, wrong_facts
from rl.data.tasks import FAMILIES, generate_items
from rl.judge import Judge, make_judge
from rl.rewards import chain as chain_mod
from rl.rewards.embedding import embed
from rl.rewards.registry import REWARDS

DEV_STYLES = ("organism", "measured_tones", "rhythm")
HELD_OUT_STYLES = ("issue_tones", "scene_events", "loudness_db")
KINDS = ("shuffled", "swapped", "wrong_facts", "flipped_conclusion", "truncated", "one_step", "extra_wrong_step",
         "off_topic", "padding", "verbatim_step")
FILLER = ("Let me think about this carefully.", "I will listen to the clip once more.",
          "This needs close attention to every sound.", "Taking everything I heard into account.")
W_GRID = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass
class Chain:
    """One item in one style: the reference steps, and the paraphrase and its corruptions in the paraphrase's words."""

    style: str
    item: str
    question: str
    answer: str
    reference: list[str]
    paraphrase: list[str]
    wrong: list[str]  # the paraphrase with the facts of its fact steps changed, conclusion kept
    flipped: list[str]  # the paraphrase with the conclusion flipped
    extra: str  # a false fact in the paraphrase's words
    choices: list[str]  # the answer choices (a reward column, as in the item format)


# ==================================================================================================================
# Styles
# ==================================================================================================================

_FLIP = {"first": "second", "second": "first", "yes": "no", "no": "yes", "rises": "falls", "falls": "rises",
         "gets louder": "gets softer", "gets softer": "gets louder", "the noise": "the tone", "the tone": "the noise",
         "the same": "different", "very low": "high", "low": "very high", "middle": "low", "high": "middle",
         "very high": "low", "stays the same": "rises", "keeps the same loudness": "gets louder"}


_FLIP_RE = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(_FLIP, key=len, reverse=True)) + r")\b")


def _flip_step(step: str) -> str:
    """The organism's conclusion step with its verdict turned round (first <-> second, yes <-> no, a count + 1...)."""
    flipped = _FLIP_RE.sub(lambda m: _FLIP[m.group(1)], step)
    return re.sub(r"\b(\d)\b", lambda m: str(int(m.group(1)) % 5 + 1), flipped) if flipped == step else flipped


def organism_chains(n: int, seed: int) -> list[Chain]:
    """Items of every organism family (``rl.data.tasks``), the paraphrase by ``judge_validity.paraphrase``."""
    rng = np.random.default_rng([seed, 1])
    out = []
    for it in generate_items(n, seed=seed, families=list(FAMILIES), difficulty="easy", prefix="org"):
        ref = list(it.reference_chain)
        facts_idx = [i for i, s in enumerate(ref) if s.startswith("Sound ")] or [0]
        wrong = wrong_facts(ref[:-1], rng) + ref[-1:] if len(ref) > 1 else wrong_facts(ref, rng)
        extra = wrong_facts([ref[int(rng.choice(facts_idx))]], rng)[0]
        out.append(Chain("organism", it.id, it.question, it.answer, ref, paraphrase(ref, rng),
                         paraphrase(wrong, rng), paraphrase(ref[:-1] + [_flip_step(ref[-1])], rng),
                         paraphrase([extra], rng)[0], list(it.choices)))
    return out


def _other(values: Sequence, exclude, rng: np.random.Generator):
    return values[int(rng.choice([i for i, v in enumerate(values) if v not in exclude]))]


ORD = ("first", "second", "third")


def measured_tones(rng: np.random.Generator, k: int) -> Chain:
    freqs, durs = (220, 262, 330, 440, 523, 660, 880, 1000, 1200), (150, 200, 250, 300, 400, 500, 750)
    f = [int(x) for x in rng.choice(freqs, 2, replace=False)]
    d = [int(x) for x in rng.choice(durs, 2, replace=False)]
    hi = int(np.argmax(f))

    def ref_fact(i, f, d):
        return f"Tone {i + 1} has a frequency of {f[i]} Hz and lasts {d[i]} ms."

    def para_fact(i, f, d):
        return f"The {ORD[i]} tone sits at {f[i] / 1000:g} kHz and is heard for {d[i] / 1000:g} seconds."

    def para_end(h, f):
        return (f"The {ORD[h]} tone is the higher one, since {f[h] / 1000:g} kHz is above "
                f"{f[1 - h] / 1000:g} kHz.")

    ref = [ref_fact(0, f, d), ref_fact(1, f, d), f"{f[hi]} Hz is above {f[1 - hi]} Hz, so tone {hi + 1} is higher."]
    para = [para_fact(0, f, d), para_fact(1, f, d), para_end(hi, f)]
    wf = [_other(freqs, f, rng), _other(freqs, f, rng)]
    wd = [_other(durs, d, rng), _other(durs, d, rng)]
    flipped = [*para[:2], f"The {ORD[1 - hi]} tone is the higher one, since {f[1 - hi] / 1000:g} kHz is above "
                          f"{f[hi] / 1000:g} kHz."]
    j = int(rng.integers(2))
    extra = f"The {ORD[j]} tone sits at {wf[j] / 1000:g} kHz and is heard for {wd[j] / 1000:g} seconds."
    return Chain("measured_tones", f"mt-{k}", "Which tone is higher in pitch?", f"the {ORD[hi]}", ref, para,
                 [para_fact(0, wf, wd), para_fact(1, wf, wd), para[2]], flipped, extra, ["the first", "the second"])


def rhythm(rng: np.random.Generator, k: int) -> Chain:
    tempi = (60, 72, 80, 90, 100, 110, 120, 132, 140, 160)
    t = [int(x) for x in rng.choice(tempi, 2, replace=False)]
    fast = int(np.argmax(t))

    def para_fact(i, t):
        return (f"Section {('one', 'two')[i]} moves at {t[i]} beats per minute." if i == 0 else
                f"In section two the pulse is {t[i]} beats per minute.")

    ref = [f"The first section has a tempo of {t[0]} BPM.", f"The second section has a tempo of {t[1]} BPM.",
           f"{t[fast]} BPM is faster than {t[1 - fast]} BPM.", f"So the {ORD[fast]} section is faster."]
    para = [para_fact(0, t), para_fact(1, t), f"Since {t[fast]} beats per minute exceeds {t[1 - fast]}, the pulse "
            f"of section {('one', 'two')[fast]} is quicker.", f"The {ORD[fast]} section is therefore faster."]
    wt = [_other(tempi, t, rng), _other(tempi, t, rng)]
    return Chain("rhythm", f"rh-{k}", "Which section is faster?", f"the {ORD[fast]}", ref, para,
                 [para_fact(0, wt), para_fact(1, wt), *para[2:]],
                 [*para[:3], f"The {ORD[1 - fast]} section is therefore faster."],
                 f"Section {('one', 'two')[int(rng.integers(2))]} moves at {wt[0]} beats per minute.",
                 ["the first", "the second"])


def issue_tones(rng: np.random.Generator, k: int) -> Chain:
    freqs, levels = (200, 250, 300, 400, 500, 600, 800, 1000), (50, 55, 60, 65, 70, 75, 80)
    f = [int(x) for x in rng.choice(freqs, 2, replace=False)]
    db = [int(x) for x in rng.choice(levels, 2)]
    hi = int(np.argmax(f))
    name = ("A", "B")

    def para_fact(i, f, db):
        return (f"The {ORD[i]} sound is a pure tone of {f[i] / 1000:g} kHz, played at {db[i]} decibels."
                if i == 0 else f"Then comes a {f[i] / 1000:g} kHz tone at {db[i]} decibels.")

    ref = [f"Tone A is a {f[0]} Hz sine wave played at {db[0]} dB.",
           f"Tone B is a {f[1]} Hz sine wave played at {db[1]} dB.",
           f"Comparing the two, tone {name[hi]} has the higher frequency ({f[hi]} Hz against {f[1 - hi]} Hz).",
           f"Therefore tone {name[hi]}, the {ORD[hi]} tone, is higher in pitch."]
    para = [para_fact(0, f, db), para_fact(1, f, db),
            f"Its pitch is above the other's, as {f[hi] / 1000:g} kHz exceeds {f[1 - hi] / 1000:g} kHz."
            if hi == 1 else f"The earlier tone is the higher one: {f[hi] / 1000:g} kHz exceeds "
                            f"{f[1 - hi] / 1000:g} kHz.",
            f"So the {ORD[hi]} tone has the higher pitch."]
    wf = [_other(freqs, f, rng), _other(freqs, f, rng)]
    wdb = [_other(levels, db, rng), _other(levels, db, rng)]
    return Chain("issue_tones", f"it-{k}", "Which tone is higher in pitch?", f"the {ORD[hi]}", ref, para,
                 [para_fact(0, wf, wdb), para_fact(1, wf, wdb), *para[2:]],
                 [*para[:3], f"So the {ORD[1 - hi]} tone has the higher pitch."],
                 f"The {ORD[int(rng.integers(2))]} tone is played at {wdb[0]} decibels and {wf[0]} Hz.",
                 ["the first", "the second"])


EVENTS = (("dog bark", "a dog barks", "we hear a dog barking"), ("car horn", "a car horn sounds",
          "the horn of a car is heard"), ("door slam", "a door slams", "a door is slammed shut"),
          ("glass break", "glass breaks", "the sound of breaking glass arrives"),
          ("phone ring", "a phone rings", "a telephone starts ringing"))


def scene_events(rng: np.random.Generator, k: int) -> Chain:
    a, b = (EVENTS[int(i)] for i in rng.choice(len(EVENTS), 2, replace=False))
    t = sorted(round(float(x), 1) for x in rng.choice(np.arange(0.5, 9.5, 0.1), 2, replace=False))
    gap = round(t[1] - t[0], 1)

    def para_fact(ev, s):
        return f"At {round(s * 1000)} ms {ev[2]}."

    ref = [f"{a[1][0].upper() + a[1][1:]} at {t[0]} seconds.", f"{b[1][0].upper() + b[1][1:]} at {t[1]} seconds.",
           f"{t[0]} seconds is earlier than {t[1]} seconds, so the {a[0]} comes {gap} seconds before the {b[0]}.",
           f"So the {a[0]} happens first."]
    para = [para_fact(a, t[0]), para_fact(b, t[1]),
            f"The {a[0]} precedes the {b[0]} by {round(gap * 1000)} ms, since {round(t[0] * 1000)} ms comes before "
            f"{round(t[1] * 1000)} ms.", f"The {a[0]} is therefore first."]
    wt = [round(t[0] + float(rng.choice([-0.4, 0.3, 0.6])), 1), round(t[1] + float(rng.choice([-0.3, 0.4, 0.7])), 1)]
    order = sorted([a[0], b[0]])
    return Chain("scene_events", f"se-{k}", f"Which comes first, the {order[0]} or the {order[1]}?", f"the {a[0]}",
                 ref, para, [para_fact(a, wt[0]), para_fact(b, wt[1]), *para[2:]],
                 [*para[:3], f"The {b[0]} is therefore first."], para_fact(b, max(0.1, t[0] - 0.3)),
                 [f"the {order[0]}", f"the {order[1]}"])


def loudness_db(rng: np.random.Generator, k: int) -> Chain:
    trend = ("rises", "falls")[int(rng.integers(2))]
    start = int(rng.choice([45, 50, 55, 60, 65]))
    step = int(rng.choice([5, 8, 10]))
    v = [start, start + step, start + 2 * step] if trend == "rises" else [start + 2 * step, start + step, start]
    word = {"rises": ("increases", "goes up", "louder"), "falls": ("decreases", "goes down", "softer")}[trend]
    other = {"rises": ("decreases", "goes down"), "falls": ("increases", "goes up")}[trend]

    def para_facts(v):
        return [f"The clip begins at {v[0]} decibels.", f"Halfway through it measures {v[1]} decibels.",
                f"It ends at {v[2]} decibels."]

    ref = [f"At the start the level is {v[0]} dB.", f"In the middle the level is {v[1]} dB.",
           f"At the end the level is {v[2]} dB.", f"The level goes from {v[0]} dB to {v[2]} dB, so the loudness "
                                                  f"{word[0]}."]
    para = [*para_facts(v), f"The loudness {word[1]}: it ends {abs(v[2] - v[0])} decibels {word[2]} than it began."]
    wv = [x + int(rng.choice([-7, 6, 9])) for x in v]
    return Chain("loudness_db", f"ld-{k}", "How does the loudness change over the clip?", f"it {trend}", ref, para,
                 [*para_facts(wv), para[3]], [*para[:3], f"The loudness {other[1]} over the clip."],
                 f"Just before the end it drops to {v[2] - 3 * step if trend == 'rises' else v[2] + 3 * step} "
                 "decibels.", ["it rises", "it falls", "it stays the same"])


GENERATORS: dict[str, Callable[[np.random.Generator, int], Chain]] = {
    "measured_tones": measured_tones, "rhythm": rhythm, "issue_tones": issue_tones, "scene_events": scene_events,
    "loudness_db": loudness_db}


def build_chains(n_items: int, seed: int) -> list[Chain]:
    """``n_items`` chains per style (the organism: one per family at least), deterministic by ``seed``."""
    chains = organism_chains(max(n_items, len(FAMILIES)), seed)
    for s, gen in enumerate(GENERATORS.values()):
        rng = np.random.default_rng([seed, 100 + s])
        chains += [gen(rng, k) for k in range(n_items)]
    return chains


# ==================================================================================================================
# Candidates
# ==================================================================================================================


def corruptions(c: Chain, other: Chain, rng: np.random.Generator) -> list[tuple[str, list[str]]]:
    """(kind, think steps) of the paraphrase and every corruption of chain ``c`` (``other``: an item of another
    style, for off-topic)."""
    para, n = c.paraphrase, len(c.paraphrase)
    out = [("paraphrase", para)]
    if n >= 2:
        perm = rng.permutation(n)
        while np.array_equal(perm, np.arange(n)):
            perm = rng.permutation(n)
        out.append(("shuffled", [para[i] for i in perm]))
        i, j = sorted(int(x) for x in rng.choice(n, 2, replace=False))
        out.append(("swapped", [*para[:i], para[j], *para[i + 1:j], para[i], *para[j + 1:]]))
        out += [("truncated", para[:k]) for k in range(1, n)]
    out += [("wrong_facts", c.wrong), ("flipped_conclusion", c.flipped), ("one_step", para[-1:])]
    at = int(rng.integers(1, max(n, 2)))
    out += [("extra_wrong_step", [*para[:at], c.extra, *para[at:]]), ("off_topic", other.paraphrase),
            ("padding", [para[0], *FILLER, para[0], para[0], para[0]]), ("verbatim_step", c.reference[:1])]
    return out


def build_cases(chains: list[Chain], seed: int) -> list[dict]:
    rng = np.random.default_rng([seed, 2])
    cases = []
    for c in chains:
        others = [o for o in chains if o.style != c.style and (o.style in DEV_STYLES) == (c.style in DEV_STYLES)]
        other = others[int(rng.integers(len(others)))]
        for kind, steps in corruptions(c, other, rng):
            cases.append({"style": c.style, "split": "dev" if c.style in DEV_STYLES else "held_out", "item": c.item,
                          "kind": kind, "question": c.question, "answer": c.answer, "choices": c.choices,
                          "reference": c.reference,
                          "completion": "<think>\n" + " ".join(steps) + "\n</think><answer>" + c.answer + "</answer>"})
    return cases


# ==================================================================================================================
# Scoring and statistics
# ==================================================================================================================


_JUDGES: dict[tuple, Judge] = {}


def bench_judge(**settings) -> Judge:
    """One judge per settings (``rl.judge.make_judge`` keywords) for the whole benchmark: its content cache is shared
    by every reward that asks it, as a run's ``SharedJudge`` is."""
    key = tuple(sorted((k, repr(v)) for k, v in settings.items()))
    if key not in _JUDGES:
        _JUDGES[key] = make_judge(**settings)
    return _JUDGES[key]


def judge_settings(name: str, kwargs: dict) -> dict:
    """The judge settings in a benchmark's reward keywords (``judge_*``, the old reward_kwargs spelling); the chain
    rewards default to the recall prompt."""
    settings = {k.removeprefix("judge_"): v for k, v in kwargs.items() if k.startswith("judge_")}
    if name.startswith("chain_"):
        settings.setdefault("prompt", chain_mod.RECALL_PROMPT)
    return settings


def make_reward(name: str, **kwargs):
    """The reward ``name`` with benchmark keywords: ``judge_*`` make (or reuse) its judge, ``w`` is the judge's share
    (``chain_weight`` of chain_reasoning, ``judge_weight`` of the hybrid); other keywords go to the reward."""
    entry = REWARDS[name]
    if not hasattr(entry, "build"):
        return functools.partial(entry, **kwargs)
    settings = judge_settings(name, kwargs)
    rest = {k: v for k, v in kwargs.items() if not k.startswith("judge_") and k != "w"}
    if "w" in kwargs:
        rest["chain_weight" if name == "chain_reasoning" else "judge_weight"] = kwargs["w"]
    needs_judge = kwargs.get("w", 1.0) > 0
    return entry.build(judge=bench_judge(**settings) if needs_judge else None, **rest)


def score(name: str, cases: list[dict], **kwargs) -> np.ndarray:
    """The reward ``name`` (built by :func:`make_reward`) on every case, through its TRL signature; NaN where it
    returned None."""
    columns = {"answer": [c["answer"] for c in cases], "reference_chain": [c["reference"] for c in cases],
               "choices": [c["choices"] for c in cases], "id": [c["item"] for c in cases]}
    values = make_reward(name, **kwargs)([c["question"] for c in cases], [c["completion"] for c in cases],
                                         [[]] * len(cases), **columns)
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def auroc_table(scores: np.ndarray, cases: list[dict], split: str, n_boot: int = 500,
                seed: int = 0) -> dict[str, dict[str, float]]:
    """Per kind and pooled: AUROC (paraphrase vs kind) with a 95% bootstrap interval over items, and mean scores."""
    kinds = np.array([c["kind"] for c in cases])
    items = np.array([c["item"] for c in cases])
    mask = np.array([c["split"] == split for c in cases]) & ~np.isnan(scores)  # NaN: not scored
    ids = sorted(set(items[mask]))
    by_item = {i: np.flatnonzero(mask & (items == i)) for i in ids}
    rng = np.random.default_rng(seed)
    boots = [np.concatenate([by_item[ids[j]] for j in rng.integers(len(ids), size=len(ids))]) for _ in range(n_boot)]

    def one(idx: np.ndarray, kind: str | None) -> float:
        pos = scores[idx[kinds[idx] == "paraphrase"]]
        neg = scores[idx[(kinds[idx] != "paraphrase") if kind is None else (kinds[idx] == kind)]]
        return auroc(pos, neg) if len(pos) and len(neg) else float("nan")

    full = np.flatnonzero(mask)
    out = {}
    for kind in (*KINDS, None):
        boot = np.array([one(b, kind) for b in boots])
        sel = full[kinds[full] == (kind or "paraphrase")] if kind else full[kinds[full] != "paraphrase"]
        out[kind or "pooled"] = {"auroc": round(one(full, kind), 4),
                                 "ci95": [round(float(np.nanpercentile(boot, 2.5)), 4),
                                          round(float(np.nanpercentile(boot, 97.5)), 4)],
                                 "mean_score": round(float(np.nanmean(scores[sel])), 4)}
    out["paraphrase_mean_score"] = round(float(np.nanmean(scores[full[kinds[full] == "paraphrase"]])), 4)
    return out


def worst_kind(table: dict) -> float:
    return min(table[k]["auroc"] for k in KINDS)


def markdown(results: dict, split: str) -> str:
    head = "| reward | pooled | " + " | ".join(k.replace("_", " ") for k in KINDS) + " |"
    rows = [head, "|---" * (len(KINDS) + 2) + "|"]
    for name, by_split in results.items():
        t = by_split[split]
        p = t["pooled"]
        rows.append(f"| {name} | **{p['auroc']:.2f}** [{p['ci95'][0]:.2f}, {p['ci95'][1]:.2f}] | "
                    + " | ".join(f"{t[k]['auroc']:.2f}" for k in KINDS) + " |")
    return "\n".join(rows)


# ==================================================================================================================
# Main
# ==================================================================================================================


#: The alignment's constants tried on the dev styles. Each tuple starts with the shipped value (chosen on an earlier
#: dev grid of 10 items per style); ties go to the first in grid order, so the shipped values win a tie.
ALIGNMENT_GRID = {"COVER_LO": (0.35, 0.45, 0.55), "COVER_HI": (0.75, 0.8, 0.85), "FACT_WEIGHT": (0.5, 0.3, 0.7),
                  "CONTRADICTION_FACTOR": (0.5, 0.25, 0.75)}


def alignment_grid(cases: list[dict]) -> list[dict]:
    """chain_alignment's dev AUROC (pooled, worst kind) at every combination of ``ALIGNMENT_GRID``, best first.

    The module constants are set in turn and restored; embeddings come from the sentence cache, so each combination
    costs only the alignment arithmetic.
    """
    dev = [c for c in cases if c["split"] == "dev"]
    saved = {k: getattr(chain_mod, k) for k in ALIGNMENT_GRID}
    rows = []
    try:
        for values in itertools.product(*ALIGNMENT_GRID.values()):
            setting = dict(zip(ALIGNMENT_GRID, values))
            for k, v in setting.items():
                setattr(chain_mod, k, v)
            table = auroc_table(score("chain_alignment", dev), dev, "dev", n_boot=1)
            rows.append(setting | {"pooled": table["pooled"]["auroc"], "worst_kind": worst_kind(table)})
    finally:
        for k, v in saved.items():
            setattr(chain_mod, k, v)
    return sorted(rows, key=lambda r: (-r["worst_kind"], -r["pooled"]))


def time_rewards(cases: list[dict], settings: dict[str, tuple[str, dict]]) -> dict[str, float]:
    """Seconds per 100 completions of each ``name: (reward, kwargs)`` on ``cases``, caches cold: the sentence cache
    and the judge's in-memory cache are cleared first (a cache file is read only when a judge is built)."""
    out = {}
    for label, (name, kwargs) in settings.items():
        if hasattr(REWARDS[name], "build") and kwargs.get("w", 1.0) > 0:
            bench_judge(**judge_settings(name, kwargs)).clear_cache()
        chain_mod._EMBED_CACHE.clear()
        t = time.perf_counter()
        score(name, cases, **kwargs)
        out[label] = round(100 * (time.perf_counter() - t) / len(cases), 3)
        print(f"{label}: {out[label]:.2f} s per 100 completions", file=sys.stderr)
    return out


def server_scores(cases: list[dict], w: float) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """chain_judge and chain_reasoning through the OpenAI-compatible path (``/v1/completions`` with echoed logprobs):
    ``rl/judge/serve.py`` serving SmolLM2 on localhost, the same prompts as in process (its chat template)."""
    from rl.judge.packaged import load_smollm2
    from rl.judge.serve import ModelServer

    model, tok = load_smollm2()
    server = ModelServer(model, tok, name="smollm2")
    url = server.start()
    try:
        kw = {"judge_backend": "openai", "judge_base_url": url, "judge_model": "smollm2",
              "judge_endpoint": "completions", "judge_prompt": "recall-likelihood", "judge_tokenizer": tok,
              "judge_max_workers": 1, "judge_timeout": 300.0}
        t = time.perf_counter()
        judge = score("chain_judge", cases, **kw)
        seconds = round(100 * (time.perf_counter() - t) / len(cases), 3)
        return ({"chain_judge through a local OpenAI-compatible server": judge,
                 f"chain_reasoning (w = {w:g}) through the server": score("chain_reasoning", cases, w=w, **kw)},
                {"chain_judge through the server (cold)": seconds})
    finally:
        server.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10, help="items per style (the organism: at least one per family)")
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--boot", type=int, default=500)
    ap.add_argument("--no-judge", action="store_true", help="embedding scorers only (fast)")
    ap.add_argument("--grid", action="store_true", help="also chain_alignment's constants on a grid, dev styles")
    ap.add_argument("--server", type=int, default=0, help="also the judge recall through a local OpenAI-compatible "
                                                          "server on this many held-out candidates")
    ap.add_argument("--baseline-split", choices=("all", "held_out"), default="all",
                    help="where the previous judge rewards (llm_judge, hybrid_reasoning) are scored")
    ap.add_argument("--out", default="benchmarks/results/reasoning_validity.json")
    ap.add_argument("--raw", help="also write every candidate's scores to this JSON file")
    ap.add_argument("--judge-cache", help="a folder for the judges' content caches (a re-run reads them)")
    ap.add_argument("--timing", type=int, default=100, help="candidates timed per MiniLM reward, caches cold")
    ap.add_argument("--judge-items", type=int, default=2, help="items per style the judge rewards score")
    return ap.parse_args(argv)


def spread(seq: Sequence, n: int) -> list:
    """At most ``n`` elements of ``seq``, taken at an even stride from its start."""
    return seq[:: max(1, len(seq) // n)][:n]


#: The embedding rewards timed with cold caches (label: (reward, keywords)).
TIMED = {"embedding cosine": ("hybrid_reasoning", {"w": 0.0}), "chain_alignment": ("chain_alignment", {})}
#: The in-process judge of the judge rewards.
LOCAL_JUDGE = {"judge_backend": "local", "judge_model": "smollm2", "judge_batch_size": 16}


def judge_kwargs(prompt: str, cache_dir: str | None) -> dict:
    """The reward keywords of the in-process judge with ``prompt``, and its cache file in ``cache_dir`` if given."""
    cache = {"judge_cache_path": str(Path(cache_dir) / f"{prompt}.json")} if cache_dir else {}
    return {**LOCAL_JUDGE, "judge_prompt": prompt, **cache}


def embedding_scorers(cases: list[dict]) -> dict[str, np.ndarray]:
    """The scores of the embedding scorers by table name: MiniLM cosine, chain_alignment and each of its parts."""
    embed(["warm-up"])  # the embedder's load is not a cost per completion
    raw = {"embedding cosine (hybrid_reasoning, w = 0)": score("hybrid_reasoning", cases, w=0.0),
           "chain_alignment": score("chain_alignment", cases)}
    components = chain_mod.chain_scores([c["completion"].split("</think>")[0].removeprefix("<think>\n")
                                         for c in cases], [c["reference"] for c in cases],
                                        answers=[c["answer"] for c in cases], choices=[c["choices"] for c in cases])
    for part in ("coverage", "precision", "order", "facts", "agreement"):
        raw[f"chain part: {part}"] = np.array([getattr(s, part) for s in components])
    return raw


def judged_indices(cases: list[dict], per_style: int) -> list[int]:
    """The indices of the cases of the first ``per_style`` items of every style: the ones the judge rewards score."""
    order: dict[str, dict[str, int]] = {}
    return [i for i, c in enumerate(cases)
            if order.setdefault(c["style"], {}).setdefault(c["item"], len(order[c["style"]])) < per_style]


def judge_rewards(cases: list[dict], judged_idx: list[int], baseline_split: str,
                  cache_dir: str | None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The judge rewards' scores by table name (NaN where not scored) and the seconds per 100 completions of their
    first pass, cold cache: chain_judge on the judged cases, the previous judge rewards on those of ``baseline_split``.
    """
    # a judgement costs ~0.5 s of a free core; the first pass with an empty cache is the cost per completion GRPO pays
    base = [i for i in judged_idx if baseline_split == "all" or cases[i]["split"] == "held_out"]
    raw, timing = {}, {}
    for label, name, idx, kw, prompt in (
            ("chain_judge", "chain_judge", judged_idx, {}, "recall-likelihood"),
            ("llm_judge (restate-likelihood)", "llm_judge", base, {}, "restate-likelihood"),
            ("hybrid_reasoning (w = 0.5, previous default)", "hybrid_reasoning", base, {"w": 0.5},
             "restate-likelihood")):
        raw[label] = np.full(len(cases), np.nan)
        t = time.perf_counter()
        raw[label][idx] = score(name, [cases[i] for i in idx], **kw, **judge_kwargs(prompt, cache_dir))
        if name != "hybrid_reasoning":  # the hybrid reads the llm_judge's cache: its cost is that plus MiniLM
            timing[f"{name} (first pass, cold cache)"] = round(100 * (time.perf_counter() - t) / len(idx), 3)
    return raw, timing


def choose_w(judge: np.ndarray, alignment: np.ndarray, cases: list[dict]) -> tuple[dict[float, dict], float]:
    """The dev AUROC table of ``w * judge + (1 - w) * alignment`` at every w of ``W_GRID``, and the chosen w."""
    dev = {w: auroc_table(w * judge + (1 - w) * alignment, cases, "dev", 100) for w in W_GRID}
    # ties go to the w nearest the paper's even mix (as in benchmarks/judge_validity.py)
    best_w = max(W_GRID, key=lambda w: (worst_kind(dev[w]), dev[w]["pooled"]["auroc"], -abs(w - 0.5)))
    return dev, best_w


def chain_reasoning_scores(cases: list[dict], raw: dict[str, np.ndarray], judged_idx: list[int], w: float,
                           cache_dir: str | None) -> dict[str, np.ndarray]:
    """By table name: chain_reasoning at ``w`` on the judged cases (checked to be ``w * chain_judge + (1 - w) *
    chain_alignment``), and the embedding scorers on the judged cases only."""
    label = f"**chain_reasoning (w = {w:g}, default)**"
    out = {label: np.full(len(cases), np.nan)}
    out[label][judged_idx] = score("chain_reasoning", [cases[i] for i in judged_idx], w=w,
                                   **judge_kwargs("recall-likelihood", cache_dir))
    combined = w * raw["chain_judge"] + (1 - w) * raw["chain_alignment"]
    assert np.allclose(out[label][judged_idx], combined[judged_idx], atol=1e-6), \
        "chain_reasoning is not w * judge + (1 - w) * alignment"
    for name in ("chain_alignment", "embedding cosine (hybrid_reasoning, w = 0)"):  # on the judged items too
        out[f"{name}, judged items only"] = np.where(np.isnan(raw["chain_judge"]), np.nan, raw[name])
    return out


def server_path(cases: list[dict], local_judge: np.ndarray, judged_idx: list[int], w: float,
                n: int) -> tuple[dict, dict[str, float]]:
    """The server path against the in-process judge on ``n`` held-out judged candidates (differences, failures,
    pooled AUROCs), and its seconds per 100 completions."""
    held = spread([i for i in judged_idx if cases[i]["split"] == "held_out"], n)
    sub = [cases[i] for i in held]
    server_raw, server_timing = server_scores(sub, w)
    local = local_judge[held]
    remote = server_raw["chain_judge through a local OpenAI-compatible server"]
    server = {"candidates": len(held), "max_abs_difference_to_in_process": round(float(np.nanmax(np.abs(
        remote - local))), 4), "failures": int(np.isnan(remote).sum()),
        "pooled_auroc_on_these": {k: auroc_table(v, sub, "held_out", 1)["pooled"]["auroc"]
                                  for k, v in (*server_raw.items(), ("chain_judge in process", local))}}
    return server, server_timing


def auroc_results(raw: dict[str, np.ndarray], cases: list[dict], n_boot: int) -> dict[str, dict]:
    """Every scorer's AUROC table on each split (dev, held_out) where it scored at least one case."""
    return {name: {split: auroc_table(v, cases, split, n_boot) for split in ("dev", "held_out")
                   if not np.isnan(v[[c["split"] == split for c in cases]]).all()}
            for name, v in raw.items()}


def build_output(args: argparse.Namespace, cases: list[dict], results: dict, dev: dict, best_w: float | None,
                 grid: list[dict], server: dict, timing: dict[str, float], t_start: float) -> dict:
    """The benchmark's JSON: settings, the chosen w and its dev grid, AUROC tables, the server path, timing."""
    return {
        "what": "AUROC of a paraphrase of the reference chain vs corrupted chains (every one with the correct "
                "answer), scored through each reward's TRL signature; 95% bootstrap intervals over items",
        "styles": {"dev": DEV_STYLES, "held_out": HELD_OUT_STYLES}, "kinds": KINDS, "candidates": len(cases),
        "items_per_style": args.items, "seed": args.seed,
        "chosen": {"reward": "chain_reasoning", "w": best_w,
                   "rule": "largest worst-kind dev AUROC, then pooled dev, then nearest 0.5",
                   "dev_grid": {f"w={w:g}": {"pooled": t["pooled"]["auroc"], "worst_kind": worst_kind(t)}
                                for w, t in dev.items()}},
        "alignment_grid_dev": grid[:10], "server_path": server,
        "load_average_at_end": os.getloadavg(),
        "aurocs": results, "seconds_per_100_completions_cold_cache": timing, "timed_candidates": args.timing,
        "threads": args.threads,
        "platform": platform.platform(), "total_seconds": round(time.time() - t_start, 1),
        "examples": [{k: c[k] for k in ("style", "kind", "completion")} for c in cases[:14]],
    }


def print_report(results: dict, timing: dict[str, float], threads: int, path: Path) -> None:
    """Prints the AUROC tables of the dev and the held-out styles and the seconds per 100 completions."""
    for split in ("dev", "held_out"):
        print(f"\n### {split} styles\n")
        print(markdown({k: v for k, v in results.items() if split in v}, split))
    print(f"\nseconds per 100 completions (cold caches, {threads} thread): {timing}\nwritten to {path}")


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark, writes its JSON to ``--out`` and prints the report; returns the JSON's content."""
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t_start = time.time()
    cases = build_cases(build_chains(args.items, args.seed), args.seed)
    print(f"{len(cases)} candidates", file=sys.stderr)
    raw = embedding_scorers(cases)
    grid = alignment_grid(cases) if args.grid else []
    if grid:
        print("alignment grid (dev), best 5:", grid[:5], file=sys.stderr)
    timing = time_rewards(spread(cases, args.timing), TIMED)
    dev, best_w, judged_idx = {}, None, []
    if not args.no_judge:
        judged_idx = judged_indices(cases, args.judge_items)
        judge_raw, judge_timing = judge_rewards(cases, judged_idx, args.baseline_split, args.judge_cache)
        raw |= judge_raw
        timing |= judge_timing
        dev, best_w = choose_w(raw["chain_judge"], raw["chain_alignment"], cases)
        raw |= chain_reasoning_scores(cases, raw, judged_idx, best_w, args.judge_cache)
    server: dict = {}
    if args.server and best_w is not None:
        server, server_timing = server_path(cases, raw["chain_judge"], judged_idx, best_w, args.server)
        timing |= server_timing
    if args.raw:
        Path(args.raw).write_text(json.dumps({"cases": cases, "scores": {k: v.tolist() for k, v in raw.items()}}))
    results = auroc_results(raw, cases, args.boot)
    out = build_output(args, cases, results, dev, best_w, grid, server, timing, t_start)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print_report(results, timing, args.threads, path)
    return out


if __name__ == "__main__":
    main()
