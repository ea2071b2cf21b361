"""How fast the organism's decoder, trained from scratch, learns the look-up of the multi-step families, by depth.

    python -m benchmarks.lookup_depth [--layers 4 12] [--steps 1500] [--every 100]
    python -m benchmarks.lookup_depth --checkpoint runs/v5/ckpt/step-001700   # one trained model, no training
    python -m benchmarks.lookup_depth --layers 12 --steps 700 --distinct-words   # one single token per level
    python -m benchmarks.lookup_depth --layers 12 --steps 700 --config num_attention_heads=8 head_dim=16

The data is the base training's skill phase (``rl.organism.train_base.skill_batch``: facts written as plain text, a
sub-skill question, its answer sentence; batch 32, AdamW at the recipe's learning rate, 50 warm-up steps), on the
shipped organism's tokenizer and a freshly initialised decoder (``rl.organism.build_model``) with ``--layers`` blocks.
Every ``--every`` steps it prints, on 256 held-out examples of each sub-skill, the share whose whole answer sentence
is right token by token (teacher-forced greedy: every next token of the sentence is the argmax), e.g. "Sound 3 is a
low tone." for "What is the pitch of Sound 3?". One thread per run; the runs are sequential. With ``--checkpoint``
it measures that organism (or base-training checkpoint) on the same held-out examples instead, and the look-up also
in the chat format the text phase trains: the think-first prompt with the facts written in it, the answer sentence
right after ``<think>``. With ``--distinct-words`` the facts and answers name every attribute level by one token
that no other level shares (``DISTINCT_WORDS``): whether the task's words ("very high" and "high" share a token,
"medium-loud" holds the duration "medium" and the loudness "loud") are what slows the look-up. With ``--chat`` it
trains and measures the same sub-skills in the chat format instead (the base training's chat-skill phase,
``rl.organism.train_base.chat_skill_texts``), and ``--start CHECKPOINT`` trains
that organism or base-training checkpoint on, instead of a fresh decoder: whether a look-up learned in one format
carries over to the other, e.g.

    python -m benchmarks.lookup_depth --chat --start runs/v6/ckpt/step-002100 --steps 300 --every 50

In the chat format it also measures the look-up inside a pitch-of-loudest chain (``chain_lookup_batch``: the chain
teacher-forced up to "Sound 2 is a ..."), where only the chain's previous step names the sound; ``--unnamed`` trains
look-ups whose question names no sound (``rl.data.tasks.unnamed_lookup``), the way a chain asks for them, and
``--chains`` trains whole multi-step chains (the base training's chain phase, ``rl.organism.train_base.chain_texts``:
the facts in the prompt, every inference step in the think block).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import time

import numpy as np
import torch

from rl import organism
from rl.data import collate
from rl.data.tasks import DIFFICULTY_BANDS, make_item, unnamed_lookup
from rl.evaluate import inference_steps
from rl.organism.recipe import BaseTrainConfig
from rl.organism.train_base import PLAIN_PHASES, chat_skill_texts, skill_batch, skill_items, supervised_step

EVAL_SEED = 99_991


def sentence_accuracy(model, batch) -> torch.Tensor:
    """Per row: 1.0 when every labelled token is the argmax of the previous position's logits, else 0.0. (rows,)"""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    right = (logits[:, :-1].argmax(-1) == labels) | (labels < 0)
    return right.all(-1).float()


HELD_OUT = BaseTrainConfig(batch_size=512, seed=EVAL_SEED)
#: ``--distinct-words``: the levels whose words share a token with another level, renamed to words the organism's
#: tokenizer holds as one token of their own (their meaning does not matter to a look-up)
DISTINCT_WORDS = {"very low": "falls", "very high": "rises", "medium-loud": "soft"}
_DISTINCT = re.compile("|".join(map(re.escape, DISTINCT_WORDS)))


def skill_texts(cfg: BaseTrainConfig, step: int, distinct: bool = False) -> tuple[list[str], list[str]]:
    """``skill_batch(cfg, step)``, with ``distinct`` its attribute words renamed by ``DISTINCT_WORDS``."""
    texts = skill_batch(cfg, step)
    if not distinct:
        return texts
    return tuple([_DISTINCT.sub(lambda m: DISTINCT_WORDS[m.group()], t) for t in part] for part in texts)


