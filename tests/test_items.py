"""Tests for rl.data.items: the JSONL item format, its loader and writer, on real files in tmp_path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rl.data.items import SAMPLE_RATE, Item, ItemFormatError, iter_items, load_audio, load_items, write_items

PCM16_TOL = 1 / 32768 + 1e-7


def sine(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_freq(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def write_jsonl(path: Path, rows: list) -> Path:
    """Write rows (dicts become JSON, strings are written verbatim) one per line."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def good_row(tmp_path: Path, id_: str = "ok-1", **overrides) -> dict:
    wav = tmp_path / f"{id_}.wav"
    if not wav.exists():
        sf.write(wav, sine(440, 0.1, SAMPLE_RATE), SAMPLE_RATE)
    row = {
        "id": id_,
        "audio": wav.name,
        "question": "Is there a tone?",
        "choices": ["yes", "no"],
        "answer": "yes",
    }
    row.update(overrides)
    return row


def make_items(n: int = 3, seed: int = 0) -> list[Item]:
    rng = np.random.default_rng(seed)
    return [
        Item(
            id=f"pitch-{i:05d}",
            question="Which tone is higher?",
            choices=["the first", "the second"],
            answer="the second",
            audio=rng.uniform(-0.9, 0.9, size=1600 + 100 * i).astype(np.float32),
            reference_chain=[
                "Tone 1 is low (220 Hz).",
                "Tone 2 is high (660 Hz).",
                "So the second is higher.",
            ],
            family="pitch_compare",
            difficulty="easy",
            meta={"f1_hz": 220, "f2_hz": 660.5, "seed": i, "tags": ["a", "b"]},
        )
        for i in range(n)
    ]


def assert_same_items(got: list[Item], want: list[Item], atol: float) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        for name in ("id", "question", "choices", "answer", "reference_chain", "family", "difficulty"):
            assert getattr(g, name) == getattr(w, name), name
        assert g.meta == w.meta
        assert g.audio.dtype == np.float32 and g.audio.shape == w.audio.shape
        np.testing.assert_allclose(g.audio, w.audio, rtol=0, atol=atol)


# ----------------------------------------------------------------------------------------------------
# Round trips


def test_round_trip_wav(tmp_path):
    items = make_items()
    out = write_items(items, tmp_path / "set.jsonl")
    assert out == tmp_path / "set.jsonl"
    assert not (tmp_path / "set.jsonl.tmp").exists()

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["audio"] for r in rows] == [f"audio/{it.id}.wav" for it in items]
    info = sf.info(tmp_path / "audio" / "pitch-00000.wav")
    assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")

    back = load_items(out)
    assert_same_items(back, items, atol=PCM16_TOL)
    assert back[0].audio_path == str(tmp_path / "audio" / "pitch-00000.wav")
    # Items are not mutated by writing.
    assert items[0].audio_path is None


def test_round_trip_inline_is_exact(tmp_path):
    items = make_items(2, seed=1)
    out = write_items(items, tmp_path / "inline.jsonl", inline_audio=True)
    assert not (tmp_path / "audio").exists()
    assert json.loads(out.read_text().splitlines()[0])["audio"]["sampling_rate"] == SAMPLE_RATE
    back = load_items(out)
    assert_same_items(back, items, atol=0)
    assert back == items  # Item.__eq__ compares arrays exactly; audio_path is None for inline audio


def test_full_scale_audio_round_trips_within_one_step(tmp_path):
    audio = np.array([-1.0, -0.5, 0.0, 0.5, 1.0, 0.123456], dtype=np.float32)
    item = Item(id="edge", question="q", choices=["a", "b"], answer="a", audio=audio)
    [back] = load_items(write_items([item], tmp_path / "e.jsonl"))
    np.testing.assert_allclose(back.audio, audio, rtol=0, atol=PCM16_TOL)


def test_out_of_range_audio_is_clipped_with_a_warning(tmp_path):
    item = Item(
        id="loud", question="q", choices=["a", "b"], answer="a", audio=np.array([0.5, 2.0], np.float32)
    )
    with pytest.warns(UserWarning, match=r"l\.jsonl line 1: audio of 'loud' peaks at 2; clipped"):
        out = write_items([item], tmp_path / "l.jsonl")
    np.testing.assert_allclose(load_items(out)[0].audio, [0.5, 32767 / 32768], rtol=0, atol=1e-7)


