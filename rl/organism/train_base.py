"""Train the base model organism: perceive a clip and answer directly, never reason in ``<think>``.

``python -m rl.organism.train_base --out DIR`` builds the tokenizer from the task corpus, a fresh tiny
Qwen3-Omni-MoE thinker,
and trains it on a stream of freshly generated synthetic items (no item is seen twice), in three phases:

1. the audio encoder alone, with linear heads on frame-level acoustic facts (``encoder_steps``). Without it the
   decoder, trained from scratch, learns the text prior first and then treats the audio as noise: the audio
   embeddings collapse to a constant and every clip gets the same description (measured; see the manifest);
2. describing clips only (``perception_steps``), so hearing pays before anything else does;
3. the mix of four skills below (supervised next-token loss on the completion):

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

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rl import organism
from rl.data import collate, prompts
from rl.data.tasks import DIFFICULTY_BANDS, FAMILIES, MULTI_STEP, generate_items, make_item
from rl.train.checkpoint import replace_dir, sha256


@dataclass
class BaseTrainConfig:
    """Hyper-parameters of the supervised base training (recorded in the manifest)."""

    seed: int = 0
    steps: int = 900
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # answer, describe, context, notes, think. Measured (held-out, 420 items): with notes at 0.25 and 700 steps the
    # answer after correct notes was no better than the direct answer (0.62 vs 0.62); at 0.35 and 900 steps, 0.83 vs
    # 0.75, so writing notes can pay and RL has something to find.
    mode_weights: tuple[float, ...] = (0.30, 0.15, 0.10, 0.35, 0.10)
    # Multi-step families: the share of their direct-answer examples kept (the rest become notes examples), so they
    # stay hard to answer directly and easy from notes: reasoning has to pay in accuracy there.
    direct_multistep: float = 1.0
    latent_think: float = 0.15  # fraction of think-prompt examples whose think block holds the perception text
    # First steps: describe only. A decoder trained from scratch learns the text prior first and then treats the
    # audio as noise (it shrinks the audio embeddings' variation); describing clips first makes hearing pay.
    perception_steps: int = 250
    # Before everything: the audio encoder alone learns frame-level acoustic facts (what sounds in each 77 ms frame:
    # pitch level or noise, loudness, an onset), as real audio-LLMs start from a pretrained encoder.
    encoder_steps: int = 800
    encoder_lr: float = 2e-3
    tokenizer_corpus_items: int = 3000
    vocab_size: int = 640
    eval_per_cell: int = 20  # held-out items per family x difficulty
    eval_seed: int = 10_007  # held-out set; training items use other seeds
    threads: int = 1  # one thread: on a shared 2-core machine two threads fight and run slower


MODES = ("answer", "describe", "context", "notes", "think")


def tokenizer_corpus(n_items: int, seed: int) -> list[str]:
    """Every kind of text the organism reads or writes, from ``n_items`` synthetic items plus the fixed prompts."""
    texts = [prompts.SYSTEM, prompts.DESCRIBE, prompts.THINK_INSTRUCTION, prompts.ANSWER_INSTRUCTION,
             "system user assistant Sounds: Choices:"]
    for it in generate_items(n_items, seed=seed, prefix="corpus"):
        texts += [it.question, prompts.format_choices(it.choices), " ".join(it.reference_chain or []),
                  it.meta["description"]]
    return texts


def sample_batch(cfg: BaseTrainConfig, step: int):
    """Fresh items and their skill for one step: (items, modes, targets); deterministic in (seed, step)."""
    rng = np.random.default_rng([cfg.seed, 1, step])
    families, bands = list(FAMILIES), list(DIFFICULTY_BANDS)
    items, modes, targets = [], [], []
    for j in range(cfg.batch_size):
        item_rng = np.random.default_rng([cfg.seed, 2, step, j])
        it = make_item(families[int(rng.integers(len(families)))], bands[int(rng.integers(len(bands)))], item_rng,
                       f"train-{step}-{j}")
        mode = MODES[int(rng.choice(len(MODES), p=cfg.mode_weights))] if step >= cfg.perception_steps else "describe"
        if mode == "answer" and cfg.direct_multistep < 1 and it.family in MULTI_STEP \
                and rng.random() >= cfg.direct_multistep:  # no draw at 1.0: the shipped recipe's stream
            mode = "notes"
        if mode == "notes":
            target = (f"<think>\n{it.meta['description']}\n", f"</think>\n\n<answer>{it.answer}</answer><|im_end|>")
        elif mode == "think" and rng.random() < cfg.latent_think:
            target = f"<think>\n{it.meta['description']}\n</think>\n\n<answer>{it.answer}</answer><|im_end|>"
        else:
            target = prompts.target(it, "describe" if mode == "describe" else "answer")
        items.append(it)
        modes.append(mode)
        targets.append(target)
    return items, modes, targets


def lr_at(step: int, cfg: BaseTrainConfig) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
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
    from rl.data.items import SAMPLE_RATE

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
        items, _, _ = sample_batch(cfg, 1_000_000 + step)
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


def train(cfg: BaseTrainConfig, log=print):
    """Build and train the organism. Returns (model, processor, log of losses, seconds)."""
    torch.set_num_threads(cfg.threads)
    tokenizer = organism.train_tokenizer(tokenizer_corpus(cfg.tokenizer_corpus_items, seed=cfg.seed + 777),
                                         vocab_size=cfg.vocab_size)
    processor = organism.build_processor(tokenizer)
    model = organism.build_model(tokenizer, seed=cfg.seed)
    t0 = time.time()
    history = pretrain_audio_encoder(model, processor, cfg, log)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    running = []
    for step in range(cfg.steps):
        items, modes, targets = sample_batch(cfg, step)
        batch = collate.encode_supervised(processor, items, modes, targets)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        # output_router_logits adds the load-balancing loss, so all 8 experts stay in use (routing worth studying).
        out = model(**batch, output_router_logits=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        running.append(out.loss.item())
        if (step + 1) % 50 == 0 or step == cfg.steps - 1:
            history.append({"step": step + 1, "loss": float(np.mean(running)), "seconds": round(time.time() - t0, 1)})
            log(f"step {step + 1}/{cfg.steps} loss {history[-1]['loss']:.4f} ({history[-1]['seconds']:.0f} s)")
            running = []
    return model.eval(), processor, history, time.time() - t0


def heldout_items(cfg: BaseTrainConfig):
    """The held-out evaluation set: ``eval_per_cell`` items per family x difficulty, from ``eval_seed``."""
    families = list(FAMILIES)
    items = []
    for b, band in enumerate(DIFFICULTY_BANDS):  # a seed per band: the bands hold different clips, not the same
        items += generate_items(cfg.eval_per_cell * len(families), seed=cfg.eval_seed + b, families=families,
                                difficulty=band, prefix=f"heldout-{band}")
    return items


def write_atomically(model, processor, out: Path, manifest: dict) -> None:
    """Save into ``out.tmp`` and rename into place, so a crash never leaves a half-written model at ``out``."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    manifest["files"] = {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size}
                         for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    replace_dir(tmp, out)


