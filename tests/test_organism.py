"""The organism's tokenizer, processor and model class, built from code (tiny sizes, no downloads)."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import _get_feat_extract_output_lengths

from adt_probe.integrity import sha256
from rl import organism
from rl.data import collate, prompts
from rl.data.items import SAMPLE_RATE
from rl.train.checkpoint import verify_files


def test_special_tokens_are_single_ids(tokenizer):
    for token in organism.SPECIAL_TOKENS:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == token
    assert tokenizer.audio_token == "<|audio_pad|>" and tokenizer.eos_token == "<|im_end|>"


def test_byte_level_tokenizer_encodes_any_text(tokenizer):
    text = "Überraschung: 3 tones — ½ s each! 音"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


@pytest.mark.parametrize("seconds", [1.0, 2.0, 3.5])
def test_processor_expands_audio_tokens_to_encoder_length(processor, items, seconds):
    audio = np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)
    audio[:100] = 0.5
    text = collate.prompt_texts(processor, items[:1], "answer")[0]
    batch = processor(text=[text], audio=[audio], return_tensors="pt")
    frames = int(batch["feature_attention_mask"].sum())
    assert frames == int(seconds * 100)
    n_audio = int((batch["input_ids"] == processor.tokenizer.audio_token_id).sum())
    assert n_audio == int(_get_feat_extract_output_lengths(torch.tensor(frames)))


def test_organism_architecture_meets_the_spec(tokenizer):
    cfg = organism.build_config(tokenizer)
    text = cfg.text_config
    # 12 layers: the lower and upper bands of the drift analysis have 6 each.
    assert text.num_hidden_layers >= 12 and text.num_experts >= 8 and text.num_experts_per_tok == 2
    assert text.mlp_only_layers == [] and text.decoder_sparse_step == 1  # every layer is MoE


def test_forward_uses_the_audio(tiny_organism, processor, items):
    batch = collate.encode_prompts(processor, items[:2], "answer")
    with torch.no_grad():
        a = tiny_organism(**batch).logits
        again = tiny_organism(**batch).logits
        batch["input_features"] = torch.roll(batch["input_features"], 37, dims=-1)
        b = tiny_organism(**batch).logits
    assert a.shape[:2] == batch["input_ids"].shape
    assert torch.equal(a, again)
    # The last text token sees the clip (weakly: the weights are random and small).
    assert (a[:, -1] - b[:, -1]).abs().max() > 1e-6


def test_supervised_labels_cover_exactly_the_target(processor, items):
    modes = ["answer", "describe", "context", "think"]
    targets = [prompts.target(it, "describe" if m == "describe" else "answer") for it, m in zip(items, modes)]
    batch = collate.encode_supervised(processor, items[:4], modes, targets)
    for row, tgt in enumerate(targets):
        ids = batch["labels"][row][batch["labels"][row] != -100]
        assert processor.tokenizer.decode(ids) == tgt
    # "context" replaces the audio by written facts: that row has no audio token
    audio_id = processor.tokenizer.audio_token_id
    assert [(batch["input_ids"][r] == audio_id).any().item() for r in range(4)] == [True, True, False, True]


def test_notes_targets_are_read_but_not_trained(processor, items):
    """A (read, trained) target: the notes sit in the think block of the input, the loss covers only what follows."""
    it = items[0]
    read = f"<think>\n{it.meta['description']}\n"
    trained = f"</think>\n\n<answer>{it.answer}</answer><|im_end|>"
    batch = collate.encode_supervised(processor, [it, items[1]], ["notes", "answer"],
                                      [(read, trained), prompts.target(items[1], "answer")])
    labels = batch["labels"][0]
    assert processor.tokenizer.decode(labels[labels != -100]) == trained
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert it.meta["description"] in text and prompts.THINK_INSTRUCTION in text  # the think prompt, with notes


def test_save_and_load_round_trip(tiny_organism, processor, items, tmp_path):
    tiny_organism.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model, proc = organism.load_organism(tmp_path)
    batch = collate.encode_prompts(proc, items[:2], "think")
    ref = collate.encode_prompts(processor, items[:2], "think")
    assert torch.equal(batch["input_ids"], ref["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, tiny_organism(**ref).logits)


def test_load_organism_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_base"):
        organism.load_organism(tmp_path / "nothing")


def test_train_base_refuses_to_overwrite(tmp_path):
    from rl.organism import train_base

    (tmp_path / "model.safetensors").write_bytes(b"precious")
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        train_base.main(["--out", str(tmp_path), "--steps", "1"])
    assert (tmp_path / "model.safetensors").read_bytes() == b"precious"


def test_train_base_end_to_end_writes_a_loadable_model_with_manifest(tmp_path):
    from rl.organism import train_base

    out = tmp_path / "org"
    train_base.main(["--out", str(out), "--steps", "2", "--batch-size", "4", "--tokenizer-corpus-items", "50",
                     "--eval-per-cell", "1", "--encoder-steps", "2", "--perception-steps", "1",
                     "--checkpoint-dir", str(tmp_path / "checkpoints")])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["train_config"]["steps"] == 2 and manifest["heldout"]["n_items"] == 21
    assert set(manifest["files"]) >= {"model.safetensors", "config.json"}
    assert verify_files(out) is None  # the checkpoint contract verifies the organism's folder too
    model, _ = organism.load_organism(out)
    assert model.config.text_config.num_experts == 8
    assert not list(tmp_path.glob("*.tmp"))  # the temporary folder was renamed into place
    assert "training done" in (tmp_path / "checkpoints" / "train.log").read_text()
    # measured again on a second held-out set (to select candidates on): the same shape, other items, weights untouched
    train_base.main(["--out", str(out), "--evaluate-only", "--eval-per-cell", "1", "--eval-seed", "20011"])
    again = json.loads((out / "manifest.json").read_text())
    assert again["train_config"]["eval_seed"] == 20011 and again["heldout"]["n_items"] == 21
    assert {int(i.split("-")[2]) for i in again["heldout"]["per_item"]["id"]} == {20011, 20012, 20013}  # per band
    assert not set(again["heldout"]["per_item"]["id"]) & set(manifest["heldout"]["per_item"]["id"])
    assert verify_files(out) is None


def test_frame_labels_follow_the_timeline(items):
    from rl.organism.train_base import frame_labels

    it = items[0]
    labels = frame_labels(it, 26)
    events = it.meta["events"]
    assert int(labels["onset"].sum()) == len(events)
    assert set(labels["ordinal"].unique().tolist()) == set(range(len(events) + 1))
    assert (labels["loudness"][labels["sound"] == 0] == -100).all()


def _tiny_cfg(**overrides):
    from rl.organism.train_base import BaseTrainConfig

    return BaseTrainConfig(**{**dict(steps=4, batch_size=2, encoder_steps=1, perception_steps=1, skill_steps=0,
                                     text_steps=1, text_skills=0.0, tokenizer_corpus_items=30,
                                     checkpoint_minutes=0.0), **overrides})


def test_sample_batch_phases():
    """Describe first, then text only (no audio: facts in the prompt or in the think block), then the mix."""
    from rl.organism.train_base import phase_of, sample_batch

    cfg = _tiny_cfg(batch_size=16, perception_steps=2, text_steps=3)
    assert [phase_of(cfg, s) for s in range(6)] == ["perception"] * 2 + ["text"] * 3 + ["mix"]
    items, modes, _ = sample_batch(cfg, 0)
    assert set(modes) == {"describe"} and all(it.audio is not None for it in items)
    items, modes, targets = sample_batch(cfg, 2)
    assert set(modes) == {"context", "notes", "chain"} and all(it.audio is None for it in items)
    for it, mode, target in zip(items, modes, targets):  # "chain" writes the inference steps, nothing else
        if mode == "chain":
            assert target.startswith("<think>\n" + " ".join(it.reference_chain[len(it.meta["levels"]):]) + "\n</think>")
    again = sample_batch(cfg, 2)
    assert [it.question for it in again[0]] == [it.question for it in items] and again[2] == targets


def test_skill_phase_trains_the_answer_sentence_of_short_plain_look_ups():
    """Between perception and text: facts + a sub-skill question as plain text, the loss on its answer sentence."""
    from rl import organism
    from rl.data import collate
    from rl.organism.train_base import phase_of, skill_batch

    cfg = _tiny_cfg(batch_size=4, perception_steps=1, skill_steps=2, text_steps=1)
    assert [phase_of(cfg, s) for s in range(5)] == ["perception", "skill", "skill", "text", "mix"]
    with_chat = _tiny_cfg(perception_steps=1, skill_steps=2, chat_skill_steps=2, text_steps=1)
    assert [phase_of(with_chat, s) for s in range(7)] == ["perception", "skill", "skill", "chat_skill", "chat_skill",
                                                            "text", "mix"]
    with_chains = _tiny_cfg(perception_steps=1, skill_steps=1, chat_skill_steps=1, chain_steps=2, text_steps=1)
    assert [phase_of(with_chains, s) for s in range(7)] == ["perception", "skill", "chat_skill", "chain", "chain",
                                                              "text", "mix"]
    prompts_, answers = skill_batch(cfg, 1)
    assert prompts_[0].startswith("Sound 1: ") and "What is the " in prompts_[0] and "<|im_start|>" not in prompts_[0]
    assert answers[0].startswith("Sound ") and answers[1].startswith("The ")  # a look-up, then a most-of
    assert skill_batch(cfg, 1) == (prompts_, answers) and skill_batch(cfg, 2) != (prompts_, answers)
    processor = organism.load_processor()
    batch = collate.encode_plain(processor, prompts_, answers)
    tok = processor.tokenizer
    for row, answer in enumerate(answers):
        trained = batch["labels"][row][batch["labels"][row] >= 0]
        assert tok.decode(trained) == answer
        kept = batch["input_ids"][row][batch["attention_mask"][row].bool()]
        assert tok.decode(kept) == prompts_[row] + answer


def test_text_phase_leans_on_the_multi_step_families_and_zero_keeps_the_old_stream():
    from rl.data.tasks import MULTI_STEP
    from rl.organism.train_base import sample_batch

    lean = sample_batch(_tiny_cfg(batch_size=64, perception_steps=0, text_steps=5, text_multistep=0.9), 1)[0]
    assert sum(it.family in MULTI_STEP for it in lean) >= 48  # 0.9 of 64 (seeded: 57)
    old = sample_batch(_tiny_cfg(batch_size=64, perception_steps=0, text_steps=5, text_multistep=0.0), 1)[0]
    assert sum(it.family in MULTI_STEP for it in old) <= 30  # 2 of 7 families
    mixed = sample_batch(_tiny_cfg(batch_size=64, perception_steps=0, text_steps=1, text_multistep=0.9,
                                   mix_text=0.0), 3)[0]
    assert [it.family for it in mixed] == [it.family for it in sample_batch(  # the mix phase ignores it
        _tiny_cfg(batch_size=64, perception_steps=0, text_steps=1, text_multistep=0.0, mix_text=0.0), 3)[0]]


def test_text_skills_replace_a_share_of_text_items_and_zero_keeps_the_stream():
    from rl.data.tasks import SKILLS
    from rl.organism.train_base import sample_batch

    cfg = dict(batch_size=64, perception_steps=0, text_steps=5, text_multistep=0.5)
    skilled = sample_batch(_tiny_cfg(**cfg, text_skills=0.5), 1)[0]
    assert 20 <= sum(it.family in SKILLS for it in skilled) <= 44  # half of 64 (seeded)
    plain = sample_batch(_tiny_cfg(**cfg, text_skills=0.0), 1)[0]
    assert not any(it.family in SKILLS for it in plain)
    kept = [a.question for a, b in zip(plain, skilled) if b.family not in SKILLS]
    assert kept == [b.question for b in skilled if b.family not in SKILLS]  # the other items are v4's own


def test_lookup_unnamed_hides_the_sound_in_look_up_chains_only_and_zero_keeps_the_stream():
    """``lookup_unnamed``: a look-up written as a chain asks about "a sound" (its think text names which); a look-up
    answered without a chain keeps its sound (it would have no answer), and every other example is unchanged."""
    import re

    from rl.organism.train_base import sample_batch

    cfg = dict(batch_size=64, perception_steps=0, text_steps=5, text_multistep=0.5, text_skills=0.5, text_chain=0.5)
    named = sample_batch(_tiny_cfg(**cfg, lookup_unnamed=0.0), 1)
    unnamed = sample_batch(_tiny_cfg(**cfg, lookup_unnamed=1.0), 1)
    assert named[1] == unnamed[1] and named[2] == unnamed[2]  # the same modes and targets
    changed = 0
    for a, b, mode in zip(named[0], unnamed[0], named[1]):
        hidden = a.family == "attribute_of_sound" and mode == "chain"
        assert b.question == (re.sub(r"Sound \d+", "a sound", a.question) if hidden else a.question)
        assert (b.answer, b.reference_chain, b.meta) == (a.answer, a.reference_chain, a.meta)
        changed += hidden and "Sound" in a.question
    assert changed >= 3  # seeded: some look-up chains in 64 examples


def test_notes_chain_writes_the_steps_after_the_notes_and_zero_keeps_the_stream():
    """``notes_chain``: a notes example's think block goes on with the item's inference steps before the answer
    (internalized as the chains are); every other example, and each example's items and modes, unchanged."""
    from rl.evaluate import inference_steps
    from rl.organism.train_base import sample_batch

    cfg = dict(batch_size=64, perception_steps=0, text_steps=5, text_multistep=0.5, internalize=0.0)
    plain = sample_batch(_tiny_cfg(**cfg, notes_chain=0.0), 1)
    chained = sample_batch(_tiny_cfg(**cfg, notes_chain=1.0), 1)
    assert [it.id for it in plain[0]] == [it.id for it in chained[0]] and plain[1] == chained[1]
    n_notes = 0
    for it, mode, a, b in zip(plain[0], plain[1], plain[2], chained[2]):
        if mode != "notes":
            assert a == b
            continue
        n_notes += 1
        assert a[0] == b[0] == f"<think>\n{it.meta['description']}\n"  # the notes, pre-filled
        assert a[1] == f"</think>\n\n<answer>{it.answer}</answer><|im_end|>"
        assert b[1] == " ".join(inference_steps(it)) + "\n" + a[1]
    assert n_notes >= 5  # seeded: about 0.3 of 64 examples