def unnamed_texts(processor, cfg: BaseTrainConfig, step: int) -> tuple[list[str], list[str]]:
    """The chat-skill batch of ``step`` with its look-up questions naming no sound (``unnamed_lookup``)."""
    items = [unnamed_lookup(it) if it.family == "attribute_of_sound" else it for it in skill_items(cfg, step)]
    return chat_skill_texts(processor, items)


#: what ``learning_curve`` trains on: name -> (processor, config, step) -> (prompts, targets) for ``encode_plain``
TRAINING_DATA = {
    "plain": PLAIN_PHASES["skill"],
    "distinct": lambda processor, cfg, step: skill_texts(cfg, step, distinct=True),
    "chat": PLAIN_PHASES["chat_skill"],
    "unnamed": unnamed_texts,
    "chains": PLAIN_PHASES["chain"],
}


def training_batch(processor, cfg: BaseTrainConfig, step: int, data: str = "plain"):
    """The ``encode_plain`` inputs of training step ``step`` of ``data`` (a key of ``TRAINING_DATA``): the skill
    phase's batch, plain, with ``DISTINCT_WORDS``, in the chat format, in the chat format with unnamed look-ups, or
    whole multi-step chains."""
    return collate.encode_plain(processor, *TRAINING_DATA[data](processor, cfg, step))


def held_out_batch(processor, distinct: bool = False, chat: bool = False):
    """The 512 held-out examples (``encode_plain`` inputs; the answer sentence only), the two sub-skills
    alternating; plain or (``chat``) in the chat format."""
    if chat:
        return collate.encode_plain(processor, *chat_skill_texts(processor, skill_items(HELD_OUT, 0), answers=False))
    return collate.encode_plain(processor, *skill_texts(HELD_OUT, 0, distinct))


def chain_lookup_batch(processor, n: int = 256):
    """``n`` held-out pitch-of-loudest items in the chat format, the think block teacher-forced into the look-up:
    the facts in the prompt, then the reference's comparisons, "The loudest sound is Sound 2." and " Sound 2 is a";
    the target is the pitch, " very low tone." (``encode_plain`` inputs). The look-up as the chains need it: the
    sound to read is named by the chain, not by the question; and only the look-up is scored, not whether the model
    knows the chain's wording."""
    items = [make_item("pitch_of_loudest", band, np.random.default_rng([EVAL_SEED, 1, i]), f"chain-{i}")
             for i, band in zip(range(n), itertools.cycle(DIFFICULTY_BANDS))]
    prompts_, _ = chat_skill_texts(processor, items, answers=False)
    steps = [inference_steps(it) for it in items]
    lookups = [st[-2].partition(" is a ") for st in steps]  # ("Sound 2", " is a ", "very low tone.")
    return collate.encode_plain(processor, [p + " ".join(st[:-2]) + f" {who}{is_a}".rstrip()
                                            for p, st, (who, is_a, _) in zip(prompts_, steps, lookups)],
                                [f" {pitch}" for _, _, pitch in lookups])


def skill_accuracy(model, held_out) -> tuple[float, float]:
    """(look-up, most-of) shares of whole answer sentences right on ``held_out``."""
    acc = sentence_accuracy(model, held_out)
    lookup = torch.arange(len(acc)) % 2 == 0  # skill_batch alternates the sub-skills, sorted: attribute_of_sound first
    return acc[lookup].mean().item(), acc[~lookup].mean().item()


def lookup_scores(model, processor) -> str:
    """Look-up and most-of of ``model`` on the held-out examples, plain and in the chat format, as one line."""
    lookup, most_of = skill_accuracy(model, held_out_batch(processor))
    chat_lookup, chat_most_of = skill_accuracy(model, held_out_batch(processor, chat=True))
    in_chain = sentence_accuracy(model, chain_lookup_batch(processor)).mean().item()
    return (f"plain look-up {lookup:.3f}, most-of {most_of:.3f}; "
            f"chat-format look-up {chat_lookup:.3f}, most-of {chat_most_of:.3f}; look-up inside a chain {in_chain:.3f}")


