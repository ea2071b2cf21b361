"""The one item format for audio multiple-choice reasoning items, with its JSONL loader and writer.

Every dataset in the project -- the synthetic "organism" tasks and user data in AVQA / MMAU / MMAR
style -- goes through :class:`Item`, :func:`load_items` and :func:`write_items`, so that training,
evaluation and probing code never has to know where an item came from.

File format: one JSON object per line; blank lines and lines starting with ``//`` are skipped::

    {"id": "pitch-00001", "audio": "audio/pitch-00001.wav", "question": "Which tone is higher?",
     "choices": ["the first", "the second"], "answer": "the second",
     "reference_chain": ["Tone 1 is low (220 Hz).", "Tone 2 is high (660 Hz).", "So the second is higher."],
     "family": "pitch_compare", "difficulty": "easy", "meta": {"f1_hz": 220, "f2_hz": 660}}

``audio`` is a path (relative paths resolve against the JSONL file's folder) or an inline object
``{"array": [floats...], "sampling_rate": 16000}``. See :func:`iter_items` for the accepted aliases.

Examples
--------
>>> import tempfile, numpy as np
>>> from pathlib import Path
>>> tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(1600) / SAMPLE_RATE)).astype(np.float32)
>>> item = Item(id="demo-1", question="Is there a tone?", choices=["yes", "no"], answer="yes", audio=tone)
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = write_items([item], Path(tmp) / "demo.jsonl")
...     [back] = load_items(path)
>>> back.answer_index, back.duration_s
(0, 0.1)
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

__all__ = [
    "to_hf_dataset",
    "SAMPLE_RATE",
    "Item",
    "ItemFormatError",
    "iter_items",
    "load_audio",
    "load_items",
    "write_items",
]

if TYPE_CHECKING:
    import datasets

SAMPLE_RATE = 16_000  # Hz; every audio array in an Item is mono float32 at this rate

# Aliases used by public datasets, in priority order (the first key present wins).
_AUDIO_KEYS = ("audio", "audio_path", "wav", "audio_id")
_QUESTION_KEYS = ("question", "question_text")
_CHOICE_KEYS = ("choices", "options", "choices_list", "multi_choice")
_CHAIN_KEYS = ("reference_chain", "reasoning", "reference", "cot")
_CORE_KEYS = ("id", "answer", "family", "difficulty", "meta")

_LETTER_RE = re.compile(r"^\(?([A-Z])[).:]?$")  # "B", "(B)", "B)", "B.", "B:"
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+")
_UNSAFE_FILENAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Item:
    """One audio multiple-choice question (synthetic organism tasks, or AVQA / MMAU / MMAR style user data).

    Parameters
    ----------
    id : str
        Unique within a dataset file; also names the written WAV file.
    question : str
        The question text shown to the model.
    choices : list of str
        At least two distinct options.
    answer : str
        The correct option; must be one of `choices` (exact string).
    audio : numpy.ndarray or None
        Shape ``(n_samples,)``, float32, mono, :data:`SAMPLE_RATE` Hz. None when not loaded.
    audio_path : str or None
        Where the audio came from (absolute after :func:`load_items`) or lives on disk.
    reference_chain : list of str or None
        Reasoning steps, each grounded in an acoustic fact.
    family, difficulty : str
        Task family (e.g. ``"pitch_compare"``) and difficulty (``"easy"``, ``"medium"``, ``"hard"``).
    meta : dict
        Free-form JSON-serialisable facts, e.g. the synthetic generator's parameters.

    Notes
    -----
    The constructor does not validate, so that broken items can be built and then rejected by
    :func:`write_items`. ``==`` compares audio arrays exactly (NumPy arrays cannot go through the
    default dataclass equality).

    Examples
    --------
    >>> item = Item(id="x-1", question="Which tone is higher?", choices=["first", "second"],
    ...             answer="second", audio=np.zeros(8000, dtype=np.float32))
    >>> item.answer_index, item.duration_s
    (1, 0.5)
    """

    id: str
    question: str
    choices: list[str]
    answer: str
    audio: np.ndarray | None = None
    audio_path: str | None = None
    reference_chain: list[str] | None = None
    family: str = "unknown"
    difficulty: str = "unknown"
    meta: dict = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Item):
            return NotImplemented
        fields_equal = (
            self.id == other.id
            and self.question == other.question
            and self.choices == other.choices
            and self.answer == other.answer
            and self.audio_path == other.audio_path
            and self.reference_chain == other.reference_chain
            and self.family == other.family
            and self.difficulty == other.difficulty
            and self.meta == other.meta
        )
        if not fields_equal or (self.audio is None) != (other.audio is None):
            return False
        return self.audio is None or bool(np.array_equal(self.audio, other.audio))

    @property
    def answer_index(self) -> int:
        """Position of `answer` in `choices`.

        Examples
        --------
        >>> Item(id="a", question="q", choices=["x", "y"], answer="y").answer_index
        1
        """
        try:
            return self.choices.index(self.answer)
        except ValueError:
            raise ValueError(
                f"item {self.id!r}: answer {self.answer!r} is not one of {self.choices!r}"
            ) from None

    @property
    def duration_s(self) -> float:
        """Audio length in seconds; raises ValueError if the audio is not loaded.

        Examples
        --------
        >>> Item(id="a", question="q", choices=["x", "y"], answer="y",
        ...      audio=np.zeros(SAMPLE_RATE * 2, dtype=np.float32)).duration_s
        2.0
        """
        if self.audio is None:
            raise ValueError(
                f"item {self.id!r}: audio is not loaded (load with load_items(..., load_audio=True))"
            )
        return len(self.audio) / SAMPLE_RATE


class ItemFormatError(ValueError):
    """A dataset line is wrong. The message names file, line number (1-based) and the fix.

    Examples
    --------
    >>> err = ItemFormatError("data.jsonl line 3: answer 'c' is not among the choices. Fix: ...",
    ...                       path="data.jsonl", line=3)
    >>> err.line
    3
    """

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, line: int | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.line = line


class _Bad(Exception):
    """Internal: a problem with one item; the caller adds file and line to make an ItemFormatError."""

    def __init__(self, problem: str, fix: str):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


def _format_error(path: str | os.PathLike, line: int, bad: _Bad) -> ItemFormatError:
    return ItemFormatError(f"{path} line {line}: {bad.problem}. Fix: {bad.fix}", path=path, line=line)


# ----------------------------------------------------------------------------------------------------
# Audio


def _to_mono_rate(data: np.ndarray, rate: int, sample_rate: int) -> tuple[np.ndarray, str | None]:
    """Mix ``(n,)`` or ``(n, channels)`` audio to mono and resample it to `sample_rate`."""
    notes = []
    if data.ndim == 2:
        if data.shape[1] > 1:
            notes.append(f"mixed {data.shape[1]} channels down to mono")
        data = data.mean(axis=1)
    if rate != sample_rate and data.size > 0:
        g = math.gcd(int(rate), int(sample_rate))
        data = resample_poly(data, sample_rate // g, int(rate) // g)
        notes.append(f"resampled from {rate} Hz to {sample_rate} Hz")
    return np.ascontiguousarray(data, dtype=np.float32), "; ".join(notes) or None


def load_audio(path: str | os.PathLike, *, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, str | None]:
    """Read an audio file as mono float32 at `sample_rate`.

    Parameters
    ----------
    path : str or os.PathLike
        WAV, FLAC or OGG file (anything libsndfile reads).
    sample_rate : int
        Target rate in Hz. Other rates are resampled with a polyphase filter.

    Returns
    -------
    audio : numpy.ndarray
        Shape ``(n_samples,)``, float32; integer PCM is scaled to [-1, 1].
    note : str or None
        What was converted, e.g. ``"resampled from 44100 Hz to 16000 Hz"``; None if nothing was.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    soundfile.LibsndfileError
        (a RuntimeError) If the file cannot be decoded.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     sf.write(f"{tmp}/a.wav", np.zeros((4410, 2), dtype=np.float32), 44100)
    ...     audio, note = load_audio(f"{tmp}/a.wav")
    >>> audio.shape, note
    ((1600,), 'mixed 2 channels down to mono; resampled from 44100 Hz to 16000 Hz')
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"audio file not found: {os.path.abspath(path)}")
    data, rate = sf.read(os.fspath(path), dtype="float32", always_2d=True)
    return _to_mono_rate(data, rate, sample_rate)