def test_notes_own_trains_the_description_after_the_first_word_on_audio_only():
    """``notes_own``: a mix notes example on audio keeps only "<think>\\nSound" as prompt, so the model writes its own
    notes (the same text, now a target) and whether to think stays untrained; text examples keep their given notes."""
    from rl.organism.train_base import sample_batch

    cfg = dict(batch_size=64, perception_steps=0, text_steps=0, mix_text=0.3)
    given = sample_batch(_tiny_cfg(**cfg, notes_own=0.0), 1)
    own = sample_batch(_tiny_cfg(**cfg, notes_own=1.0), 1)
    assert [it.id for it in given[0]] == [it.id for it in own[0]] and given[1] == own[1]
    n_own = n_text = 0
    for it, mode, a, b in zip(given[0], given[1], given[2], own[2]):
        if mode != "notes" or it.audio is None:
            assert a == b
            n_text += mode == "notes"
            continue
        n_own += 1
        assert b[0] == "<think>\nSound" and b[0] + b[1] == a[0] + a[1]
    assert n_own >= 5 and n_text >= 1  # seeded


def test_unnamed_lookup_takes_look_up_items_only():
    import numpy as np
    import pytest

    from rl.data.tasks import make_item, unnamed_lookup

    item = make_item("attribute_of_sound", "easy", np.random.default_rng(3), "x")
    assert unnamed_lookup(item).question == item.question.replace(item.question.split(" of ")[1][:-1], "a sound")
    with pytest.raises(ValueError, match="attribute_of_sound"):
        unnamed_lookup(make_item("pitch_of_loudest", "easy", np.random.default_rng(3), "y"))


