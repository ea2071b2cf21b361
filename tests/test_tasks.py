"""Synthetic tasks: deterministic, answers derivable from the audio, difficulty that really makes items harder."""

import numpy as np
import pytest

from benchmarks.organism_perception import tone_levels
from rl.data.items import SAMPLE_RATE
from rl.data.tasks import (
    DIFFICULTY_BANDS,
    FAMILIES,
    MULTI_STEP,
    PITCH_NAMES,
    Acoustics,
    Event,
    generate_items,
    heldout_set,
    make_item,
    render,
)


def dominant_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)[np.argmax(spectrum)])


def test_at_least_six_families_two_multi_step():
    assert len(FAMILIES) >= 6
    assert len(MULTI_STEP) >= 2


def test_deterministic_by_seed_and_independent_of_n():
    a = generate_items(14, seed=3)
    b = generate_items(20, seed=3)
    for x, y in zip(a, b):
        assert x.question == y.question and x.answer == y.answer and x.reference_chain == y.reference_chain
        np.testing.assert_array_equal(x.audio, y.audio)
    c = generate_items(14, seed=4)
    assert any(not np.array_equal(x.audio, y.audio) for x, y in zip(a, c))


def test_a_heldout_set_s_bands_hold_other_scenes_and_a_second_set_shares_none():
    """One seed for every band would repeat each band's sounds and question at another difficulty (the demo's held-out
    set did until December 2026): copies that move together."""
    first, second = heldout_set(2, seed=5), heldout_set(2, seed=5 + len(DIFFICULTY_BANDS))
    assert len(first) == 2 * len(FAMILIES) * len(DIFFICULTY_BANDS)
    scenes = [it.meta["description"] + it.question for it in first + second]
    assert len(set(scenes)) > 0.9 * len(scenes)
    assert not {it.id for it in first} & {it.id for it in second}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("difficulty", sorted(DIFFICULTY_BANDS))
def test_items_are_well_formed(family, difficulty):
    for it in generate_items(6, seed=1, families=[family], difficulty=difficulty):
        assert it.audio.dtype == np.float32 and it.audio.shape == (2 * SAMPLE_RATE,)
        assert np.isfinite(it.audio).all() and 0.85 < np.abs(it.audio).max() <= 0.9 + 1e-6
        assert it.answer in it.choices and len(set(it.choices)) == len(it.choices)
        assert it.family == family and it.difficulty == difficulty
        # The chain starts with one perception fact per event, then the inference steps.
        n_events = len(it.meta["events"])
        assert len(it.reference_chain) > n_events
        assert all(step.startswith(f"Sound {i + 1}:") for i, step in enumerate(it.reference_chain[:n_events]))


def test_pitch_compare_answer_is_in_the_audio():
    """The reference chain's pitch facts are true of the waveform: the FFT of each tone agrees with the answer."""
    for it in generate_items(10, seed=5, families=["pitch_compare"], difficulty="easy"):
        hz = []
        for ev in it.meta["events"]:
            start = int(ev["onset_s"] * SAMPLE_RATE)
            hz.append(dominant_hz(it.audio[start:start + int(ev["duration_s"] * SAMPLE_RATE)]))
        higher = "the first" if hz[0] > hz[1] else "the second"
        assert higher == it.answer, (hz, it.reference_chain)


