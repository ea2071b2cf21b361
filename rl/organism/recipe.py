"""The base organism's training recipe (``BaseTrainConfig``): plain data, no torch, so the command line can show its
options without loading a model library. ``rl.organism.train_base`` trains with it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BaseTrainConfig:
    """Hyper-parameters of the supervised base training (recorded in the manifest)."""

    seed: int = 0
    # Decoder steps over all phases: perception (describe only), skills (short look-up sequences, then the same in the
    # chat format), text (facts as text only), then the skill mix.
    steps: int = 4700
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # answer, describe, context, notes, think (the mix phase). v2 measured (held-out, 420 items): with notes at 0.25
    # and 700 steps the answer after correct notes was no better than the direct answer (0.62 vs 0.62); at 0.35 and
    # 900 steps, 0.83 vs 0.75.
    mode_weights: tuple[float, ...] = (0.25, 0.15, 0.20, 0.30, 0.10)
    # Multi-step families: the share of their direct-answer examples kept (the rest become notes examples), so they
    # stay hard to answer directly and easy from notes: reasoning has to pay in accuracy there.
    direct_multistep: float = 0.3
    latent_think: float = 0.15  # fraction of think-prompt examples whose think block holds the perception text
    # Of those, the fraction whose think text goes on into the first inference steps of the reference chain ("Sound 2
    # is higher than Sound 1."): a pretrained model's latent chain-of-thought, partial and rare, for RL to find.
    latent_chain: float = 0.5
    # First decoder steps: describe only. A decoder trained from scratch learns the text prior first and then treats
    # the audio as noise (it shrinks the audio embeddings' variation); describing clips first makes hearing pay.
    perception_steps: int = 200
    # Then text only: answers from facts written in the prompt or in the think block, no audio. Combining facts is a
    # text skill; v2 trained it only inside the mix (10%) and answered multi-step questions from written facts no
    # better than from the audio (0.58 and 0.13).
    text_steps: int = 2000
    # Between perception and text: short plain-text sequences (no chat template, about a third of an item's tokens)
    # that train the multi-step families' sub-skills alone: the facts, a question from ``rl.data.tasks.SKILLS``, its
    # one-sentence answer ("Sound 3 is a low tone."). Measured (``python -m benchmarks.lookup_depth``: a decoder from
    # scratch on this phase alone, whole answer sentences right on 256 held-out examples per sub-skill): 12 layers
    # look-up 0.52 / most-of 0.68 after 700 steps, 0.80 / 0.98 after 1,400 (0.9 s per step on one thread); 4 layers
    # 0.77 / 0.99 after 1,400. Inside chat-formatted text items (2.5 s per step, half of them sub-skills) 1,212 steps
    # left both at their majority answer. v5, after the perception phase: 0.72 / 1.00 at the end of this phase.
    skill_steps: int = 1500
    # Then the same sub-skills in the chat format (the think-first prompt with the facts written in it; the target: the
    # answer sentence in the think block, then the answer). The plain look-up does not carry over: the skill phase's
    # end (plain look-up 0.72) writes the chat-format answer sentence right 0.00 of the time; trained on it alone
    # (``python -m benchmarks.lookup_depth --chat --start runs/v6/ckpt/step-002100 --steps 400 --every 50``) it reaches
    # 0.48 after 100 steps and 0.74 after 400, its plain level; v6's whole text phase had brought it to 0.48 (2,000
    # steps, the look-up in an eighth of its rows). 0 (v5-v7): no such phase. v8: 1,000 after 2,500 plain steps.
    chat_skill_steps: int = 0
    # Then whole multi-step chains in the chat format (facts in the prompt; every inference step in the think block,
    # then the answer; ``rl.organism.train_base.chain_texts``). The look-up inside a chain, where only the previous
    # step names the sound ("The loudest sound is Sound 2. Sound 2 is a"), is not the chat-format look-up: v8's
    # chat-skill end (that look-up 0.81) reads it at a random sound's level (0.17-0.3), and the text phases, where
    # chains were about 5% of the examples, kept it there (v8b 0.34, v11 0.29). On chains alone from that point
    # (``python -m benchmarks.lookup_depth --chains --start runs/v8/ckpt/step-004100``) it reached 0.52 after 500
    # steps, 0.81 after 800, 0.97 after 1,200. v12 (1,000 chain steps after 1,500 plain and 500 chat-skill steps):
    # 0.00 -> 0.60. 0 (v3-v11): no such phase.
    chain_steps: int = 0
    # Of the text-phase examples, the share that writes the inference steps before answering (facts in the prompt,
    # think-first prompt, no audio). v3a measured (text phase of 300 steps with context and notes only): from written
    # facts, every comparison stayed at chance (pitch 0.47, duration 0.47); the steps put the loss where the comparison
    # is made ("Sound 2 is higher than Sound 1."), a dense signal for the skill the direct answer needs.
    text_chain: float = 0.4
    # v3b measured (after 364 text steps, chain share 0.3): the written steps were right for two sounds (pitch 0.92
    # after the chain) but direct answers from written facts stayed at chance (pitch 0.33, multi-step 0.27-0.53).
    # So the chain examples internalize their steps (Deng et al. 2024, stepwise internalization): over the text phase
    # they leave out a growing prefix of the inference steps, up to this fraction of them at its end (1: none left,
    # the answer follows the facts directly).
    internalize: float = 1.0
    # The share of the text phase whose chains keep every step, before the left-out prefix starts to grow (0 in v3-v9:
    # from the text phase's first step; v8b and v8c: 0.5). Internalizing steps the decoder cannot yet write right
    # teaches it nothing.
    internalize_after: float = 0.0
    # Share of text-phase items drawn from the multi-step families (0: every family alike, 2 of 7, as v3c): the
    # single-step families reach 1.00 from written facts early, the multi-step ones are the skill left to learn.
    text_multistep: float = 0.5
    # Share of text-phase items that train a sub-skill of the multi-step families alone (``rl.data.tasks.SKILLS``:
    # read one attribute of Sound k; find the highest / longest / loudest of 3-4 sounds), drawn instead of a
    # family's item. Measured without them (text phase on the multi-step families only, 666 steps): written chains
    # misread the facts ("Sound 2 is a very high tone" of a middle tone), so the look-up itself was not learned.
    # With them (0.5 for 1,212 steps; 1.0 for 800; 1.0 at lr 3e-4 and 3e-3 for 700) every sub-skill stayed near its
    # majority answer. From v5 on the skill phase (``skill_steps``) trains the look-up first; a quarter of the text
    # phase keeps the sub-skills, now in the chat format the families use.
    text_skills: float = 0.25
    # Share of the text phase's look-up items written as chains (``attribute_of_sound``) whose question names no sound
    # (``rl.data.tasks.unnamed_lookup``): only the think text's "Sound 3 is a" says which to read. Measured on v8's
    # chat-skill end (chat-format look-up 0.81, scratch ``runs/exp/lookup_cue.py``): with the question naming another
    # sound than the think text, it gives the pitch of the question's sound 0.64 of the time and the think text's
    # 0.22; so inside a chain, where only the previous step names the loudest sound, the look-up ran at chance (v8b at
    # text step 1,106: 0.28). 0 (v3-v9): every question names its sound.
    lookup_unnamed: float = 0.0
    # Share of notes examples (the think block pre-filled with the clip's facts) whose think block goes on with the
    # reference's inference steps before the answer, in the text phase and the mix. 0 (v3-v10): the answer follows
    # the notes directly, which asks the decoder to combine 3-4 facts silently; measured at v8b's text-phase end
    # (chains fully internalized): from written facts, think-first, highest-longest 0.52 ("no" 57 of 60) and
    # pitch-of-loudest 0.20, where the same run writing its chains had reached 0.82 and 0.35 (text step 1,106).
    notes_chain: float = 0.0
    # Share of the mix's notes examples on audio whose notes the model writes itself: the think block's description is
    # a target after its first word ("<think>\nSound" stays prompt, so whether to think is not trained by them). 0
    # (v3-v15): the notes are always given, and the think-first prompt's own descriptions are trained only by the rare
    # latent think examples. v15 measured (210 held-out items): think forced open ("<think>\nSound 1:"), greedy 0.56
    # against 0.74 answering directly; sampled at T = 1, 0.51 when it thinks against 0.67 when it does not; its
    # descriptions under the describe prompt were near exact where the think block's were not.
    notes_own: float = 0.0
    # Share of mix-phase examples drawn as text-phase examples (written facts, no audio; the multi-step and sub-skill
    # shares above; the chains fully internalized), so the mix rehearses what the text phase taught. Added for a drop
    # that small probes showed (v5: pitch-of-loudest from written facts 0.37 on 30 items at text step 1,432, 0.20 on
    # the held-out 60 after the mix) and paired measurement refuted: the text phase's end and the end of the mix score
    # 0.30 and 0.28 on the same 60 held-out items (``benchmarks.organism_facts_probe --against``). Harmless; kept.
    mix_text: float = 0.3
    # Before everything: the audio encoder alone learns frame-level acoustic facts (what sounds in each 77 ms frame:
    # pitch level or noise, loudness, an onset), as real audio-LLMs start from a pretrained encoder.
    encoder_steps: int = 400
    encoder_lr: float = 2e-3
    # Every clip at one fixed gain (``rl.data.tasks.render(calibrated=True)``), so a loudness level is heard the same
    # in every clip. Up to v13 each clip was scaled to its own peak: a sound's loudness level was then not in the audio
    # (an oracle reading each tone's RMS names its level in at most 0.67-0.71 of tones; v13 described loudness right
    # in 0.35 of sounds, and 300 more describe steps left it at chance while pitch went from 0.62 to 0.89).
    calibrated_audio: bool = False
    # After the mix (``steps``), the mix goes on for this many steps at the schedule's final learning rate (10% of the
    # peak) with ``tune_latent_think`` in place of ``latent_think``: it moves the base's propensity to open its think
    # block on the think-first prompt without retraining the mix (a run's mix end is a checkpoint to branch from).
    # v17 (latent_think 0.2) thought greedily on 1 of 420 held-out items, a near tie; the branches of its mix with
    # 0.15 and 0.10 (v19a, v19b) thought on none but each lost 0.03 on a facts target (noise of 60 items a family).
    tune_steps: int = 0
    tune_latent_think: float = 0.1
    # The tune phase's share of text-phase examples (written facts, no audio); None: the mix's (``mix_text``). A lever
    # on the written-facts targets, which the tune phase moves by 2-5 items of 60 a family (v23: 0.98 -> 0.93 on one).
    tune_mix_text: float | None = None
    # The tune phase's weights of the skills (``MODES``); None: the mix's (``mode_weights``). With notes, v23's chains
    # pick the wrong sound where the same facts written in the prompt do not (highest-longest 0.70 against 0.94 on 120
    # items of a second held-out set): more notes examples in the tune phase train the chain to read the notes.
    tune_mode_weights: tuple[float, ...] | None = None
    tokenizer_corpus_items: int = 3000
    # The tokenizer corpus also holds every answer as the targets write it ("<answer>middle</answer>"). Without them
    # (v3c and before) an answer word after "<answer>" has no leading space and BPE splits it into pieces unrelated to
    # the facts' tokens ("middle" -> "m" "id" "dle", "high" -> "hi" "g" "h", "yes" -> "y" "es"): measured on v3c, its
    # first answer token from written facts was "ver" (very high / very low) for 60 of 60 pitch-of-loudest items and
    # its teacher-forced accuracy 0.42, the prior of "ver". Not sufficient alone: v4, 760 steps into its text phase,
    # still answered "very high" / "very low" only (whole tokens now); see the README's recipe history.
    answer_tokens: bool = True
    vocab_size: int = 640
    eval_per_cell: int = 20  # held-out items per family x difficulty
    eval_seed: int = 10_007  # held-out set; training items use other seeds
    threads: int = 1  # one thread: on a shared 2-core machine two threads fight and run slower
    checkpoint_minutes: float = 5.0  # wall-clock time between checkpoints (and one at every phase end)


MODES = ("answer", "describe", "context", "notes", "think")
#: Options that may differ between a run and its resume: they change neither the data stream nor the training.
RESUMABLE_CHANGES = frozenset({"threads", "checkpoint_minutes", "eval_per_cell", "eval_seed"})
#: Options added after checkpoints were written without them, and the value that reproduces those runs.
ADDED_OPTIONS = {"mix_text": 0.0, "chat_skill_steps": 0, "internalize_after": 0.0, "lookup_unnamed": 0.0,
                 "notes_chain": 0.0, "chain_steps": 0, "calibrated_audio": False, "notes_own": 0.0, "tune_steps": 0,
                 "tune_latent_think": 0.1, "tune_mix_text": None, "tune_mode_weights": None}
#: Options only the chain phase and those after it read: a resume from a checkpoint up to the chain phase's start may
#: change them (the total of ``steps`` stays: it sets the learning rate of every step).
CHAIN_OPTIONS = frozenset({"chain_steps"})
#: Options only the text phase and the mix (which rehearses text-phase examples) read: a resume from a checkpoint up to
#: the text phase's start may change them.
TEXT_OPTIONS = frozenset({"text_chain", "internalize", "internalize_after", "text_multistep", "text_skills",
                          "lookup_unnamed", "notes_chain"})
#: Options only the mix phase reads: a resume from a checkpoint before the mix may change them.
MIX_OPTIONS = frozenset({"mode_weights", "direct_multistep", "latent_think", "latent_chain", "mix_text", "notes_own"})
#: Options only the tune phase reads (after the mix): a resume from a checkpoint up to the mix's end may change them.
TUNE_OPTIONS = frozenset({"tune_steps", "tune_latent_think", "tune_mix_text", "tune_mode_weights"})
#: Options the encoder phase and the tokenizer depend on (the rest only matter from decoder step 0 on). The tokenizer
#: also depends on whether any sub-skill is trained (``tokenizer_has_skills``), which a resume checks on its own.
ENCODER_OPTIONS = frozenset({"seed", "batch_size", "weight_decay", "grad_clip", "encoder_steps", "encoder_lr",
                             "tokenizer_corpus_items", "vocab_size", "answer_tokens", "calibrated_audio"})


def tokenizer_has_skills(options: dict) -> bool:
    """Whether the tokenizer's corpus holds the sub-skill items: when any phase trains them (``options``: a
    ``BaseTrainConfig`` as a dict, or a checkpoint's config)."""
    return any(options.get(k, 0) > 0 for k in ("text_skills", "skill_steps", "chat_skill_steps"))