def test_mix_rehearses_text_phase_examples_and_leaves_the_text_phase_alone():
    """``mix_text`` of the mix's examples are text-phase examples (no audio, written facts, chains internalized);
    it changes nothing before the mix, so a resume from before the mix may change it."""
    from rl.data.tasks import MULTI_STEP
    from rl.organism.train_base import sample_batch

    cfg = dict(batch_size=64, perception_steps=0, text_steps=3, text_multistep=0.5)
    items, modes, targets = sample_batch(_tiny_cfg(**cfg, mix_text=0.5), 3)
    rehearsed = [(it, m, t) for it, m, t in zip(items, modes, targets) if it.audio is None]
    assert 20 <= len(rehearsed) <= 44  # half of 64 (seeded)
    assert {m for _, m, _ in rehearsed} <= {"context", "notes", "chain"}
    assert all(t.startswith("<think>\n\n</think>") for _, m, t in rehearsed if m == "chain")  # fully internalized
    assert sum(it.family in MULTI_STEP for it, _, _ in rehearsed) >= len(rehearsed) / 4
    none = sample_batch(_tiny_cfg(**cfg, mix_text=0.0), 3)
    assert all(it.audio is not None for it in none[0]) and "chain" not in none[1]
    for step in range(3):  # the text phase is the same stream whatever mix_text is
        a, b = sample_batch(_tiny_cfg(**cfg, mix_text=0.5), step), sample_batch(_tiny_cfg(**cfg, mix_text=0.0), step)
        assert [it.question for it in a[0]] == [it.question for it in b[0]] and a[1:] == b[1:]