def test_count_events_matches_energy_bursts_when_easy():
    for it in generate_items(10, seed=6, families=["count_events"], difficulty=0.0):
        frame = SAMPLE_RATE // 100
        energy = np.sqrt(np.mean(it.audio[: len(it.audio) // frame * frame].reshape(-1, frame) ** 2, axis=1))
        active = energy > 0.04 * energy.max()  # quiet beeps are -20 dB
        bursts = int(np.sum(active[1:] & ~active[:-1]) + active[0])
        assert str(bursts) == it.answer


def test_difficulty_squeezes_the_acoustics():
    easy, hard = Acoustics(0.0), Acoustics(1.0)
    assert easy.pitch_hz(3) / easy.pitch_hz(2) > 1.3 > 1.1 > hard.pitch_hz(3) / hard.pitch_hz(2)
    assert easy.snr_db > 25 and hard.snr_db < 1
    assert easy.duration_s(2) / easy.duration_s(0) > 4 > 2 > hard.duration_s(2) / hard.duration_s(0)
    assert easy.gap_s > 0 > hard.gap_s  # events overlap when hard


def test_hard_items_are_noisier():
    rng = np.random.default_rng(0)
    ev = [Event("tone", 2, 1, 2)]
    quiet_floor = []
    for d in (0.0, 1.0):
        audio, timeline = render(ev, d, rng)
        start = int(timeline[0]["onset_s"] * SAMPLE_RATE)
        outside = np.concatenate([audio[: max(start - 160, 1)], audio[start + int(0.4 * SAMPLE_RATE):]])
        quiet_floor.append(np.sqrt(np.mean(outside**2)))
    assert quiet_floor[1] > 10 * quiet_floor[0]


def test_multi_step_answers_follow_from_the_facts():
    for it in generate_items(30, seed=7, families=["highest_longest", "pitch_of_loudest"]):
        levels = it.meta["levels"]
        n = len(levels)
        if it.family == "highest_longest":
            hi = max(range(n), key=lambda i: levels[i][1])
            lo = max(range(n), key=lambda i: levels[i][2])
            assert it.answer == ("yes" if hi == lo else "no")
        else:
            loud = max(range(n), key=lambda i: levels[i][3])
            assert it.answer == PITCH_NAMES[levels[loud][1]]


@pytest.mark.parametrize("family", MULTI_STEP)
def test_multi_step_families_need_several_facts(family):
    """Three or four sounds, two attributes; the attribute singled out has one maximum, so the question is defined;
    the inference steps are explicit comparisons ("Sound 2 is higher than Sound 1.")."""
    sizes = set()
    for it in generate_items(40, seed=11, families=[family]):
        levels = np.array([lv[1:] for lv in it.meta["levels"]])
        sizes.add(len(levels))
        column = 1 if family == "highest_longest" else 2  # duration / loudness
        assert (levels[:, column] == levels[:, column].max()).sum() == 1
        assert len(set(levels[:, 0])) == len(levels)  # distinct pitches
        steps = it.reference_chain[len(levels):]
        word = "longer" if family == "highest_longest" else "louder"
        assert sum(f" is {word} than Sound " in s for s in steps) == len(levels) - 1
        # Every sound fits inside the clip (four long sounds would not).
        assert all(ev["onset_s"] + ev["duration_s"] <= 2.0 for ev in it.meta["events"])
    assert sizes == {3, 4}


def test_inference_steps_are_comparisons_between_sounds():
    it = generate_items(1, seed=3, families=["pitch_compare"])[0]
    hi = 1 + max(range(2), key=lambda i: it.meta["levels"][i][1])
    assert f"Sound {hi} is higher than Sound {3 - hi}." in it.reference_chain


def test_yes_no_balanced():
    answers = [it.answer for it in generate_items(200, seed=8, families=["highest_longest"])]
    assert 0.35 < answers.count("yes") / len(answers) < 0.65


def test_bad_arguments_name_the_problem():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown task family 'nope'"):
        make_item("nope", "easy", rng, "x")
    with pytest.raises(ValueError, match="unknown difficulty 'extreme'"):
        make_item("pitch_compare", "extreme", rng, "x")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_item("pitch_compare", 1.5, rng, "x")


def test_sub_skill_answers_follow_from_the_facts():
    """The base-training sub-skills: the attribute asked for is the named sound's; the maximum is unique and named."""
    from rl.data.tasks import ATTRIBUTES, SKILLS, make_item

    column = {"pitch": 1, "duration": 2, "loudness": 3}
    seen = set()
    for i in range(60):
        for name in SKILLS:
            it = make_item(name, "medium", np.random.default_rng(i), f"s{i}")
            levels = np.array([lv[1:] for lv in it.meta["levels"]])
            attr = next(a for a in ATTRIBUTES if a in it.question or ATTRIBUTES[a][2] in it.question)
            values = levels[:, column[attr] - 1]
            if name == "attribute_of_sound":
                k = int(it.question.rsplit("Sound ", 1)[1].rstrip("?")) - 1
                assert it.answer == ATTRIBUTES[attr][0][values[k]]
            else:
                assert (values == values.max()).sum() == 1
                assert it.answer == f"Sound {int(values.argmax()) + 1}" and it.answer in it.choices
            assert it.answer in it.choices
            assert all(ev["onset_s"] + ev["duration_s"] <= 2.0 for ev in it.meta["events"])
            seen.add((name, attr, len(levels)))
    assert len(seen) == 2 * 3 * 2  # every skill x attribute x sound count



def tone_levels_db(items) -> dict[int, list[float]]:
    """Per loudness level, the RMS (dB) of every tone of ``items`` over its true extent."""
    db, level = tone_levels(items)
    return {k: db[level == k].tolist() for k in range(3)}

def test_calibrated_clips_keep_absolute_loudness():
    # Peak-normalised clips (the default) hear a level only relative to the clip's other sounds: the level ranges of
    # RMS overlap. Calibrated ones play every level at one gain: the ranges separate (easy clips, 10 dB apart).
    peak = tone_levels_db(generate_items(70, seed=4, difficulty="easy"))
    calibrated = tone_levels_db(generate_items(70, seed=4, difficulty="easy", calibrated=True))
    assert max(peak[0]) > min(peak[1]) and max(peak[1]) > min(peak[2])
    assert max(calibrated[0]) < min(calibrated[1]) and max(calibrated[1]) < min(calibrated[2])


def test_calibrated_changes_the_audio_only():
    for family in sorted(FAMILIES):
        a = make_item(family, "hard", np.random.default_rng(5), "x")
        b = make_item(family, "hard", np.random.default_rng(5), "x", calibrated=True)
        assert (a.question, a.answer, a.reference_chain, a.meta["events"]) == \
               (b.question, b.answer, b.reference_chain, b.meta["events"])
        assert b.meta["calibrated"] and not a.meta["calibrated"]
        assert np.abs(b.audio).max() <= 1.0 and not np.allclose(a.audio, b.audio)