def test_written_then_rewritten_items_keep_their_audio_path(tmp_path):
    first = write_items(make_items(2), tmp_path / "a.jsonl")
    path_only = load_items(first, load_audio=False)
    assert all(it.audio is None for it in path_only)
    second = write_items(path_only, tmp_path / "b.jsonl")
    rows = [json.loads(line) for line in second.read_text().splitlines()]
    assert rows[0]["audio"] == "audio/pitch-00000.wav"  # inside the folder -> stays relative
    assert_same_items(load_items(second), load_items(first), atol=0)


def test_item_properties():
    item = Item(id="x", question="q", choices=["a", "b", "c"], answer="c", audio=np.zeros(24_000, np.float32))
    assert item.answer_index == 2
    assert item.duration_s == 1.5
    with pytest.raises(ValueError, match="not loaded"):
        _ = Item(id="y", question="q", choices=["a", "b"], answer="a").duration_s
    with pytest.raises(ValueError, match="not one of"):
        _ = Item(id="z", question="q", choices=["a", "b"], answer="d").answer_index


# ----------------------------------------------------------------------------------------------------
# Aliases and lenient parsing


def test_aliases_load(tmp_path):
    sf.write(tmp_path / "clip.wav", sine(440, 0.1, SAMPLE_RATE), SAMPLE_RATE)
    path = write_jsonl(
        tmp_path / "mmau.jsonl",
        [
            "// a comment line",
            "",
            {"audio_path": "clip.wav", "question": "Q1?", "options": ["dog", "cat", "cow"], "answer": 1},
            {
                "id": 7,
                "wav": "clip.wav",
                "question": "Q2?",
                "choices_list": ["x", "y"],
                "answer": "B",
                "reasoning": "Step one.\nStep two.\n\nStep three.",
            },
            {
                "id": "c",
                "audio_id": str(tmp_path / "clip.wav"),
                "question": "Q3?",
                "choices": ["p", "q"],
                "answer": "(A)",
                "cot": "The pitch rises. It ends at 2.5 kHz! So p.",
                "split": "test-mini",
            },
            {
                "id": "d",
                "audio": "clip.wav",
                "question": "Q4?",
                "choices": ["A", "B"],
                "answer": "B",
                "reference": ["only step"],
                "meta": {"k": 1},
                "source": "mmar",
            },
        ],
    )
    a, b, c, d = load_items(path)

    assert a.id == "mmau-3"  # file stem + 1-based line number
    assert (a.choices, a.answer, a.answer_index) == (["dog", "cat", "cow"], "cat", 1)
    assert a.reference_chain is None and a.family == "unknown" and a.difficulty == "unknown"

    assert b.id == "7" and b.answer == "y"
    assert b.reference_chain == ["Step one.", "Step two.", "Step three."]

    assert c.answer == "p" and c.audio_path == str(tmp_path / "clip.wav")
    assert c.reference_chain == ["The pitch rises.", "It ends at 2.5 kHz!", "So p."]
    assert c.meta == {"split": "test-mini"}

    assert d.answer == "B" and d.answer_index == 1  # "B" is itself a choice, so it is not a letter index
    assert d.reference_chain == ["only step"]
    assert d.meta == {"k": 1, "source": "mmar"}


def test_load_audio_false_skips_reading_but_checks_existence(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [good_row(tmp_path)])
    [item] = load_items(path, load_audio=False)
    assert item.audio is None and item.audio_path == str(tmp_path / "ok-1.wav")
    (tmp_path / "ok-1.wav").unlink()
    with pytest.raises(ItemFormatError, match=r"d\.jsonl line 1: audio file not found"):
        load_items(path, load_audio=False)


def test_iter_items_is_lazy(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [good_row(tmp_path), "{broken"])
    it = iter_items(path)
    assert next(it).id == "ok-1"  # the bad second line has not been read yet
    with pytest.raises(ItemFormatError, match="line 2"):
        next(it)


# ----------------------------------------------------------------------------------------------------
# Errors: each bad line is line 2 of d.jsonl, after a good line 1


def _unreadable(tmp_path: Path) -> dict:
    (tmp_path / "junk.wav").write_text("this is not audio")
    return good_row(tmp_path, "e", audio="junk.wav")


def _float_wav(tmp_path: Path, name: str, data: np.ndarray) -> dict:
    sf.write(tmp_path / name, data, SAMPLE_RATE, subtype="FLOAT")
    return good_row(tmp_path, "e", audio=name)


def _without(key: str):
    def make(tmp_path: Path) -> dict:
        row = good_row(tmp_path, "e")
        del row[key]
        return row

    return make