def test_every_answer_is_one_token_of_the_organisms_tokenizer():
    """Answers follow "<answer>" with no leading space; without them in the corpus BPE splits them ("hi" "g" "h")."""
    from rl import organism
    from rl.data.tasks import generate_items
    from rl.organism.train_base import tokenizer_corpus

    answers = sorted({it.answer for it in generate_items(140, seed=3)} - {"it stays the same"})
    for with_answers, expect_whole in ((True, True), (False, False)):
        tok = organism.train_tokenizer(tokenizer_corpus(600, seed=777, answers=with_answers))
        whole = [len(tok(a, add_special_tokens=False)["input_ids"]) <= 2 and
                 len(tok(a.split()[0], add_special_tokens=False)["input_ids"]) == 1 for a in answers]
        assert all(whole) if expect_whole else not all(whole)


def test_internalization_starts_after_its_share_of_the_text_phase():
    from rl.organism.train_base import internalized_share

    cfg = _tiny_cfg(perception_steps=10, text_steps=100, internalize=0.8)
    assert [internalized_share(cfg, s) for s in (10, 60, 110, 500)] == pytest.approx([0.0, 0.4, 0.8, 0.8])
    late = _tiny_cfg(perception_steps=10, text_steps=100, internalize=1.0, internalize_after=0.5)
    assert [internalized_share(late, s) for s in (10, 60, 85, 110)] == pytest.approx([0.0, 0.0, 0.5, 1.0])