def learning_curve(layers: int, steps: int, every: int, lr: float, data: str = "plain",
                   config: dict | None = None, start: str | None = None) -> list[tuple[int, float, float, float]]:
    """Train a fresh ``layers``-block decoder (``config``: text-config overrides), or the organism or checkpoint
    ``start``, on ``data`` (``TRAINING_DATA``); return (step, look-up accuracy, most-of accuracy, seconds) every
    ``every`` steps, measured in the format trained (plain, distinct words, or the chat format). In the chat format
    it also prints the look-up inside a chain (``chain_lookup_batch``)."""
    torch.manual_seed(0)
    if start:
        model, processor = organism.load_organism(start)
        model.train()
    else:
        processor = organism.load_processor()
        model = organism.build_model(processor.tokenizer, seed=0, num_hidden_layers=layers, **(config or {})).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=BaseTrainConfig.weight_decay)
    train_cfg = BaseTrainConfig(batch_size=32)
    chat = data not in ("plain", "distinct")
    held_out = held_out_batch(processor, data == "distinct", chat)
    in_chain = chain_lookup_batch(processor) if chat else None
    name = start or f"{layers} layers"
    curve, t0 = [], time.perf_counter()
    for step in range(steps):
        supervised_step(model, opt, training_batch(processor, train_cfg, step, data),
                        lr * min(1.0, (step + 1) / BaseTrainConfig.warmup_steps), BaseTrainConfig.grad_clip)
        if (step + 1) % every == 0:
            lookup, most_of = skill_accuracy(model.eval(), held_out)
            chained = "" if in_chain is None else \
                f", look-up inside a chain {sentence_accuracy(model, in_chain).mean().item():.3f}"
            model.train()
            curve.append((step + 1, lookup, most_of, time.perf_counter() - t0))
            print(f"{name}, step {step + 1}: look-up {curve[-1][1]:.3f}, most-of {curve[-1][2]:.3f}{chained} "
                  f"({curve[-1][3]:.0f} s)", flush=True)
    return curve


def config_overrides(pairs: list[str]) -> dict:
    """``["num_attention_heads=8", "head_dim=16"]`` -> ``{"num_attention_heads": 8, "head_dim": 16}``."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--config {pair!r}: write KEY=VALUE, e.g. num_attention_heads=8")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 12], help="decoder depths to train")
    ap.add_argument("--steps", type=int, default=1500, help="training steps per depth")
    ap.add_argument("--every", type=int, default=100, help="measure every this many steps")
    ap.add_argument("--lr", type=float, default=BaseTrainConfig.lr, help="peak learning rate")
    ap.add_argument("--distinct-words", action="store_true",
                    help="name every attribute level by a token of its own (DISTINCT_WORDS)")
    ap.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                    help="text-config overrides of the fresh decoder (JSON values), e.g. num_attention_heads=8")
    ap.add_argument("--chat", action="store_true", help="train and measure in the chat format instead")
    ap.add_argument("--unnamed", action="store_true",
                    help="the chat format, its look-up questions naming no sound: only the answer sentence does")
    ap.add_argument("--chains", action="store_true",
                    help="train whole multi-step chains in the chat format (facts in the prompt) instead")
    ap.add_argument("--start", metavar="CHECKPOINT",
                    help="train this organism folder or base-training checkpoint on instead of a fresh decoder")
    ap.add_argument("--checkpoint", help="measure this organism folder or base-training checkpoint instead")
    args = ap.parse_args(argv)
    chosen = [name for name, flag in (("distinct", args.distinct_words), ("chat", args.chat),
                                      ("unnamed", args.unnamed), ("chains", args.chains)) if flag]
    if len(chosen) > 1:
        ap.error(f"choose one of --distinct-words, --chat, --unnamed, --chains (got {len(chosen)})")
    if args.start and (args.config or args.layers != ap.get_default("layers")):
        ap.error("--start trains that checkpoint's decoder as it is: drop --layers and --config")
    torch.set_num_threads(1)
    if args.checkpoint:
        model, processor = organism.load_organism(args.checkpoint)
        print(f"{args.checkpoint}: {lookup_scores(model, processor)}")
        return
    for layers in [None] if args.start else args.layers:
        learning_curve(layers, args.steps, args.every, args.lr, (chosen or ["plain"])[0],
                       config_overrides(args.config), args.start)


if __name__ == "__main__":
    main()