def _check_audio(audio: np.ndarray) -> None:
    if audio.size == 0:
        raise _Bad("the audio is empty (0 samples)", "regenerate or re-export the audio, or drop this item")
    if not np.all(np.isfinite(audio)):
        n_bad = int(np.size(audio) - np.count_nonzero(np.isfinite(audio)))
        raise _Bad(
            f"the audio contains {n_bad} NaN or inf samples",
            "regenerate the audio (look for a division by zero or log of zero), or drop this item",
        )


# ----------------------------------------------------------------------------------------------------
# Reading


def _split_steps(text: str) -> list[str]:
    """Split free-text reasoning into steps: one per line, or one per sentence if it is a single line."""
    parts = text.splitlines() if "\n" in text.strip() else _SENTENCE_END_RE.split(text)
    return [p.strip() for p in parts if p.strip()]


def _first(obj: dict, keys: tuple[str, ...]) -> tuple[str | None, Any]:
    for key in keys:
        if key in obj:
            return key, obj[key]
    return None, None


def _parse_choices(raw: Any) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise _Bad(f"choices must be a list of strings, got {raw!r}", 'write e.g. "choices": ["yes", "no"]')
    if len(raw) < 2:
        raise _Bad(f"need at least 2 choices, got {len(raw)}: {raw!r}", "add the missing options")
    dupes = sorted({c for c in raw if raw.count(c) > 1})
    if dupes:
        raise _Bad(f"duplicate choices {dupes!r} in {raw!r}", "make every option text distinct")
    return list(raw)