def test_latent_think_sometimes_starts_reasoning():
    """Latent think blocks hold the perception text, and with ``chain`` a strict prefix of the inference steps."""
    from rl.data.tasks import generate_items
    from rl.evaluate import inference_steps
    from rl.organism.train_base import think_target

    it = generate_items(1, seed=0, families=["highest_longest"])[0]
    plain = think_target(it, np.random.default_rng(0), chain=False)
    assert it.meta["description"] in plain and not any(s in plain for s in inference_steps(it))
    chained = think_target(it, np.random.default_rng(0), chain=True)
    held = [s for s in inference_steps(it) if s in chained]
    assert 1 <= len(held) < len(inference_steps(it)) and chained.endswith(f"<answer>{it.answer}</answer><|im_end|>")


def test_config_of_reads_an_organism_manifest_or_a_checkpoint(tmp_path):
    """Options added since a model was trained take the values that reproduce it; a checkpoint has its own config."""
    from rl.organism.train_base import config_of, encoder_items, heldout_items, sample_batch
    from rl.train import checkpoint as ckpt

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text(json.dumps({"train_config": {"steps": 7, "mode_weights": [1, 0,
                                                                                 0, 0, 0], "retired": 1}}))
    old = config_of(tmp_path / "old")
    assert old.steps == 7 and old.mode_weights == (1, 0, 0, 0, 0) and not old.calibrated_audio
    assert old.tune_mode_weights is None and old.tune_mix_text is None  # added later: the mix's own
    tuned = {"train_config": {"tune_mode_weights": [0, 0, 0, 1, 0]}}
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(tuned))
    assert config_of(tmp_path / "old").tune_mode_weights == (0, 0, 0, 1, 0)
    state = ckpt.TrainerState(step=1, stage=1, stage_step=1, data_position={},
                              config={"steps": 9, "calibrated_audio": True})
    (tmp_path / "ckpt" / "trainer_state").mkdir(parents=True)
    (tmp_path / "ckpt" / "trainer_state" / "state.json").write_text(json.dumps(dataclasses.asdict(state)))
    cfg = config_of(tmp_path / "ckpt")
    assert cfg.steps == 9 and cfg.calibrated_audio
    # a calibrated run hears calibrated clips everywhere it hears audio
    cfg = _tiny_cfg(calibrated_audio=True, eval_per_cell=1)
    assert all(it.meta["calibrated"] for it in heldout_items(cfg) + encoder_items(cfg, 0) + sample_batch(cfg, 0)[0])


