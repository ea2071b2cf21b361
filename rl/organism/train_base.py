"""Train the base model organism: perceive a clip and answer directly, never reason in ``<think>``.

``python -m rl.organism.train_base --out DIR`` builds the tokenizer from the task corpus, a fresh tiny
Qwen3-Omni-MoE thinker,
and trains it on a stream of freshly generated synthetic items (no item is seen twice), in three phases:

1. the audio encoder alone, with linear heads on frame-level acoustic facts (``encoder_steps``). Without it the
   decoder, trained from scratch, learns the text prior first and then treats the audio as noise: the audio
   embeddings collapse to a constant and every clip gets the same description (measured; see the manifest);
2. describing clips only (``perception_steps``), so hearing pays before anything else does;
3. the multi-step families' sub-skills on short plain-text sequences (``skill_steps``, ``skill_batch``): read one
   attribute of Sound k, find the highest / longest / loudest sound, from facts written out;
4. the same sub-skills in the chat format (``chat_skill_steps``, ``chat_skill_texts``): the think-first prompt with
   the facts written in it, the answer sentence in the think block, then the answer;
5. whole multi-step chains in the same format (``chain_steps``, ``chain_texts``): every inference step in the think
   block, then the answer; the look-up inside a chain, where only the previous step names the sound, is learned here;
6. answers from facts written as text, no audio (``text_steps``);
7. the mix of the skills below (supervised next-token loss on the completion);
8. optionally (``tune_steps``) the mix again at the final learning rate, with its own share of latent think examples
   (``tune_latent_think``), of text examples (``tune_mix_text``) and of each skill (``tune_mode_weights``): from the
   mix's end checkpoint, it sets how readily the base opens its think block and what it rehearses.

* ``answer``   - question about the clip -> ``<think>\\n\\n</think>\\n\\n<answer>CHOICE</answer>`` (Qwen3 non-thinking)
* ``describe`` - "Describe each sound in order." -> the perception text ("Sound 1: a high tone, long, loud. ...")
* ``context``  - the same facts *written in the prompt* instead of the audio -> the answer. This is the skill that
  makes a reasoning chain pay: once the facts are written out, multi-step questions become easy.
* ``notes``    - the think-first prompt with the clip's perception text already in the think block, read but not
  trained on (no loss on it); trained: ``</think>`` and the answer. The base learns to *use* notes in its think
  block without learning to *write* them, so writing them stays RL's discovery. Without this skill the first RL
  runs raised the think-rate and lost accuracy: the answer after a think block was near chance (measured).
* ``think``    - the think-first prompt. The base mostly ignores the instruction and leaves the think block empty;
  in a small fraction (``latent_think``) its think block holds the perception text only (no inference steps), as a
  pretrained model's chain-of-thought is latent and rare. RL has to make it the rule.

At the end it measures the model on a held-out set (``rl.evaluate``) and writes the folder atomically: weights,
config, tokenizer, processor and ``manifest.json`` (config, seed, sha256 of every file, training time, accuracy).
It refuses to overwrite an existing model unless ``--force``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from adt_probe.integrity import file_manifest, versions
from rl import cli_options, organism
from rl.data import collate, prompts
from rl.data.items import SAMPLE_RATE
from rl.data.tasks import (
    DIFFICULTY_BANDS,
    FAMILIES,
    MULTI_STEP,
    SKILLS,
    generate_items,
    heldout_set,
    make_item,
    unnamed_lookup,
)
from rl.evaluate import evaluate, format_table, inference_steps
from rl.organism.recipe import (
    ADDED_OPTIONS,
    CHAIN_OPTIONS,
    ENCODER_OPTIONS,
    MIX_OPTIONS,
    MODES,
    RESUMABLE_CHANGES,
    TEXT_OPTIONS,
    TUNE_OPTIONS,
    BaseTrainConfig,
    tokenizer_has_skills,
)
from rl.train import checkpoint as ckpt
from rl.train.checkpoint import replace_dir


def tokenizer_corpus(n_items: int, seed: int, answers: bool = True, skills: bool = False) -> list[str]:
    """Every kind of text the organism reads or writes, from ``n_items`` synthetic items plus the fixed prompts;
    with ``answers`` also each answer as a target writes it (``<answer>middle</answer>``), so it is one token; with
    ``skills`` also items of the sub-skill families (``rl.data.tasks.SKILLS``)."""
    texts = [prompts.SYSTEM, prompts.DESCRIBE, prompts.THINK_INSTRUCTION, prompts.ANSWER_INSTRUCTION,
             "system user assistant Sounds: Choices:"]
    names = sorted(SKILLS)
    extra = [make_item(names[i % len(names)], "easy", np.random.default_rng([seed, i]), f"corpus-skill-{i}")
             for i in range(n_items // 4 if skills else 0)]
    for it in generate_items(n_items, seed=seed, prefix="corpus") + extra:
        texts += [it.question, prompts.format_choices(it.choices), " ".join(it.reference_chain or []),
                  it.meta["description"]] + ([prompts.target(it, "answer")] if answers else [])
    return texts


#: the decoder's phases in order (see the module docstring); each lasts ``BaseTrainConfig.<phase>_steps`` but the mix,
#: which lasts until ``steps``
PHASES = ("perception", "skill", "chat_skill", "chain", "text", "mix", "tune")


def phase_steps(cfg: BaseTrainConfig, phase: str) -> int:
    """The number of decoder steps of ``phase``."""
    return max(0, cfg.steps - phase_start(cfg, "mix")) if phase == "mix" else getattr(cfg, f"{phase}_steps")


def phase_start(cfg: BaseTrainConfig, phase: str) -> int:
    """The first decoder step of ``phase``."""
    return sum(phase_steps(cfg, p) for p in PHASES[:PHASES.index(phase)])


def total_steps(cfg: BaseTrainConfig) -> int:
    """Decoder steps in all: the schedule's ``steps``, then the tune phase's."""
    return cfg.steps + cfg.tune_steps


def phase_of(cfg: BaseTrainConfig, step: int) -> str:
    """The phase of decoder step ``step``: one of ``PHASES`` (without a tune phase, every step after the others is the
    mix's)."""
    if cfg.tune_steps and step >= phase_start(cfg, "tune"):
        return "tune"
    return next((p for p in PHASES[:-2] if step < phase_start(cfg, p) + phase_steps(cfg, p)), "mix")


def skill_example(item) -> tuple[str, str]:
    """A sub-skill item (``rl.data.tasks.SKILLS``) as plain text: (facts and question, its answer sentence)."""
    return f"{item.meta['description']}\n{item.question}\n", item.reference_chain[-1]


def skill_items(cfg: BaseTrainConfig, step: int) -> list:
    """The skill phase's ``batch_size`` items for ``step`` (deterministic in (seed, step)), the sub-skills of
    ``rl.data.tasks.SKILLS`` alternating in sorted order (the look-up ``attribute_of_sound`` first)."""
    names = sorted(SKILLS)
    return [make_item(names[j % len(names)], "easy", np.random.default_rng([cfg.seed, 7, step, j]),
                      f"skill-{step}-{j}") for j in range(cfg.batch_size)]


def skill_batch(cfg: BaseTrainConfig, step: int):
    """The skill phase's batch for ``step``: the ``encode_plain`` inputs (facts + question, answer sentence), each a
    list of ``batch_size`` strings."""
    prompts_, answers = zip(*map(skill_example, skill_items(cfg, step)))
    return list(prompts_), list(answers)


def think_close(item) -> str:
    """The end of every target that writes a think block: ``</think>``, then the item's answer and the end of turn (the
    think text before it ends with a newline)."""
    return prompts.answer_tail(item) + "<|im_end|>"


def chat_skill_texts(processor, items, answers: bool = True) -> tuple[list[str], list[str]]:
    """Sub-skill ``items`` in the chat format: (the think-first prompt with the written facts, ending in ``<think>``;
    the answer sentence, with ``answers`` followed by ``</think>`` and the answer), the ``encode_plain`` inputs."""
    chat = collate.prompt_texts(processor, items, "think", contexts=[it.meta["description"] for it in items])
    tail = ["\n" + think_close(it) if answers else "" for it in items]
    return [c + "<think>\n" for c in chat], [it.reference_chain[-1] + t for it, t in zip(items, tail)]


def chain_texts(processor, cfg: BaseTrainConfig, step: int) -> tuple[list[str], list[str]]:
    """The chain phase's ``encode_plain`` inputs for ``step``: ``batch_size`` items of the multi-step families
    (alternating, every difficulty in turn; deterministic in (seed, step)) in the chat format, the facts in the prompt
    and the whole chain as the target: every inference step in the think block, then the answer."""
    bands = list(DIFFICULTY_BANDS)
    items = [make_item(MULTI_STEP[j % len(MULTI_STEP)], bands[j % len(bands)],
                       np.random.default_rng([cfg.seed, 11, step, j]), f"chain-{step}-{j}")
             for j in range(cfg.batch_size)]
    prompts_, _ = chat_skill_texts(processor, items, answers=False)
    return prompts_, [" ".join(inference_steps(it)) + "\n" + think_close(it) for it in items]


#: The phases trained on text sequences alone (``collate.encode_plain``): phase -> (processor, config, step) ->
#: (prompts, targets). The other phases draw items with a skill each (``sample_batch``).
PLAIN_PHASES = {
    "skill": lambda processor, cfg, step: skill_batch(cfg, step),
    "chat_skill": lambda processor, cfg, step: chat_skill_texts(processor, skill_items(cfg, step)),
    "chain": chain_texts,
}


def decoder_batch(processor, cfg: BaseTrainConfig, step: int) -> dict[str, torch.Tensor]:
    """The model inputs of decoder step ``step`` (``input_ids``, ``attention_mask``, ``labels``, and the audio
    features in the phases with audio): the phase's data, deterministic in (seed, step)."""
    phase = phase_of(cfg, step)
    if phase in PLAIN_PHASES:
        return collate.encode_plain(processor, *PLAIN_PHASES[phase](processor, cfg, step))
    return collate.encode_supervised(processor, *sample_batch(cfg, step))


def think_target(item, rng: np.random.Generator, chain: bool) -> str:
    """A latent think block: the perception text, with ``chain`` followed by the first 1..all-but-one inference steps
    of the reference chain (a partial chain: the base sometimes starts reasoning, never finishes it)."""
    facts = item.meta["description"]
    steps = (item.reference_chain or [])[len(item.meta["levels"]):]
    if chain and len(steps) > 1:
        facts += " " + " ".join(steps[:int(rng.integers(1, len(steps)))])
    return f"<think>\n{facts}\n" + think_close(item)


def internalized_share(cfg: BaseTrainConfig, step: int) -> float:
    """The share of a chain's inference steps left out at decoder step ``step`` (stepwise internalization): 0 for
    the first ``internalize_after`` of the text phase, then growing linearly to ``internalize`` at its end (and in the
    mix)."""
    done = (step - phase_start(cfg, "text")) / max(1, cfg.text_steps)  # share of the text phase done; > 1 in the mix
    return cfg.internalize * min(1.0, max(0.0, done - cfg.internalize_after) / max(1e-9, 1 - cfg.internalize_after))


def kept_steps(cfg: BaseTrainConfig, step: int, item) -> list[str]:
    """The inference steps a chain of ``item`` still writes at decoder step ``step``: the reference's, less the
    internalized prefix (``internalized_share``)."""
    steps = inference_steps(item)
    return steps[int(internalized_share(cfg, step) * len(steps)):]


def mix_setting(cfg: BaseTrainConfig, phase: str, name: str):
    """The mix's setting ``name`` (``latent_think``, ``mix_text``, ``mode_weights``), or in the tune phase its own
    ``tune_<name>`` where that is set (not None)."""
    tuned = getattr(cfg, f"tune_{name}")
    return tuned if phase == "tune" and tuned is not None else getattr(cfg, name)


def sample_batch(cfg: BaseTrainConfig, step: int):
    """Fresh items and their skill for one step: (items, modes, targets); deterministic in (seed, step).

    Text-phase items carry no audio (``audio=None``): their notes examples are the think-first prompt without the
    clip, so the decoder learns to combine facts wherever they are written.
    """
    rng = np.random.default_rng([cfg.seed, 1, step])
    families, bands = list(FAMILIES), list(DIFFICULTY_BANDS)
    phase = phase_of(cfg, step)
    items, modes, targets = [], [], []
    for j in range(cfg.batch_size):
        item_rng = np.random.default_rng([cfg.seed, 2, step, j])
        family = families[int(rng.integers(len(families)))]
        # a text-phase example: in the text phase, or rehearsed in the mix (a stream of its own: mix_text = 0 keeps
        # v5's data)
        share = mix_setting(cfg, phase, "mix_text")
        text = phase == "text" or (phase in ("mix", "tune") and share > 0
                                   and np.random.default_rng([cfg.seed, 8, step, j]).random() < share)
        if text and cfg.text_multistep > 0:  # a stream of its own: text_multistep = 0 keeps v3c's data
            pick = np.random.default_rng([cfg.seed, 5, step, j])
            pool = MULTI_STEP if pick.random() < cfg.text_multistep else [f for f in families if f not in MULTI_STEP]
            family = pool[int(pick.integers(len(pool)))]
        if text and cfg.text_skills > 0:  # also a stream of its own: text_skills = 0 keeps v4's data
            pick = np.random.default_rng([cfg.seed, 6, step, j])
            if pick.random() < cfg.text_skills:
                family = sorted(SKILLS)[int(pick.integers(len(SKILLS)))]
        it = make_item(family, bands[int(rng.integers(len(bands)))], item_rng, f"train-{step}-{j}",
                       calibrated=cfg.calibrated_audio)
        if phase == "perception":
            mode = "describe"
        elif text:
            mode = "chain" if rng.random() < cfg.text_chain else ("context", "notes")[int(rng.integers(2))]
            it = dataclasses.replace(it, audio=None)
        else:
            mode = MODES[int(rng.choice(len(MODES), p=mix_setting(cfg, phase, "mode_weights")))]
        if mode == "answer" and cfg.direct_multistep < 1 and it.family in MULTI_STEP \
                and rng.random() >= cfg.direct_multistep:
            mode = "notes"
        if mode == "chain" and family == "attribute_of_sound" and cfg.lookup_unnamed > 0 \
                and np.random.default_rng([cfg.seed, 9, step, j]).random() < cfg.lookup_unnamed:
            it = unnamed_lookup(it)  # in a chain only: without its think text the question has no answer
        if mode == "chain":
            steps = kept_steps(cfg, step, it)
            target = f"<think>\n{' '.join(steps)}\n" + think_close(it)
        elif mode == "notes":
            steps = kept_steps(cfg, step, it) if cfg.notes_chain > 0 and np.random.default_rng(
                [cfg.seed, 10, step, j]).random() < cfg.notes_chain else []  # a stream of its own, as above
            chain = " ".join(steps) + "\n" if steps else ""
            given = prompts.notes_prefill(it, "given")
            target = (given, chain + think_close(it))
            if it.audio is not None and cfg.notes_own > 0 and np.random.default_rng(
                    [cfg.seed, 11, step, j]).random() < cfg.notes_own:  # a stream of its own, as above
                own = prompts.notes_prefill(it, "own")  # the description after its first word is a target
                target = (own, given[len(own):] + chain + think_close(it))
        elif mode == "think" and rng.random() < mix_setting(cfg, phase, "latent_think"):
            target = think_target(it, rng, chain=rng.random() < cfg.latent_chain)
        else:
            target = prompts.target(it, "describe" if mode == "describe" else "answer")
        items.append(it)
        modes.append(mode)
        targets.append(target)
    return items, modes, targets


def lr_at(step: int, cfg: BaseTrainConfig) -> float:
    """Linear warm-up then cosine decay to 10% of the peak at ``steps``; 10% after it (the tune phase)."""
    if step >= cfg.steps:
        return 0.1 * cfg.lr
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


#: Frame labels of the encoder pre-training: (name, number of classes). -100 = no label (frame between sounds).
FRAME_TASKS = (("sound", 7), ("loudness", 3), ("duration", 3), ("onset", 2), ("ordinal", 6))


def frame_labels(item, n_frames: int) -> dict[str, torch.Tensor]:
    """Per encoder frame, the facts of the sound covering its centre; shape (n_frames,) int64 per task.

    ``sound``: 0 silence, 1-5 pitch level of a tone, 6 noise; ``ordinal``: 0 silence, else the sound's number (1-5);
    ``onset``: a sound starts in this frame. Loudness and duration are -100 (ignored) on silent frames.
    """
    seconds = len(item.audio) / SAMPLE_RATE
    centres = (np.arange(n_frames) + 0.5) * seconds / n_frames
    width = seconds / n_frames
    labels = {name: np.zeros(n_frames, np.int64) for name, _ in FRAME_TASKS}
    labels["loudness"][:] = labels["duration"][:] = -100
    for i, (ev, (kind, pitch, duration, loudness)) in enumerate(zip(item.meta["events"], item.meta["levels"])):
        inside = (centres >= ev["onset_s"]) & (centres < ev["onset_s"] + ev["duration_s"])
        labels["sound"][inside] = 6 if kind == "noise" else pitch + 1
        labels["loudness"][inside], labels["duration"][inside] = loudness, duration
        labels["ordinal"][inside] = i + 1
        labels["onset"][min(n_frames - 1, int(ev["onset_s"] / width))] = 1
    return {k: torch.from_numpy(v) for k, v in labels.items()}


def encoder_items(cfg: BaseTrainConfig, step: int) -> list:
    """The clips of encoder step ``step``: a stream of its own, so the encoder phase depends only on ENCODER_OPTIONS
    (a run can change its decoder plan when resumed from the checkpoint written at the end of the encoder phase)."""
    rng = np.random.default_rng([cfg.seed, 3, step])
    families, bands = list(FAMILIES), list(DIFFICULTY_BANDS)
    return [make_item(families[int(rng.integers(len(families)))], bands[int(rng.integers(len(bands)))],
                      np.random.default_rng([cfg.seed, 4, step, j]), f"encoder-{step}-{j}",
                      calibrated=cfg.calibrated_audio)
            for j in range(cfg.batch_size)]


def pretrain_audio_encoder(model, processor, cfg: BaseTrainConfig, log=print) -> list[dict]:
    """Train the audio tower with linear heads on frame labels (the heads are discarded afterwards)."""
    tower = model.model.audio_tower
    dim = model.config.audio_config.output_dim
    heads = torch.nn.ModuleDict({name: torch.nn.Linear(dim, n) for name, n in FRAME_TASKS})
    opt = torch.optim.AdamW([*tower.parameters(), *heads.parameters()], lr=cfg.encoder_lr,
                            weight_decay=cfg.weight_decay)
    history, running, t0 = [], [], time.time()
    tower.train()
    for step in range(cfg.encoder_steps):
        items = encoder_items(cfg, step)
        feats = processor.feature_extractor([it.audio for it in items], sampling_rate=16_000, return_tensors="pt",
                                            return_attention_mask=True, padding=True)
        # The thinker's own path from mel features to audio-token embeddings: (sum of frames, dim).
        out = model.model.get_audio_features(feats["input_features"],
                                             feature_attention_mask=feats["attention_mask"]).pooler_output
        per_clip = out.shape[0] // len(items)
        loss = 0.0
        for name, _ in FRAME_TASKS:
            target = torch.cat([frame_labels(it, per_clip)[name] for it in items])
            loss = loss + torch.nn.functional.cross_entropy(heads[name](out), target, ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tower.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        running.append(loss.item())
        if (step + 1) % 50 == 0 or step == cfg.encoder_steps - 1:
            history.append({"encoder_step": step + 1, "loss": float(np.mean(running)),
                            "seconds": round(time.time() - t0, 1)})
            log(f"encoder step {step + 1}/{cfg.encoder_steps} frame loss {history[-1]['loss']:.4f}")
            running = []
    return history


def _decoder_checkpoint(root: Path, cfg: BaseTrainConfig, step: int, model, processor, opt, history: list[dict],
                        seconds: float) -> Path:
    """Save the model, optimizer and RNG states after decoder step ``step`` (``keep_last=2``: a corrupt newest one
    still leaves one to resume from; each phase's end is kept too, to branch from with other options of the later
    phases, see ``options_free_at``). The data stream needs only the step: it is deterministic in (seed, step)."""
    state = ckpt.TrainerState(step=cfg.encoder_steps + step, stage=1, stage_step=step,
                              data_position={"decoder_step": step, "seconds": round(seconds, 1),
                                             "history": history},
                              config=dataclasses.asdict(cfg))
    phase_ends = {cfg.encoder_steps + phase_start(cfg, p) for p in PHASES}  # the encoder's end is the first
    return ckpt.save_checkpoint(root, state, model, processor, opt, keep_last=2, keep=phase_ends)


def supervised_step(model, opt: torch.optim.Optimizer, batch, lr: float, grad_clip: float, **forward) -> float:
    """One optimizer step on ``batch`` (with ``labels``) at learning rate ``lr``, gradients clipped to norm
    ``grad_clip``; ``forward`` goes to the model's call. Returns the batch's loss."""
    for group in opt.param_groups:
        group["lr"] = lr
    loss = model(**batch, **forward).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def options_free_at(cfg: BaseTrainConfig, decoder_step: int) -> frozenset[str]:
    """The options a resume from a checkpoint after ``decoder_step`` may change: those that change nothing
    (``RESUMABLE_CHANGES``), and those only phases not yet begun read. At decoder step 0 (the encoder checkpoint)
    every decoder option; up to the chain phase's start its length (``CHAIN_OPTIONS``); up to the text phase's start
    the text phase's options (``TEXT_OPTIONS``) and the mix's; up to the mix phase's start the mix's own
    (``MIX_OPTIONS``); up to the mix's end the tune phase's (``TUNE_OPTIONS``). Such a resume trains the same model as
    a run started with the new options: nothing it already did read them."""
    if decoder_step == 0:
        return frozenset(f.name for f in dataclasses.fields(cfg)) - ENCODER_OPTIONS | RESUMABLE_CHANGES
    free = RESUMABLE_CHANGES
    if decoder_step <= phase_start(cfg, "chain"):
        free |= CHAIN_OPTIONS
    if decoder_step <= phase_start(cfg, "text"):
        free |= TEXT_OPTIONS
    if decoder_step <= phase_start(cfg, "mix"):
        free |= MIX_OPTIONS
    if decoder_step <= phase_start(cfg, "tune"):
        free |= TUNE_OPTIONS
    return free


def train(cfg: BaseTrainConfig, log=print, checkpoint_dir: Path | None = None, resume: bool = False):
    """Build and train the organism. Returns (model, processor, log of losses, seconds).

    With ``checkpoint_dir`` a checkpoint is written there every ``checkpoint_minutes`` and at the end of the encoder
    phase; ``resume`` continues from the newest complete one (same config; the seconds of earlier sessions count).
    """
    torch.set_num_threads(cfg.threads)
    latest = ckpt.find_latest(checkpoint_dir, log) if (resume and checkpoint_dir) else None
    if checkpoint_dir:
        ckpt.remove_temp_dirs(checkpoint_dir, log)
    if latest is not None:
        state = ckpt.load_trainer_state(latest)
        free = options_free_at(cfg, state.data_position["decoder_step"])
        options = json.loads(json.dumps(dataclasses.asdict(cfg)))
        changed = sorted(k for k, v in options.items()
                         if k not in free and state.config.get(k, ADDED_OPTIONS.get(k)) != v)
        if tokenizer_has_skills(options) != tokenizer_has_skills(state.config):
            changed.append("text_skills, skill_steps, chat_skill_steps (all zero or not: the tokenizer's corpus)")
        if changed:
            raise SystemExit(f"the checkpoint {latest} was written with another config (differs in {changed}); "
                             "resume with the same options or start afresh in another --checkpoint-dir")
        model, processor = organism.load_organism(latest)
        start, history = state.data_position["decoder_step"], state.data_position["history"]
        seconds_before = state.data_position["seconds"]
        log(f"resuming from {latest} (decoder step {start}/{total_steps(cfg)}, {seconds_before:.0f} s trained)")
    else:
        corpus = tokenizer_corpus(cfg.tokenizer_corpus_items, seed=cfg.seed + 777, answers=cfg.answer_tokens,
                                  skills=tokenizer_has_skills(dataclasses.asdict(cfg)))
        tokenizer = organism.train_tokenizer(corpus, vocab_size=cfg.vocab_size)
        processor = organism.build_processor(tokenizer)
        model = organism.build_model(tokenizer, seed=cfg.seed)
        start, history, seconds_before = 0, [], 0.0
    t0 = time.time()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if latest is None:
        history += pretrain_audio_encoder(model, processor, cfg, log)
        if checkpoint_dir:
            _decoder_checkpoint(checkpoint_dir, cfg, 0, model, processor, opt, history, time.time() - t0)
    else:
        ckpt.restore(latest, opt, log=log)
    model.train()
    running, last_save = [], time.time()
    last = total_steps(cfg) - 1
    for step in range(start, last + 1):
        batch = decoder_batch(processor, cfg, step)
        # output_router_logits adds the load-balancing loss, so all 8 experts stay in use (routing worth studying).
        running.append(supervised_step(model, opt, batch, lr_at(step, cfg), cfg.grad_clip, output_router_logits=True))
        seconds = seconds_before + time.time() - t0
        if (step + 1) % 50 == 0 or step == last:
            history.append({"step": step + 1, "phase": phase_of(cfg, step), "loss": float(np.mean(running)),
                            "seconds": round(seconds, 1)})
            log(f"step {step + 1}/{last + 1} ({history[-1]['phase']}) loss {history[-1]['loss']:.4f} "
                f"({seconds:.0f} s)")
            running = []
        if checkpoint_dir and (time.time() - last_save > 60 * cfg.checkpoint_minutes or step == last
                               or phase_of(cfg, step) != phase_of(cfg, step + 1)):
            path = _decoder_checkpoint(checkpoint_dir, cfg, step + 1, model, processor, opt, history, seconds)
            log(f"checkpoint {path}")
            last_save = time.time()
    return model.eval(), processor, history, seconds_before + time.time() - t0


def config_of(path: str | Path) -> BaseTrainConfig:
    """The config an organism folder (its manifest's ``train_config``) or a checkpoint of ``train-base`` (its
    trainer state) was trained with; options added since it was written take the values that reproduce it
    (``ADDED_OPTIONS``), so the held-out items of a model trained on calibrated clips are calibrated too."""
    options = organism.recorded_config(path)
    if options is None:
        raise FileNotFoundError(f"{path}: no manifest with a train_config and no trainer_state/state.json; name an "
                                "organism folder written by train-base or one of its checkpoints")
    names = {f.name for f in dataclasses.fields(BaseTrainConfig)}
    options = {**ADDED_OPTIONS, **{k: v for k, v in options.items() if k in names}}
    return BaseTrainConfig(**{k: tuple(v) if k in ("mode_weights", "tune_mode_weights") and v is not None else v
                              for k, v in options.items()})


def heldout_items(cfg: BaseTrainConfig):
    """The held-out evaluation set: ``eval_per_cell`` items per family x difficulty, from ``eval_seed``."""
    return heldout_set(cfg.eval_per_cell, cfg.eval_seed, calibrated=cfg.calibrated_audio)


def write_atomically(model, processor, out: Path, manifest: dict) -> None:
    """Save into ``out.tmp`` and rename into place, so a crash never leaves a half-written model at ``out``."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    manifest["files"] = file_manifest(tmp)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    replace_dir(tmp, out)


def reevaluate(out: Path, eval_per_cell: int, eval_seed: int) -> None:
    """Measure the model in ``out`` on the held-out set again and rewrite the ``heldout`` part of its manifest.

    ``eval_seed``: another seed draws another held-out set of the same shape, on which candidates can be *selected*
    (in a copy of each folder) so that the default set, which reports them, is not also the set they were picked on.
    """
    model, processor = organism.load_organism(out)
    manifest = organism.read_manifest(out)
    cfg = dataclasses.replace(config_of(out), eval_per_cell=eval_per_cell, eval_seed=eval_seed)
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    manifest["heldout"] = evaluate(model, processor, heldout_items(cfg))
    manifest["train_config"].update(eval_per_cell=eval_per_cell, eval_seed=eval_seed)
    manifest["eval_seconds"] = round(time.time() - t0, 1)
    print(format_table(manifest["heldout"]))
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(out / "manifest.json")


def main(argv=None) -> None:
    ap = cli_options.parser(cli_options.train_base_arguments, __doc__)
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.evaluate_only:
        return reevaluate(out, args.eval_per_cell, args.eval_seed)
    if (out / "model.safetensors").exists() and not args.force:
        sys.exit(f"refusing to overwrite the model in {out}: it exists (the shipped organism's weights are what "
                 "every figure and test was measured on). Pass --force to replace it, or choose another --out.")
    cfg = BaseTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(BaseTrainConfig)
                             if hasattr(args, f.name)})
    checkpoint_dir = Path(args.checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    log_path = Path(args.log) if args.log else checkpoint_dir / "train.log"

    def log(line: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')} {line}"
        print(stamped, flush=True)
        with open(log_path, "a") as f:
            f.write(stamped + "\n")

    model, processor, history, seconds = train(cfg, log, checkpoint_dir=checkpoint_dir, resume=args.resume)
    log("training done; measuring the held-out set")
    t_eval = time.time()
    report = evaluate(model, processor, heldout_items(cfg))
    print(format_table(report))
    manifest = {
        "what": "adt-probe model organism: tiny Qwen3OmniMoeThinkerForConditionalGeneration, base (no reasoning)",
        "train_config": dataclasses.asdict(cfg), "seed": cfg.seed,
        "model_config": {"text": organism.TEXT_CONFIG, "audio": organism.AUDIO_CONFIG},
        "parameters": sum(p.numel() for p in model.parameters()),
        "training_seconds": round(seconds, 1), "eval_seconds": round(time.time() - t_eval, 1),
        "versions": versions(),
        "machine": {"threads": cfg.threads}, "loss_history": history, "heldout": report,
    }
    write_atomically(model, processor, out, manifest)
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