ERROR_CASES = {
    "invalid_json": (lambda p: '{"id": "e", "question": "q",', r"invalid JSON"),
    "not_an_object": (lambda p: "[1, 2]", r"expected a JSON object"),
    "missing_question": (_without("question"), r"missing or empty question"),
    "missing_choices": (_without("choices"), r"missing choices"),
    "missing_answer": (_without("answer"), r"missing answer"),
    "missing_audio": (_without("audio"), r"missing audio"),
    "one_choice": (lambda p: good_row(p, "e", choices=["yes"]), r"at least 2 choices"),
    "duplicate_choices": (lambda p: good_row(p, "e", choices=["yes", "no", "yes"]), r"duplicate choices"),
    "answer_not_in_choices": (
        lambda p: good_row(p, "e", answer="maybe"),
        r"answer 'maybe' is not among the choices \['yes', 'no'\]",
    ),
    "answer_index_out_of_range": (lambda p: good_row(p, "e", answer=5), r"out of range"),
    "answer_letter_out_of_range": (lambda p: good_row(p, "e", answer="C"), r"answer 'C' is not among"),
    "audio_file_missing": (
        lambda p: good_row(p, "e", audio="nowhere/x.wav"),
        lambda p: r"audio file not found: " + re.escape(str(p / "nowhere" / "x.wav")) + r"\. Fix",
    ),
    "audio_unreadable": (_unreadable, r"cannot read audio file .*junk\.wav: .*(Format|format|recogni)"),
    "audio_nan": (
        lambda p: _float_wav(p, "nan.wav", np.array([0.0, np.nan, 0.1], np.float32)),
        r"1 NaN or inf samples",
    ),
    "audio_inf": (
        lambda p: _float_wav(p, "inf.wav", np.array([0.0, np.inf, -np.inf], np.float32)),
        r"2 NaN or inf samples",
    ),
    "inline_nan": (
        lambda p: good_row(p, "e", audio={"array": [0.0, float("nan")], "sampling_rate": SAMPLE_RATE}),
        r"NaN or inf",
    ),
    "audio_empty": (lambda p: _float_wav(p, "empty.wav", np.zeros(0, np.float32)), r"audio is empty"),
    "inline_no_rate": (lambda p: good_row(p, "e", audio={"array": [0.0, 0.1]}), r"sampling_rate"),
    "duplicate_id": (lambda p: good_row(p, "ok-1"), r"duplicate id 'ok-1' \(first used on line 1\)"),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_bad_line_raises_with_file_line_and_fix(tmp_path, case):
    make_bad, problem = ERROR_CASES[case]
    problem = problem(tmp_path) if callable(problem) else problem  # the resolved path depends on tmp_path
    path = write_jsonl(tmp_path / "d.jsonl", [good_row(tmp_path), make_bad(tmp_path)])
    with pytest.raises(ItemFormatError, match=re.escape(str(path)) + r" line 2: .*" + problem) as info:
        load_items(path)
    assert "Fix: " in str(info.value)
    assert (info.value.path, info.value.line) == (str(path), 2)


def test_require_reference(tmp_path):
    with_chain = good_row(tmp_path, "a", reference_chain=["It is a tone.", "So yes."])
    path = write_jsonl(tmp_path / "d.jsonl", [with_chain, good_row(tmp_path, "b", reasoning="   ")])
    assert len(load_items(path)) == 2
    with pytest.raises(ItemFormatError, match=r"d\.jsonl line 2: no reference chain.*Fix: "):
        load_items(path, require_reference=True)


# ----------------------------------------------------------------------------------------------------
# Audio conversion


@pytest.mark.parametrize("rate", [44_100, 8_000])
def test_resampling_keeps_length_and_pitch(tmp_path, rate):
    sf.write(tmp_path / "tone.wav", sine(440, 1.0, rate), rate, subtype="PCM_16")
    path = write_jsonl(tmp_path / "d.jsonl", [good_row(tmp_path, "r", audio="tone.wav")])
    with pytest.warns(UserWarning, match=rf"d\.jsonl line 1: audio resampled from {rate} Hz to 16000 Hz"):
        [item] = load_items(path)
    assert item.audio.dtype == np.float32 and item.audio.shape == (SAMPLE_RATE,)
    assert abs(dominant_freq(item.audio, SAMPLE_RATE) - 440) <= 2
    assert 0.45 < np.max(np.abs(item.audio[100:-100])) < 0.55  # amplitude preserved away from the edges


def test_inline_audio_is_resampled_too(tmp_path):
    row = good_row(tmp_path, "i", audio={"array": sine(440, 0.5, 8000).tolist(), "sampling_rate": 8000})
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    with pytest.warns(UserWarning, match="line 1: audio resampled from 8000 Hz"):
        [item] = load_items(path)
    assert item.audio.shape == (8000,)


def test_stereo_is_mixed_to_mono(tmp_path):
    tone = sine(440, 0.5, 44_100)
    sf.write(tmp_path / "st.wav", np.stack([tone, 0.5 * tone], axis=1), 44_100, subtype="FLOAT")
    path = write_jsonl(tmp_path / "d.jsonl", [good_row(tmp_path, "s", audio="st.wav")])
    note = r"line 1: audio mixed 2 channels down to mono; resampled from 44100 Hz"
    with pytest.warns(UserWarning, match=note):
        [item] = load_items(path)
    assert item.audio.shape == (8000,)
    assert 0.7 * 0.5 < np.max(np.abs(item.audio[100:-100])) < 0.8 * 0.5  # mean of 1.0x and 0.5x


def test_load_audio_directly(tmp_path):
    pcm = (sine(440, 0.25, SAMPLE_RATE, amp=1.0) * 32767).astype(np.int16)
    sf.write(tmp_path / "a.wav", pcm, SAMPLE_RATE, subtype="PCM_16")
    audio, note = load_audio(tmp_path / "a.wav")
    assert note is None and audio.dtype == np.float32 and audio.shape == (4000,)
    assert audio.min() >= -1.0 and audio.max() <= 1.0 and audio.max() > 0.99
    audio, note = load_audio(tmp_path / "a.wav", sample_rate=8000)
    assert audio.shape == (2000,) and note == "resampled from 16000 Hz to 8000 Hz"
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "missing.wav")