def test_train_base_resumes_exactly(tmp_path):
    """Cut after a checkpoint, resume: the weights equal those of an uninterrupted run (data is a function of step)."""
    from rl.organism.train_base import train
    from rl.train import checkpoint as ckpt

    # every phase: perception, skill, chat skill, chain, text, mix
    cfg = _tiny_cfg(steps=6, skill_steps=1, chat_skill_steps=1, chain_steps=1)
    full, _, history, _ = train(cfg, log=lambda _: None, checkpoint_dir=tmp_path / "a")
    assert [h["phase"] for h in history if "phase" in h][-1] == "mix"
    train(cfg, log=lambda _: None, checkpoint_dir=tmp_path / "b")
    steps = [step for step, _ in ckpt.list_checkpoints(tmp_path / "b")]
    assert steps == [1, 2, 3, 4, 5, 6, 7]  # each phase's end (encoder, perception, ..., text) and the newest two
    shutil.rmtree(ckpt.list_checkpoints(tmp_path / "b")[-1][1])  # as if cut after decoder step 5 of 6
    assert ckpt.find_latest(tmp_path / "b", log=lambda _: None).name == "step-000006"
    resumed, _, history_b, _ = train(cfg, log=lambda _: None, checkpoint_dir=tmp_path / "b", resume=True)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert history_b[-1]["step"] == history[-1]["step"] == 6
    with pytest.raises(SystemExit, match="another config"):
        train(_tiny_cfg(lr=5e-4), log=lambda _: None, checkpoint_dir=tmp_path / "b", resume=True)