def reevaluate(out: Path, eval_per_cell: int) -> None:
    """Measure the model in ``out`` on the held-out set again and rewrite the ``heldout`` part of its manifest."""
    from rl.evaluate import evaluate, format_table

    model, processor = organism.load_organism(out)
    manifest = organism.read_manifest(out)
    cfg = BaseTrainConfig(**{k: tuple(v) if k == "mode_weights" else v for k, v in manifest["train_config"].items()})
    cfg.eval_per_cell = eval_per_cell
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    manifest["heldout"] = evaluate(model, processor, heldout_items(cfg))
    manifest["train_config"]["eval_per_cell"] = eval_per_cell
    manifest["eval_seconds"] = round(time.time() - t0, 1)
    print(format_table(manifest["heldout"]))
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(out / "manifest.json")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(organism.ORGANISM_DIR), help="output folder (default: the shipped organism)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing model in --out")
    ap.add_argument("--evaluate-only", action="store_true",
                    help="measure the model already in --out on the held-out set and update its manifest")
    for f in dataclasses.fields(BaseTrainConfig):
        if f.type in ("int", "float"):
            ap.add_argument(f"--{f.name.replace('_', '-')}", type=eval(f.type), default=f.default,
                            help=f"base-training setting BaseTrainConfig.{f.name} (default: %(default)s)")
    ap.add_argument("--mode-weights", type=lambda s: tuple(float(x) for x in s.split(",")),
                    default=BaseTrainConfig.mode_weights, help=f"weights of the skills {', '.join(MODES)}")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.evaluate_only:
        return reevaluate(out, args.eval_per_cell)
    if (out / "model.safetensors").exists() and not args.force:
        sys.exit(f"refusing to overwrite the model in {out}: it exists (the shipped organism's weights are what "
                 "every figure and test was measured on). Pass --force to replace it, or choose another --out.")
    cfg = BaseTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(BaseTrainConfig)
                             if hasattr(args, f.name)})
    model, processor, history, seconds = train(cfg)
    t_eval = time.time()
    from rl.evaluate import evaluate, format_table

    report = evaluate(model, processor, heldout_items(cfg))
    print(format_table(report))
    import transformers

    manifest = {
        "what": "adt-probe model organism: tiny Qwen3OmniMoeThinkerForConditionalGeneration, base (no reasoning)",
        "train_config": dataclasses.asdict(cfg), "seed": cfg.seed,
        "model_config": {"text": organism.TEXT_CONFIG, "audio": organism.AUDIO_CONFIG},
        "parameters": sum(p.numel() for p in model.parameters()),
        "training_seconds": round(seconds, 1), "eval_seconds": round(time.time() - t_eval, 1),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": sys.version.split()[0]},
        "machine": {"threads": cfg.threads}, "loss_history": history, "heldout": report,
    }
    write_atomically(model, processor, out, manifest)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