# ----------------------------------------------------------------------------------------------------
# Writer validation and atomicity


def test_write_items_is_atomic(tmp_path):
    out = write_items(make_items(2), tmp_path / "set.jsonl")
    before = out.read_bytes()
    new = Item(id="new-1", question="q", choices=["a", "b"], answer="a", audio=np.zeros(160, np.float32))
    bad = Item(id="bad-1", question="q", choices=["a", "b"], answer="c", audio=np.zeros(160, np.float32))
    with pytest.raises(ItemFormatError, match=r"set\.jsonl line 2: answer 'c' is not among the choices"):
        write_items([new, bad], out)
    assert out.read_bytes() == before
    assert not (tmp_path / "set.jsonl.tmp").exists()
    assert not (tmp_path / "audio" / "new-1.wav").exists()  # validation happens before any file is written


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (Item(id="a", question="q", choices=["x", "y"], answer="x"), r"no audio"),
        (Item(id="a", question="q", choices=["x", "y"], answer="x", audio_path="gone.wav"), r"not found"),
        (
            Item(id="a", question="q", choices=["x", "y"], answer="x", audio=np.array([np.nan], np.float32)),
            r"NaN or inf",
        ),
        (
            Item(
                id="a",
                question="q",
                choices=["x", "y"],
                answer="x",
                audio=np.ones(4, np.float32),
                meta={"bad": float("nan")},
            ),
            r"cannot serialise to JSON",
        ),
        (
            Item(id="ok-1", question="q", choices=["x", "y"], answer="x", audio=np.ones(4, np.float32)),
            r"duplicate id 'ok-1'",
        ),
    ],
)
def test_write_items_rejects_bad_items(tmp_path, bad, problem):
    good = Item(id="ok-1", question="q", choices=["x", "y"], answer="y", audio=np.zeros(4, np.float32))
    with pytest.raises(ItemFormatError, match=r"w\.jsonl line 2: .*" + problem):
        write_items([good, bad], tmp_path / "w.jsonl")
    assert not (tmp_path / "w.jsonl").exists()


def test_write_items_serialises_numpy_meta_and_odd_ids(tmp_path):
    item = Item(
        id="a/b c",
        question="q",
        choices=["x", "y"],
        answer="x",
        audio=np.zeros(4, np.float32),
        meta={"f0": np.float32(440.0), "n": np.int64(3), "v": np.arange(2)},
    )
    out = write_items([item], tmp_path / "sub" / "w.jsonl", audio_dir="wavs")
    row = json.loads(out.read_text())
    assert row["audio"] == "wavs/a_b_c.wav" and (tmp_path / "sub" / "wavs" / "a_b_c.wav").is_file()
    [back] = load_items(out)
    assert back.id == "a/b c" and back.meta == {"f0": 440.0, "n": 3, "v": [0, 1]}