def test_train_base_changes_its_decoder_plan_from_the_encoder_checkpoint(tmp_path):
    """The checkpoint at the end of the encoder phase accepts other decoder options (steps, phases, mix), not other
    encoder options: the encoder's clips are a stream of their own."""
    from rl.organism.train_base import train
    from rl.train import checkpoint as ckpt

    train(_tiny_cfg(steps=1, perception_steps=1, text_steps=0), log=lambda _: None, checkpoint_dir=tmp_path)
    for _, path in ckpt.list_checkpoints(tmp_path)[1:]:
        shutil.rmtree(path)  # keep only the encoder checkpoint (decoder step 0)
    with pytest.raises(SystemExit, match="encoder_lr"):
        train(_tiny_cfg(encoder_lr=1e-4), log=lambda _: None, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(SystemExit, match="tokenizer's corpus"):  # no sub-skill was trained: its tokenizer lacks them
        train(_tiny_cfg(skill_steps=1), log=lambda _: None, checkpoint_dir=tmp_path, resume=True)
    lines = []
    _, _, history, _ = train(_tiny_cfg(steps=2, mode_weights=(0.5, 0.0, 0.5, 0.0, 0.0)), log=lines.append,
                             checkpoint_dir=tmp_path, resume=True)
    assert history[-1]["step"] == 2 and any("resuming" in line for line in lines)


def test_train_base_changes_its_mix_from_a_checkpoint_before_the_mix(tmp_path):
    """Up to the mix's first step a resume may change the mix's options (and trains what a fresh run with them
    would), not the text phase's; inside the mix, neither."""
    from rl.organism.train_base import train
    from rl.train import checkpoint as ckpt

    cfg = dict(steps=5, perception_steps=1, text_steps=3)  # the mix is decoder step 4 (0-based)
    train(_tiny_cfg(**cfg, mix_text=0.0), log=lambda _: None, checkpoint_dir=tmp_path / "a")
    shutil.rmtree(ckpt.list_checkpoints(tmp_path / "a")[-1][1])  # keep the one after decoder step 4
    with pytest.raises(SystemExit, match="text_chain"):
        train(_tiny_cfg(**cfg, mix_text=0.0, text_chain=0.9), log=lambda _: None, checkpoint_dir=tmp_path / "a",
              resume=True)
    resumed, _, _, _ = train(_tiny_cfg(**cfg, mix_text=1.0), log=lambda _: None, checkpoint_dir=tmp_path / "a",
                             resume=True)
    fresh, _, _, _ = train(_tiny_cfg(**cfg, mix_text=1.0), log=lambda _: None, checkpoint_dir=tmp_path / "b")
    for (name, a), b in zip(fresh.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    with pytest.raises(SystemExit, match="mix_text"):  # the newest checkpoint is inside the mix now
        train(_tiny_cfg(**cfg, mix_text=0.5), log=lambda _: None, checkpoint_dir=tmp_path / "a", resume=True)


def test_tune_phase_goes_on_from_the_mix_end_at_the_final_learning_rate_with_its_own_latent_think(tmp_path):
    """From the checkpoint at the mix's end a resume may add a tune phase (and trains what a fresh run with it would):
    the mix's data at 10% of the peak learning rate, its think examples opening the block at ``tune_latent_think``."""
    from rl.organism.train_base import lr_at, phase_of, sample_batch, train

    cfg = dict(steps=5, perception_steps=1, text_steps=3)
    think_only = _tiny_cfg(**cfg, mode_weights=(0, 0, 0, 0, 1.0), mix_text=0.0, latent_think=0.0, tune_steps=2,
                           tune_latent_think=1.0)
    assert [phase_of(think_only, s) for s in range(7)] == ["perception"] + ["text"] * 3 + ["mix"] + ["tune"] * 2
    assert lr_at(5, think_only) == lr_at(6, think_only) == pytest.approx(0.1 * think_only.lr)
    long = dataclasses.replace(think_only, steps=500, tune_steps=10)
    assert lr_at(498, long) > lr_at(499, long) > lr_at(500, long) == lr_at(509, long) == pytest.approx(0.1 * long.lr)
    for step, opened in ((4, False), (5, True)):
        _, modes, targets = sample_batch(think_only, step)
        assert set(modes) == {"think"} and {t.startswith("<think>\nSound") for t in targets} == {opened}
    text_only = dataclasses.replace(think_only, tune_mix_text=1.0)  # the mix's share stays 0; the tune's is 1
    assert {it.audio is None for it in sample_batch(text_only, 4)[0]} == {False}
    items, modes, _ = sample_batch(text_only, 5)
    assert {it.audio is None for it in items} == {True} and "think" not in modes
    notes_only = dataclasses.replace(think_only, tune_mode_weights=(0, 0, 0, 1.0, 0))  # the tune's skills: notes
    assert set(sample_batch(notes_only, 4)[1]) == {"think"} and set(sample_batch(notes_only, 5)[1]) == {"notes"}

    train(_tiny_cfg(**cfg), log=lambda _: None, checkpoint_dir=tmp_path / "a")  # no tune phase: ends at the mix's end
    with pytest.raises(SystemExit, match="latent_think"):  # the mix's own options are fixed by now
        train(_tiny_cfg(**cfg, latent_think=0.5, tune_steps=2), log=lambda _: None, checkpoint_dir=tmp_path / "a",
              resume=True)
    tune = dict(tune_steps=2, tune_latent_think=0.7)
    lines = []
    resumed, _, history, _ = train(_tiny_cfg(**cfg, **tune), log=lines.append, checkpoint_dir=tmp_path / "a",
                                   resume=True)
    assert any("decoder step 5/7" in line for line in lines) and history[-1] == {**history[-1], "step": 7,
                                                                                  "phase": "tune"}
    fresh, _, _, _ = train(_tiny_cfg(**cfg, **tune), log=lambda _: None, checkpoint_dir=tmp_path / "b")
    for (name, a), b in zip(fresh.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    with pytest.raises(SystemExit, match="tune_latent_think"):  # inside the tune phase it is fixed too
        train(_tiny_cfg(**cfg, tune_steps=3, tune_latent_think=0.2), log=lambda _: None,
              checkpoint_dir=tmp_path / "a", resume=True)


def test_train_base_changes_its_text_phase_from_a_checkpoint_before_it(tmp_path):
    """Up to the text phase's first step a resume may change the text phase's options (and up to the chain phase's, its
    length) and trains what a fresh run with them would; inside the text phase it refuses."""
    from rl.organism.train_base import train
    from rl.train import checkpoint as ckpt

    cfg = dict(steps=5, perception_steps=1, chat_skill_steps=1, text_steps=2)  # the text phase: decoder steps 2, 3
    train(_tiny_cfg(**cfg), log=lambda _: None, checkpoint_dir=tmp_path / "a")
    for step, path in ckpt.list_checkpoints(tmp_path / "a"):
        if step > 1 + 2:  # the encoder's step, then two decoder steps: keep up to the text phase's start
            shutil.rmtree(path)
    # a chain phase too: the text phase moves one step on, the mix shortens (``steps`` stays)
    changed = dict(cfg, text_chain=1.0, internalize=0.5, text_multistep=1.0, text_skills=0.5, chain_steps=1)
    resumed, _, _, _ = train(_tiny_cfg(**changed), log=lambda _: None, checkpoint_dir=tmp_path / "a", resume=True)
    fresh, _, _, _ = train(_tiny_cfg(**changed), log=lambda _: None, checkpoint_dir=tmp_path / "b")
    for (name, a), b in zip(fresh.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    shutil.rmtree(ckpt.list_checkpoints(tmp_path / "b")[-1][1])  # the newest is now the text phase's end
    assert ckpt.find_latest(tmp_path / "b", log=lambda _: None).name == "step-000005"
    with pytest.raises(SystemExit, match="text_chain"):
        train(_tiny_cfg(**dict(changed, text_chain=0.5)), log=lambda _: None, checkpoint_dir=tmp_path / "b",
              resume=True)


def test_shipped_organism_matches_its_manifest():
    """The shipped weights are the ones the manifest measured (sha256): every layer MoE, top-2 of at least 8 experts,
    at most 25 MB."""
    manifest = organism.read_manifest()
    for name, meta in manifest["files"].items():
        assert sha256(organism.ORGANISM_DIR / name) == meta["sha256"], name
    text = json.loads((organism.ORGANISM_DIR / "config.json").read_text())["text_config"]
    assert text["num_hidden_layers"] >= 12 and text["num_experts"] >= 8 and text["num_experts_per_tok"] == 2
    assert text["mlp_only_layers"] == [] and text["decoder_sparse_step"] == 1
    assert (organism.ORGANISM_DIR / "model.safetensors").stat().st_size <= 25_000_000
    assert manifest["heldout"]["n_items"] == 420 and manifest["train_config"]["seed"] == manifest["seed"]


def test_synthetic_rl_data_is_rendered_as_the_model_hears(tmp_path):
    from rl.train.config import DataConfig
    from rl.train.grpo import load_data

    (tmp_path / "manifest.json").write_text(json.dumps({"train_config": {"calibrated_audio": True}}))
    plain = tmp_path / "plain"  # a model trained on peak-normalised clips (v3c, the organism before v16)
    plain.mkdir()
    (plain / "manifest.json").write_text(json.dumps({"train_config": {"calibrated_audio": False}}))
    data = DataConfig(n_items=3)
    assert all(it.meta["calibrated"] for it in load_data(data, where="x", model_path=str(tmp_path)))
    assert not any(it.meta["calibrated"] for it in load_data(data, where="x", model_path=str(plain)))
    explicit = dataclasses.replace(data, calibrated=False)
    assert not any(it.meta["calibrated"] for it in load_data(explicit, where="x", model_path=str(tmp_path)))
    # a GRPO checkpoint of that model hears as the model its run started from
    (tmp_path / "rl" / "trainer_state").mkdir(parents=True)
    (tmp_path / "rl" / "trainer_state" / "state.json").write_text(json.dumps({"config": {"model": str(tmp_path)}}))
    (tmp_path / "rl" / "manifest.json").write_text(json.dumps({"format": 1, "step": 3, "files": {}}))
    assert organism.calibrated_audio(tmp_path / "rl") and not organism.calibrated_audio(plain)
    # ... and one of the shipped organism, which a training config names "organism" (the demo's runs)
    (tmp_path / "demo" / "trainer_state").mkdir(parents=True)
    (tmp_path / "demo" / "trainer_state" / "state.json").write_text(json.dumps({"config": {"model": "organism"}}))
    assert organism.calibrated_audio(tmp_path / "demo") == organism.calibrated_audio(organism.ORGANISM_DIR) is True


def test_train_base_refuses_skill_weights_that_are_not_one_per_skill_summing_to_one(capsys):
    """A typo in ``--mode-weights`` or ``--tune-mode-weights`` stops at parsing, naming the skills, before any run."""
    from rl import cli_options
    from rl.organism import train_base

    ap = cli_options.parser(cli_options.train_base_arguments)
    assert ap.parse_args(["--tune-mode-weights", "0,0,0,1,0"]).tune_mode_weights == (0, 0, 0, 1, 0)
    assert ap.parse_args([]).tune_mode_weights is None
    for bad in ("0.5,0.5", "0.2,0.2,0.2,0.2,0.3"):
        with pytest.raises(SystemExit):
            train_base.main(["--tune-mode-weights", bad])
        assert "answer, describe, context, notes, think" in capsys.readouterr().err
