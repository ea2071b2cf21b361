"""Synthetic audio reasoning tasks: clips of tones, beeps and noise whose pitch, count, loudness, duration and order
carry the answer, each with a programmatic reference reasoning chain.

Every clip is a short sequence of *events*. An event has a kind (``tone`` or ``noise``), a pitch level, a duration
level and a loudness level, each one of a few named categories. The generator samples the levels, renders them to
audio at 16 kHz with numpy, and derives the question, the answer and the reference chain from the levels, so the
chain's facts are true of the clip by construction.

``difficulty`` in [0, 1] squeezes the categories together (closer pitches, closer durations, closer loudness), lowers
the signal-to-noise ratio and shrinks the gaps between events until they overlap: at 1 the items are acoustically
hard boundary cases, at 0 they are easy.

Examples
--------
>>> from rl.data.tasks import generate_items
>>> items = generate_items(4, seed=0, families=["highest_longest"], difficulty="easy")
>>> items[0].question
'Is the highest tone also the longest?'
>>> len(items[0].audio) / 16_000
2.0
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rl.data.items import SAMPLE_RATE, Item

CLIP_SECONDS = 2.0

PITCH_NAMES = ("very low", "low", "middle", "high", "very high")
DURATION_NAMES = ("short", "medium", "long")
LOUDNESS_NAMES = ("quiet", "medium-loud", "loud")
#: Amplitude of the loudest level in a calibrated clip (``render(calibrated=True)``): a loud tone peaks at 0.33 and
#: two loud noise bursts that overlap stay within [-1, 1] nearly always (the rest is clipped).
CALIBRATED_GAIN = 0.25
#: Power of a loud tone before CALIBRATED_GAIN (sin + 0.3 sin at twice the pitch): the calibrated noise's reference.
LOUD_TONE_POWER = (1.0 + 0.3**2) / 2

#: Difficulty bands: a named difficulty samples ``d`` uniformly in its band.
DIFFICULTY_BANDS = {"easy": (0.0, 0.33), "medium": (0.33, 0.67), "hard": (0.67, 1.0)}


@dataclass(frozen=True)
class Event:
    """One sound in a clip, as categorical levels (the facts the reference chain states)."""

    kind: str  # "tone" or "noise"
    pitch: int  # index into PITCH_NAMES (ignored for noise)
    duration: int  # index into DURATION_NAMES
    loudness: int  # index into LOUDNESS_NAMES

    def describe(self, number: int) -> str:
        """The perception sentence for this event, e.g. ``'Sound 2: a high tone, long, loud.'``."""
        what = "noise" if self.kind == "noise" else f"a {PITCH_NAMES[self.pitch]} tone"
        return f"Sound {number}: {what}, {DURATION_NAMES[self.duration]}, {LOUDNESS_NAMES[self.loudness]}."


@dataclass(frozen=True)
class Acoustics:
    """Physical values of the categories at one difficulty ``d`` (0 easy .. 1 hard)."""

    d: float

    @property
    def pitch_step_octaves(self) -> float:
        # 0.5 octave between neighbouring pitch levels when easy, 0.1 (1.2 semitones) when hard.
        return 0.5 - 0.4 * self.d

    def pitch_hz(self, level: int) -> float:
        return 440.0 * 2.0 ** ((level - 2) * self.pitch_step_octaves)

    def duration_s(self, level: int) -> float:
        easy, hard = (0.10, 0.25, 0.50), (0.20, 0.26, 0.34)
        return easy[level] + self.d * (hard[level] - easy[level])

    def gain(self, level: int) -> float:
        easy, hard = (-20.0, -10.0, 0.0), (-5.0, -2.5, 0.0)  # dB relative to the loudest level
        return 10.0 ** ((easy[level] + self.d * (hard[level] - easy[level])) / 20.0)

    @property
    def snr_db(self) -> float:
        return 30.0 - 30.0 * self.d

    @property
    def gap_s(self) -> float:
        # Silence between events: 0.12 s when easy; at d=1 events overlap by up to 0.03 s.
        return 0.12 - 0.15 * self.d


def render(events: Sequence[Event], d: float, rng: np.random.Generator, *,
           calibrated: bool = False) -> tuple[np.ndarray, list[dict]]:
    """Render events one after another into a clip.

    Parameters
    ----------
    events : the sounds, in order.
    d : difficulty in [0, 1].
    rng : source of jitter, onset offset and background noise.
    calibrated : one fixed gain for every clip (``CALIBRATED_GAIN``) and background noise set against a loud tone,
        so a loudness level sounds the same in every clip. False (every organism up to v13): the clip is scaled to
        peak 0.9 and its noise set against the clip's own power, so a sound's level is heard only relative to the
        clip's other sounds: reading each tone's RMS with its true boundaries names its level right in at most
        0.67-0.71 of tones at every difficulty (``benchmarks/organism_perception.py --oracle``; calibrated: 0.99
        easy, 0.98 medium, 0.71 hard, where levels lie 2.5 dB apart).

    Returns
    -------
    audio : shape (CLIP_SECONDS * SAMPLE_RATE,), float32, peak 0.9 (calibrated: at most 1).
    timeline : one dict per event with ``onset_s``, ``duration_s``, ``pitch_hz`` (None for noise) and ``gain``.
    """
    ac = Acoustics(d)
    n = int(CLIP_SECONDS * SAMPLE_RATE)
    clip = np.zeros(n, dtype=np.float64)
    durations = [ac.duration_s(e.duration) for e in events]
    gaps = [max(ac.gap_s + rng.uniform(-0.02, 0.02), -0.03) for _ in events[1:]]
    total = sum(durations) + sum(gaps)
    t = rng.uniform(0.05, max(0.05, CLIP_SECONDS - total - 0.05))
    timeline = []
    for i, (ev, dur) in enumerate(zip(events, durations)):
        start, length = int(t * SAMPLE_RATE), int(dur * SAMPLE_RATE)
        length = min(length, n - start)
        time = np.arange(length) / SAMPLE_RATE
        if ev.kind == "noise":
            wave, hz = rng.standard_normal(length) * 0.5, None
        else:
            # Jitter up to a fifth of a pitch step, so a level is a band and close levels nearly touch when hard.
            hz = ac.pitch_hz(ev.pitch) * 2.0 ** (rng.uniform(-0.2, 0.2) * ac.pitch_step_octaves)
            wave = np.sin(2 * np.pi * hz * time) + 0.3 * np.sin(4 * np.pi * hz * time)
        ramp = min(int(0.01 * SAMPLE_RATE), length // 2)  # 10 ms fades: no clicks that would leak broadband energy
        envelope = np.ones(length)
        envelope[:ramp] = envelope[length - ramp :][::-1] = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        clip[start : start + length] += ac.gain(ev.loudness) * envelope * wave
        timeline.append({"onset_s": round(t, 3), "duration_s": round(dur, 3),
                         "pitch_hz": None if hz is None else round(hz, 1), "gain": round(ac.gain(ev.loudness), 4)})
        t += dur + (gaps[i] if i < len(gaps) else 0.0)
    reference_power = LOUD_TONE_POWER if calibrated else np.mean(clip**2)
    clip += rng.standard_normal(n) * np.sqrt(reference_power / 10.0 ** (ac.snr_db / 10.0))
    if calibrated:
        clip = np.clip(clip * CALIBRATED_GAIN, -1.0, 1.0)
    else:
        clip *= 0.9 / max(np.abs(clip).max(), 1e-9)
    return clip.astype(np.float32), timeline


# --- families ---------------------------------------------------------------------------------------------------
# Each family samples events and returns (events, question, choices, answer, inference steps). The reference chain
# is the perception facts (one sentence per event) followed by the inference steps. Inference steps are explicit
# statements about the facts ("Sound 2 is higher than Sound 1."), so a think text can be checked for them.

FamilyOutput = tuple[list[Event], str, list[str], str, list[str]]
ORDINALS = ("first", "second", "third", "fourth", "fifth")


def _distinct(rng: np.random.Generator, n_levels: int, k: int) -> list[int]:
    return [int(x) for x in rng.choice(n_levels, size=k, replace=False)]


def _unique_max(rng: np.random.Generator, n_levels: int, k: int) -> list[int]:
    """``k`` levels below ``n_levels`` with exactly one maximum (the others may repeat): "the loudest" is defined."""
    top = int(rng.integers(1, n_levels))
    levels = [int(x) for x in rng.integers(0, top, size=k)]
    levels[int(rng.integers(k))] = top
    return levels


def _tone(rng: np.random.Generator, pitch=None, duration=None, loudness=None) -> Event:
    return Event("tone", int(rng.integers(5)) if pitch is None else pitch,
                 int(rng.integers(3)) if duration is None else duration,
                 int(rng.integers(3)) if loudness is None else loudness)


def comparisons(winner: int, n: int, word: str) -> list[str]:
    """The inference steps that single out sound ``winner`` (0-based) among ``n``: one statement per other sound,
    e.g. ``'Sound 3 is higher than Sound 1.'``."""
    return [f"Sound {winner + 1} is {word} than Sound {i + 1}." for i in range(n) if i != winner]


def pitch_compare(rng: np.random.Generator) -> FamilyOutput:
    p = _distinct(rng, 5, 2)
    events = [_tone(rng, pitch=p[0]), _tone(rng, pitch=p[1])]
    hi = int(np.argmax(p))
    steps = comparisons(hi, 2, "higher") + [f"So the {ORDINALS[hi]} tone is higher."]
    return events, "Which tone is higher in pitch?", ["the first", "the second"], f"the {ORDINALS[hi]}", steps


def duration_compare(rng: np.random.Generator) -> FamilyOutput:
    dur = _distinct(rng, 3, 2)
    events = [_tone(rng, duration=dur[0]), _tone(rng, duration=dur[1])]
    lo = int(np.argmax(dur))
    steps = comparisons(lo, 2, "longer") + [f"So the {ORDINALS[lo]} sound lasts longer."]
    return events, "Which sound lasts longer?", ["the first", "the second"], f"the {ORDINALS[lo]}", steps


def count_events(rng: np.random.Generator) -> FamilyOutput:
    n = int(rng.integers(1, 6))
    events = [_tone(rng, duration=0) for _ in range(n)]
    steps = [f"There are {n} separate sounds, so the count is {n}."]
    return events, "How many beeps do you hear?", ["1", "2", "3", "4", "5"], str(n), steps


def loudness_trend(rng: np.random.Generator) -> FamilyOutput:
    trend = ("rises", "falls", "stays the same")[int(rng.integers(3))]
    levels = {"rises": [0, 1, 2], "falls": [2, 1, 0]}.get(trend, [int(rng.integers(3))] * 3)
    pitch = int(rng.integers(5))
    events = [_tone(rng, pitch=pitch, duration=1, loudness=v) for v in levels]
    relation = {"rises": "louder than", "falls": "softer than", "stays the same": "as loud as"}[trend]
    steps = [f"Sound {i + 2} is {relation} Sound {i + 1}." for i in range(2)] + [f"So the loudness {trend}."]
    choices = ["it rises", "it falls", "it stays the same"]
    return events, "How does the loudness change over the clip?", choices, f"it {trend}", steps


def order_events(rng: np.random.Generator) -> FamilyOutput:
    noise_first = bool(rng.integers(2))
    tone, noise = _tone(rng), Event("noise", 0, int(rng.integers(3)), int(rng.integers(3)))
    events = [noise, tone] if noise_first else [tone, noise]
    first = "the noise" if noise_first else "the tone"
    steps = [f"Sound 1 is {'noise' if noise_first else 'a tone'}, so {first} comes first."]
    return events, "Which comes first, the tone or the noise?", ["the tone", "the noise"], first, steps


def highest_longest(rng: np.random.Generator) -> FamilyOutput:
    """Three or four tones; two attributes (pitch and duration) of every sound are needed to answer."""
    n = int(rng.integers(3, 5))
    p, dur = _distinct(rng, 5, n), _unique_max(rng, 3, n)
    j, hi = int(np.argmax(dur)), int(np.argmax(p))
    # Balance yes/no: forcing "yes" with probability q gives q + (1 - q) / n = 1/2.
    if rng.random() < (n / 2 - 1) / (n - 1):
        p[j], p[hi] = p[hi], p[j]
    events = [_tone(rng, pitch=a, duration=b) for a, b in zip(p, dur)]
    hi, lo = int(np.argmax(p)), int(np.argmax(dur))
    same = hi == lo
    steps = (comparisons(hi, n, "higher") + [f"The highest tone is Sound {hi + 1}."]
             + comparisons(lo, n, "longer") + [f"The longest sound is Sound {lo + 1}."]
             + ["They are the same sound, so yes." if same else "They are different sounds, so no."])
    return events, "Is the highest tone also the longest?", ["yes", "no"], "yes" if same else "no", steps


def pitch_of_loudest(rng: np.random.Generator) -> FamilyOutput:
    """Three or four tones; the loudness of every sound, then the pitch of one, are needed to answer."""
    n = int(rng.integers(3, 5))
    p, loud = _distinct(rng, 5, n), _unique_max(rng, 3, n)
    # Four long sounds would not fit in the clip: at most medium when there are four.
    events = [_tone(rng, pitch=a, loudness=b, duration=int(rng.integers(6 - n))) for a, b in zip(p, loud)]
    j = int(np.argmax(loud))
    steps = comparisons(j, n, "louder") + [f"The loudest sound is Sound {j + 1}.",
                                            f"Sound {j + 1} is a {PITCH_NAMES[p[j]]} tone.",
                                            f"So the loudest sound is {PITCH_NAMES[p[j]]}."]
    return events, "What is the pitch of the loudest sound?", list(PITCH_NAMES), PITCH_NAMES[p[j]], steps


#: name -> (generator, needs several steps)
FAMILIES: dict[str, tuple[Callable[[np.random.Generator], FamilyOutput], bool]] = {
    "pitch_compare": (pitch_compare, False),
    "duration_compare": (duration_compare, False),
    "count_events": (count_events, False),
    "loudness_trend": (loudness_trend, False),
    "order_events": (order_events, False),
    "highest_longest": (highest_longest, True),
    "pitch_of_loudest": (pitch_of_loudest, True),
}
MULTI_STEP = tuple(name for name, (_, multi) in FAMILIES.items() if multi)


#: attribute -> (level names, comparative, superlative)
ATTRIBUTES = {"pitch": (PITCH_NAMES, "higher", "highest"), "duration": (DURATION_NAMES, "longer", "longest"),
              "loudness": (LOUDNESS_NAMES, "louder", "loudest")}


def _skill_events(rng: np.random.Generator, attr: str, n: int, levels: list[int]) -> list[Event]:
    """``n`` tones whose ``attr`` takes ``levels``, the other attributes random (four sounds at most medium: the clip
    holds them)."""
    events = []
    for level in levels:
        dur = int(rng.integers(6 - n))
        events.append(_tone(rng, pitch=level if attr == "pitch" else None,
                            duration=level if attr == "duration" else dur,
                            loudness=level if attr == "loudness" else None))
    return events


def attribute_of_sound(rng: np.random.Generator) -> FamilyOutput:
    """Read one attribute of one numbered sound among three or four: the look-up both multi-step families need."""
    n, attr = int(rng.integers(3, 5)), ("pitch", "duration", "loudness")[int(rng.integers(3))]
    names = ATTRIBUTES[attr][0]
    top = len(names) if attr != "duration" else 6 - n
    events = _skill_events(rng, attr, n, [int(x) for x in rng.integers(0, top, size=n)])
    k = int(rng.integers(n))
    word = names[getattr(events[k], attr)]
    step = f"Sound {k + 1} is a {word} tone." if attr == "pitch" else f"Sound {k + 1} is {word}."
    return events, f"What is the {attr} of Sound {k + 1}?", list(names), word, [step]


_SOUND_NUMBER = re.compile(r"Sound \d+")


def unnamed_lookup(item: Item) -> Item:
    """An ``attribute_of_sound`` item whose question names no sound ("What is the pitch of a sound?"): only its
    think text says which ("Sound 3 is a low tone."), as inside a multi-step chain, where the sound to read is the
    one the chain's previous step selected. Trained with the question naming it, the look-up reads the question
    (see ``BaseTrainConfig.lookup_unnamed``)."""
    if item.family != "attribute_of_sound":
        raise ValueError(f"unnamed_lookup takes an attribute_of_sound item, got a {item.family} item")
    return dataclasses.replace(item, question=_SOUND_NUMBER.sub("a sound", item.question))


def sound_with_most(rng: np.random.Generator) -> FamilyOutput:
    """Which of three or four sounds is the highest, longest or loudest: the other half of the multi-step families."""
    n, attr = int(rng.integers(3, 5)), ("pitch", "duration", "loudness")[int(rng.integers(3))]
    _, more, most = ATTRIBUTES[attr]
    levels = _distinct(rng, 5, n) if attr == "pitch" else _unique_max(rng, 3 if attr == "loudness" else 6 - n, n)
    events = _skill_events(rng, attr, n, levels)
    j = int(np.argmax(levels))
    steps = comparisons(j, n, more) + [f"The {most} {'tone' if attr == 'pitch' else 'sound'} is Sound {j + 1}."]
    return events, f"Which sound is the {most}?", [f"Sound {i + 1}" for i in range(n)], f"Sound {j + 1}", steps


#: The multi-step families' sub-skills, for base training only (``BaseTrainConfig.text_skills``): never in the
#: held-out set, the demo or RL. name -> generator.
SKILLS: dict[str, Callable[[np.random.Generator], FamilyOutput]] = {
    "attribute_of_sound": attribute_of_sound, "sound_with_most": sound_with_most}


def describe(events: Sequence[Event]) -> str:
    """The perception text of a clip: one sentence per event, in order."""
    return " ".join(e.describe(i + 1) for i, e in enumerate(events))


def make_item(family: str, difficulty: str | float, rng: np.random.Generator, item_id: str, *,
              calibrated: bool = False) -> Item:
    """Sample one item of ``family`` at ``difficulty`` (a band name or a number in [0, 1]); ``calibrated``: see
    :func:`render` (kept in ``meta["calibrated"]``)."""
    if family not in FAMILIES and family not in SKILLS:
        raise ValueError(f"unknown task family {family!r}; choose from {sorted(FAMILIES)} (or {sorted(SKILLS)})")
    if isinstance(difficulty, str):
        if difficulty not in DIFFICULTY_BANDS:
            raise ValueError(f"unknown difficulty {difficulty!r}; use one of {list(DIFFICULTY_BANDS)} or a number")
        d, name = float(rng.uniform(*DIFFICULTY_BANDS[difficulty])), difficulty
    else:
        if not 0.0 <= difficulty <= 1.0:
            raise ValueError(f"difficulty must lie in [0, 1], got {difficulty}")
        d = float(difficulty)
        name = next(k for k, (lo, hi) in DIFFICULTY_BANDS.items() if d < hi or k == "hard")
    events, question, choices, answer, steps = (FAMILIES[family][0] if family in FAMILIES else SKILLS[family])(rng)
    audio, timeline = render(events, d, rng, calibrated=calibrated)
    facts = [e.describe(i + 1) for i, e in enumerate(events)]
    return Item(id=item_id, question=question, choices=choices, answer=answer, audio=audio,
                reference_chain=facts + steps, family=family, difficulty=name,
                meta={"d": round(d, 4), "description": describe(events), "events": timeline,
                      "levels": [[e.kind, e.pitch, e.duration, e.loudness] for e in events],
                      "calibrated": calibrated})


def generate_items(n: int, *, seed: int, families: Sequence[str] | None = None,
                   difficulty: str | float | Sequence[str] = ("easy", "medium", "hard"),
                   prefix: str = "syn", calibrated: bool = False) -> list[Item]:
    """Generate ``n`` items cycling through ``families`` and difficulties, deterministic by ``seed``.

    Parameters
    ----------
    n : number of items.
    seed : the same seed gives byte-identical audio and text.
    families : task families (default: all of ``FAMILIES``).
    difficulty : a band name, a number in [0, 1], or a sequence of band names cycled through.
    prefix : item ids are ``f"{prefix}-{seed}-{i:06d}"``.
    calibrated : every clip at one fixed gain, so loudness levels are heard absolutely (see :func:`render`).

    Returns
    -------
    list of Item with audio of shape (32000,) float32 at 16 kHz.
    """
    families = list(families or FAMILIES)
    levels = [difficulty] if isinstance(difficulty, (str, float, int)) else list(difficulty)
    items = []
    for i in range(n):
        # One generator per item, keyed by (seed, i): item i does not depend on n.
        rng = np.random.default_rng([seed, i])
        items.append(make_item(families[i % len(families)], levels[(i // len(families)) % len(levels)], rng,
                               f"{prefix}-{seed}-{i:06d}", calibrated=calibrated))
    return items


def heldout_set(n_per_cell: int, seed: int, *, prefix: str = "heldout", families: Sequence[str] | None = None,
                calibrated: bool = False) -> list[Item]:
    """``n_per_cell`` items per family x difficulty band, band after band, each band from its own seed (``seed``,
    ``seed + 1``, ...): ids ``f"{prefix}-{band}-{seed + b}-{i:06d}"``.

    Items are keyed by (seed, index), so one seed for every band would give each band the same sounds and question at
    another difficulty: copies whose outcomes move together, which intervals that count them as independent items
    make too narrow. A second set that must not share items starts at ``seed + len(DIFFICULTY_BANDS)``.

    Examples
    --------
    >>> items = heldout_set(1, seed=7)
    >>> len(items), items[0].id, items[-1].id
    (21, 'heldout-easy-7-000000', 'heldout-hard-9-000006')
    """
    families = list(families or FAMILIES)
    items = []
    for b, band in enumerate(DIFFICULTY_BANDS):
        items += generate_items(n_per_cell * len(families), seed=seed + b, families=families, difficulty=band,
                                prefix=f"{prefix}-{band}", calibrated=calibrated)
    return items