def _parse_answer(raw: Any, choices: list[str]) -> str:
    """Return the answer as a choice string; accept a 0-based index or a letter ("A" = first choice)."""
    if isinstance(raw, str) and raw in choices:
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        if 0 <= raw < len(choices):
            return choices[raw]
        raise _Bad(
            f"answer index {raw} is out of range for {len(choices)} choices {choices!r}",
            f"use a 0-based index from 0 to {len(choices) - 1}, or the choice text",
        )
    if isinstance(raw, str) and (m := _LETTER_RE.match(raw.strip())):
        index = ord(m.group(1)) - ord("A")
        if index < len(choices):
            return choices[index]
    raise _Bad(
        f"answer {raw!r} is not among the choices {choices!r}",
        "set answer to one of the choices exactly (or a 0-based index, or a letter A, B, ...)",
    )


def _parse_chain(raw: Any) -> list[str] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        steps = _split_steps(raw)
    elif isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        steps = [s.strip() for s in raw if s.strip()]
    else:
        raise _Bad(
            f"reference chain must be a list of strings or one string, got {type(raw).__name__}",
            'write e.g. "reference_chain": ["Tone 1 is low.", "Tone 2 is high."]',
        )
    return steps or None


def _parse_audio(
    raw: Any, base: Path, *, load: bool, sample_rate: int
) -> tuple[np.ndarray | None, str | None, str | None]:
    """Return (array or None, absolute path or None, conversion note or None) for an ``audio`` value."""
    if isinstance(raw, dict) and "array" not in raw and isinstance(raw.get("path"), str):
        raw = raw["path"]  # Hugging Face style {"path": ...} without decoded samples
    if isinstance(raw, dict):
        rate = raw.get("sampling_rate", raw.get("sample_rate"))
        if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
            raise _Bad(
                f"inline audio needs a positive integer sampling_rate, got {rate!r}",
                f'add "sampling_rate": {SAMPLE_RATE} (or the true rate) next to "array"',
            )
        try:
            data = np.asarray(raw["array"], dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise _Bad(
                f"inline audio array is not a flat list of numbers ({exc})", "store a flat list of floats"
            ) from exc
        if data.ndim != 1:
            raise _Bad(f"inline audio array has shape {data.shape}", "store a flat (mono) list of floats")
        audio, note = _to_mono_rate(data, rate, sample_rate)
        _check_audio(audio)
        return audio, None, note
    if not isinstance(raw, str) or not raw.strip():
        raise _Bad(
            f"audio must be a path string or an inline object, got {raw!r}",
            'write e.g. "audio": "audio/x.wav" or "audio": {"array": [...], "sampling_rate": 16000}',
        )
    resolved = os.path.abspath(base / raw)  # an absolute `raw` wins in the join
    if not os.path.isfile(resolved):
        raise _Bad(
            f"audio file not found: {resolved}",
            "fix the path (relative paths are read from the JSONL file's folder) or add the file",
        )
    if not load:
        return None, resolved, None
    try:
        audio, note = load_audio(resolved, sample_rate=sample_rate)
    except (RuntimeError, OSError, ValueError) as exc:  # LibsndfileError is a RuntimeError
        raise _Bad(
            f"cannot read audio file {resolved}: {exc}",
            "re-export it as WAV, FLAC or OGG (e.g. ffmpeg -i in.xxx -ac 1 -ar 16000 out.wav)",
        ) from exc
    _check_audio(audio)
    return audio, resolved, note


def _parse_line(
    obj: Any, *, default_id: str, base: Path, load: bool, require_reference: bool
) -> tuple[Item, str | None]:
    if not isinstance(obj, dict):
        raise _Bad(f"expected a JSON object, got {type(obj).__name__}", "write one {...} object per line")
    obj = dict(obj)

    q_key, question = _first(obj, _QUESTION_KEYS)
    if q_key is None or not isinstance(question, str) or not question.strip():
        raise _Bad("missing or empty question", 'add "question": "..."')
    c_key, raw_choices = _first(obj, _CHOICE_KEYS)
    if c_key is None:
        raise _Bad("missing choices", 'add "choices": ["...", "..."] (aliases: options, choices_list)')
    choices = _parse_choices(raw_choices)
    if "answer" not in obj:
        raise _Bad("missing answer", f'add "answer" set to one of {choices!r}')
    answer = _parse_answer(obj["answer"], choices)

    chain_key, raw_chain = _first(obj, _CHAIN_KEYS)
    chain = _parse_chain(raw_chain)
    if require_reference and chain is None:
        raise _Bad(
            "no reference chain, but require_reference=True",
            'add "reference_chain": ["step 1", "step 2", ...], or load with require_reference=False',
        )

    a_key, raw_audio = _first(obj, _AUDIO_KEYS)
    if a_key is None:
        raise _Bad("missing audio", 'add "audio": "path/to/file.wav" (relative to the JSONL file\'s folder)')
    audio, audio_path, note = _parse_audio(raw_audio, base, load=load, sample_rate=SAMPLE_RATE)

    raw_id = obj.get("id")
    if raw_id is not None and (type(raw_id) not in (str, int) or raw_id == ""):
        raise _Bad(f"id must be a non-empty string, got {raw_id!r}", 'write e.g. "id": "pitch-00001"')
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise _Bad(
            f"meta must be a JSON object, got {type(meta).__name__}", 'write e.g. "meta": {"f0_hz": 440}'
        )

    used = {q_key, c_key, chain_key, a_key, *_CORE_KEYS}
    extras = {k: v for k, v in obj.items() if k not in used}
    meta = {**extras, **meta}  # an explicit meta entry wins over a stray top-level key of the same name

    item = Item(
        id=default_id if raw_id is None else str(raw_id),
        question=question,
        choices=choices,
        answer=answer,
        audio=audio,
        audio_path=audio_path,
        reference_chain=chain,
        family=str(obj.get("family") or "unknown"),
        difficulty=str(obj.get("difficulty") or "unknown"),
        meta=meta,
    )
    return item, note


def iter_items(
    path: str | os.PathLike, *, load_audio: bool = True, require_reference: bool = False
) -> Iterator[Item]:
    """Yield the items of a JSONL file one at a time (see :func:`load_items`).

    Aliases accepted so AVQA / MMAU / MMAR style files load unchanged:

    - audio: ``audio_path``, ``wav``, ``audio_id``; question: ``question_text``;
    - choices: ``options``, ``choices_list``, ``multi_choice``;
    - answer: the choice text, a 0-based integer index, or a letter ``"A"``, ``"B"``, ... (used as a
      letter only when it is not itself one of the choices);
    - reference_chain: ``reasoning``, ``reference``, ``cot``; a single string is split into steps on
      newlines, or on sentence ends if it has none.

    A missing ``id`` becomes ``f"{file_stem}-{line_no}"``. Keys not listed here go into ``meta``.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     sf.write(f"{tmp}/a.wav", np.zeros(160, dtype=np.float32), SAMPLE_RATE)
    ...     _ = Path(f"{tmp}/d.jsonl").write_text(
    ...         '{"wav": "a.wav", "question": "Q?", "options": ["cat", "dog"], "answer": "B", "src": "x"}\\n')
    ...     [item] = iter_items(f"{tmp}/d.jsonl")
    >>> item.id, item.answer, item.meta
    ('d-1', 'dog', {'src': 'x'})
    """
    path = Path(path)
    base = path.parent
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8-sig") as fh:  # -sig: tolerate a BOM written by Windows tools
        for line_no, line in enumerate(fh, start=1):
            text = line.strip()
            if not text or text.startswith("//"):
                continue
            try:
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise _Bad(
                        f"invalid JSON ({exc})",
                        "make the line one complete JSON object (check quotes and commas)",
                    ) from exc
                item, note = _parse_line(
                    obj,
                    default_id=f"{path.stem}-{line_no}",
                    base=base,
                    load=load_audio,
                    require_reference=require_reference,
                )
                if item.id in seen:
                    raise _Bad(
                        f"duplicate id {item.id!r} (first used on line {seen[item.id]})",
                        "give every item a unique id",
                    )
            except _Bad as bad:
                raise _format_error(path, line_no, bad) from bad.__cause__
            seen[item.id] = line_no
            if note:
                warnings.warn(f"{path} line {line_no}: audio {note}", UserWarning, stacklevel=2)
            yield item


def load_items(
    path: str | os.PathLike, *, load_audio: bool = True, require_reference: bool = False
) -> list[Item]:
    """Load every item of a JSONL dataset file.

    Parameters
    ----------
    path : str or os.PathLike
        The JSONL file. Relative audio paths in it are read from its folder.
    load_audio : bool
        If False, audio files are only checked to exist and ``Item.audio`` stays None
        (inline audio is still decoded, since it is already in memory).
    require_reference : bool
        If True, every item must have a non-empty reference chain.

    Returns
    -------
    list of Item
        Audio is mono float32 at :data:`SAMPLE_RATE`; ``audio_path`` is absolute.

    Raises
    ------
    ItemFormatError
        On the first bad line, naming the file, the line and the fix.

    Warns
    -----
    UserWarning
        Once per line whose audio was resampled or mixed down to mono.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = Path(f"{tmp}/d.jsonl").write_text(
    ...         '{"id": "i1", "audio": {"array": [0.0, 0.5], "sampling_rate": 16000}, "question": "Q?",'
    ...         ' "choices": ["x", "y"], "answer": 0, "reasoning": "It is loud. So x."}\\n')
    ...     [item] = load_items(f"{tmp}/d.jsonl")
    >>> item.answer, item.reference_chain, item.audio.dtype
    ('x', ['It is loud.', 'So x.'], dtype('float32'))
    """
    return list(iter_items(path, load_audio=load_audio, require_reference=require_reference))


# ----------------------------------------------------------------------------------------------------
# Writing


def _json_default(value: Any) -> Any:
    # Generator parameters are often NumPy scalars; store them as plain JSON numbers.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _to_pcm16(audio: np.ndarray) -> np.ndarray:
    # Scale by 32768 (what soundfile divides by on reading) so a round trip errs by at most half a step.
    return np.clip(np.round(audio.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def _item_record(item: Item, seen_ids: set[str]) -> dict:
    """Validate an item for writing and return its JSON record without the ``audio`` field."""
    if not isinstance(item, Item):
        raise _Bad(f"expected an Item, got {type(item).__name__}", "pass Item objects to write_items")
    if not isinstance(item.id, str) or not item.id:
        raise _Bad(f"id must be a non-empty string, got {item.id!r}", "set Item.id")
    if item.id in seen_ids:
        raise _Bad(f"duplicate id {item.id!r}", "give every item a unique id")
    if not isinstance(item.question, str) or not item.question.strip():
        raise _Bad("missing or empty question", "set Item.question")
    choices = _parse_choices(item.choices)
    if not isinstance(item.answer, str) or item.answer not in choices:
        raise _Bad(
            f"answer {item.answer!r} is not among the choices {choices!r}", "set answer to one of the choices"
        )
    chain = item.reference_chain
    if chain is not None and not (isinstance(chain, list) and all(isinstance(s, str) for s in chain)):
        raise _Bad("reference_chain must be a list of strings or None", "fix Item.reference_chain")
    record = {
        "id": item.id,
        "audio": None,
        "question": item.question,
        "choices": choices,
        "answer": item.answer,
        "reference_chain": chain,
        "family": item.family,
        "difficulty": item.difficulty,
        "meta": item.meta,
    }
    if chain is None:
        del record["reference_chain"]
    if not item.meta:
        del record["meta"]
    return record


def _audio_file_name(item_id: str, taken: set[str]) -> str:
    stem = _UNSAFE_FILENAME_RE.sub("_", item_id).strip("._") or "item"
    name, n = f"{stem}.wav", 1
    while name.lower() in taken:  # lower(): case-insensitive file systems
        n += 1
        name = f"{stem}-{n}.wav"
    taken.add(name.lower())
    return name


def write_items(
    items: Iterable[Item], path: str | os.PathLike, *, audio_dir: str = "audio", inline_audio: bool = False
) -> Path:
    """Write items as a JSONL dataset file, with their audio as 16-bit WAV files or inline.

    Every item is validated before anything is written, and the JSONL goes through a temporary file
    and :func:`os.replace`, so an error never leaves a half-written file nor destroys an existing one.

    Parameters
    ----------
    items : iterable of Item
        Items with an ``audio`` array, or with only ``audio_path`` (whose path is kept: written relative
        to the JSONL folder when the file is inside it, otherwise absolute; relative paths are taken as
        already relative to the JSONL folder).
    path : str or os.PathLike
        The JSONL file to write; its folder is created if needed.
    audio_dir : str
        Folder, relative to the JSONL file's folder, for ``<id>.wav`` files (created if needed).
    inline_audio : bool
        If True, store arrays in the JSONL as ``{"array": [...], "sampling_rate": 16000}`` instead
        (exact round trip, large files).

    Returns
    -------
    pathlib.Path
        `path`, ready for :func:`load_items`.

    Raises
    ------
    ItemFormatError
        If an item is invalid; ``line N`` is the line it would have been written to.

    Examples
    --------
    >>> import tempfile
    >>> item = Item(id="s-1", question="Q?", choices=["a", "b"], answer="b",
    ...             audio=np.full(160, 0.25, dtype=np.float32))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     out = write_items([item], Path(tmp) / "set.jsonl")
    ...     json.loads(out.read_text())["audio"], load_items(out)[0].audio[0]
    ('audio/s-1.wav', np.float32(0.25))
    """
    out = Path(path)

    # Pass 1: validate everything and build the records, touching no file.
    lines: list[str] = []
    wavs: list[tuple[Path, np.ndarray]] = []
    seen_ids: set[str] = set()
    taken_names: set[str] = set()
    for line_no, item in enumerate(items, start=1):
        try:
            record = _item_record(item, seen_ids)
            record["audio"] = _audio_field(item, out, line_no, audio_dir, inline_audio, taken_names, wavs)
            try:
                line = json.dumps(record, ensure_ascii=False, allow_nan=False, default=_json_default)
            except (TypeError, ValueError) as exc:
                raise _Bad(
                    f"cannot serialise to JSON ({exc})", "keep meta to plain JSON values (no NaN)"
                ) from exc
        except _Bad as bad:
            raise _format_error(out, line_no, bad) from bad.__cause__
        seen_ids.add(item.id)
        lines.append(line)

    _write_files(out, lines, wavs, audio_dir)
    return out


def _audio_field(item: Item, out: Path, line_no: int, audio_dir: str, inline_audio: bool,
                 taken_names: set[str], wavs: list[tuple[Path, np.ndarray]]) -> str | dict:
    """The JSONL ``audio`` value of one item; a WAV to write is appended to `wavs` (nothing is written here)."""
    base = out.parent
    if item.audio is not None:
        audio = np.asarray(item.audio)
        if audio.ndim != 1:
            raise _Bad(f"audio has shape {audio.shape}", f"store mono audio of shape (n,) at {SAMPLE_RATE} Hz")
        audio = audio.astype(np.float32)
        _check_audio(audio)
        if inline_audio:
            return {"array": audio.tolist(), "sampling_rate": SAMPLE_RATE}
        rel = Path(audio_dir) / _audio_file_name(item.id, taken_names)
        wavs.append((base / rel, audio))
        peak = float(np.max(np.abs(audio)))
        if peak > 1.0:  # 16-bit PCM cannot hold it; say so rather than clip silently
            warnings.warn(
                f"{out} line {line_no}: audio of {item.id!r} peaks at {peak:.3g}; "
                "clipped to [-1, 1] in the 16-bit WAV (normalise it, or use inline_audio=True)",
                UserWarning,
                stacklevel=3,
            )
        return rel.as_posix()
    if item.audio_path:
        target = base / item.audio_path
        if not target.is_file():
            raise _Bad(f"audio file not found: {os.path.abspath(target)}", "fix Item.audio_path or load the audio")
        kept = item.audio_path
        if os.path.isabs(kept) and Path(os.path.abspath(kept)).is_relative_to(os.path.abspath(base)):
            kept = Path(os.path.relpath(kept, base)).as_posix()
        return kept
    raise _Bad("no audio", "set Item.audio (an array) or Item.audio_path")


def _write_files(out: Path, lines: list[str], wavs: list[tuple[Path, np.ndarray]], audio_dir: str) -> None:
    """Pass 2 of :func:`write_items`: the WAV files, then the JSONL swapped in with one :func:`os.replace`."""
    base = out.parent
    if wavs:
        (base / audio_dir).mkdir(parents=True, exist_ok=True)
    base.mkdir(parents=True, exist_ok=True)
    for wav_path, audio in wavs:
        tmp_wav = wav_path.with_name(wav_path.name + ".tmp")
        sf.write(tmp_wav, _to_pcm16(audio), SAMPLE_RATE, format="WAV", subtype="PCM_16")
        os.replace(tmp_wav, wav_path)
    tmp = Path(f"{out}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(line + "\n" for line in lines)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


#: The columns the reward functions read (``rl.rewards.registry.item_columns``), as ``datasets`` feature types.
REWARD_COLUMNS = {"id": "string", "question": "string", "choices": ["string"], "answer": "string",
                  "reference_chain": ["string"], "family": "string", "difficulty": "string", "meta": "string"}


def _wav_bytes(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(audio, np.float32), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def to_hf_dataset(items: Iterable[Item], *, mode: str = "think", written_facts: bool = False,
                  decode_audio: bool | None = None) -> datasets.Dataset:
    """Items as a Hugging Face ``datasets.Dataset`` for ``trl.GRPOTrainer``: a conversational ``prompt``, an ``audio``
    column and the columns the rewards read.

    Parameters
    ----------
    items : items with or without audio.
    mode : the prompt (``rl.data.prompts``: ``"think"``, ``"answer"``, ``"describe"``).
    written_facts : put each clip's facts (``meta["description"]``) in the prompt as text: what a text-only policy
        (TRL feeds text) needs to answer.
    decode_audio : the ``Audio`` feature's ``decode``; default: decode when ``torchcodec`` (which ``datasets`` decodes
        audio with) is installed, else rows hold ``{"bytes": <16 kHz PCM-16 WAV>, "path": None}``.

    Returns
    -------
    datasets.Dataset with columns ``prompt`` (list of ``{"role", "content"}`` messages, content a string), ``audio``
    (``datasets.Audio(sampling_rate=16000)``; None for an item without audio), ``id``, ``question``, ``choices``,
    ``answer``, ``reference_chain`` (None when absent), ``family``, ``difficulty`` and ``meta`` (JSON text).

    Raises
    ------
    ValueError
        ``written_facts`` for an item without ``meta["description"]``.
    """
    # datasets takes seconds to import and only this adapter needs it; rl.data.prompts imports this module (a cycle)
    import datasets
    import pyarrow as pa

    from rl.data import prompts

    reward_features = datasets.Features({
        name: datasets.List(datasets.Value(kind[0])) if isinstance(kind, list) else datasets.Value(kind)
        for name, kind in REWARD_COLUMNS.items()})

    items = list(items)
    rows: dict[str, list] = {name: [] for name in ("prompt", "audio", *REWARD_COLUMNS)}
    for it in items:
        context = None
        if written_facts:
            if not it.meta.get("description"):
                raise ValueError(f"item {it.id!r} has no meta['description'] to write into the prompt: pass "
                                 "written_facts=False, or items with descriptions")
            context = it.meta["description"]
        rows["prompt"].append(prompts.messages(it, mode, audio=False, context=context))
        rows["audio"].append({"bytes": _wav_bytes(it.audio), "path": None} if it.audio is not None else None)
        for name in REWARD_COLUMNS:
            value = getattr(it, name)
            rows[name].append(json.dumps(value, default=_json_default) if name == "meta" else value)
    decode = datasets.config.TORCHCODEC_AVAILABLE if decode_audio is None else decode_audio
    # Built from Arrow, not from_dict: datasets encodes audio arrays with torchcodec, which needs FFmpeg; the WAV
    # bytes are what it would store anyway
    audio_type = pa.struct({"bytes": pa.binary(), "path": pa.string()})
    table = pa.table({"audio": pa.array(rows.pop("audio"), type=audio_type)})
    rest = datasets.Dataset.from_dict(rows, features=datasets.Features({
        "prompt": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        **reward_features}))
    audio = datasets.Dataset(table).cast_column("audio", datasets.Audio(sampling_rate=SAMPLE_RATE, decode=decode))
    return datasets.concatenate_datasets([rest, audio], axis=1).select_columns(
        ["prompt", "audio", *REWARD_COLUMNS])
