"""How fast the organism's decoder, trained from scratch, learns the look-up of the multi-step families, by depth.

    python -m benchmarks.lookup_depth [--layers 4 12] [--steps 1500] [--every 100]
    python -m benchmarks.lookup_depth --checkpoint runs/v5/ckpt/step-001700   # one trained model, no training

The data is the base training's skill phase (``rl.organism.train_base.skill_batch``: facts written as plain text, a
sub-skill question, its answer sentence; batch 32, AdamW at the recipe's learning rate, 50 warm-up steps), on the
shipped organism's tokenizer and a freshly initialised decoder (``rl.organism.build_model``) with ``--layers`` blocks.
Every ``--every`` steps it prints, on 256 held-out examples of each sub-skill, the share whose whole answer sentence
is right token by token (teacher-forced greedy: every next token of the sentence is the argmax), e.g. "Sound 3 is a
low tone." for "What is the pitch of Sound 3?". One thread per run; the runs are sequential. With ``--checkpoint``
it measures that organism (or base-training checkpoint) on the same held-out examples instead, and the look-up also
in the chat format the text phase trains: the think-first prompt with the facts written in it, the answer sentence
right after ``<think>``.
"""

from __future__ import annotations

import argparse
import time

import torch

from rl import organism
from rl.data import collate
from rl.organism.recipe import BaseTrainConfig
from rl.organism.train_base import skill_batch, skill_items, supervised_step

EVAL_SEED = 99_991


def sentence_accuracy(model, batch) -> torch.Tensor:
    """Per row: 1.0 when every labelled token is the argmax of the previous position's logits, else 0.0. (rows,)"""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    right = (logits[:, :-1].argmax(-1) == labels) | (labels < 0)
    return right.all(-1).float()


HELD_OUT = BaseTrainConfig(batch_size=512, seed=EVAL_SEED)


def held_out_batch(processor):
    """The 512 held-out examples (``encode_plain`` inputs), the two sub-skills alternating."""
    return collate.encode_plain(processor, *skill_batch(HELD_OUT, 0))


def chat_lookup_batch(processor):
    """The held-out look-ups (every other example) in the chat format: think-first prompt with the written facts,
    ``<think>``, then the answer sentence."""
    items = skill_items(HELD_OUT, 0)[0::2]
    chat = collate.prompt_texts(processor, items, "think", contexts=[it.meta["description"] for it in items])
    return collate.encode_plain(processor, [c + "<think>\n" for c in chat], [it.reference_chain[-1] for it in items])


def skill_accuracy(model, held_out) -> tuple[float, float]:
    """(look-up, most-of) shares of whole answer sentences right on ``held_out``."""
    acc = sentence_accuracy(model, held_out)
    lookup = torch.arange(len(acc)) % 2 == 0  # skill_batch alternates the sub-skills, sorted: attribute_of_sound first
    return acc[lookup].mean().item(), acc[~lookup].mean().item()


def lookup_scores(model, processor) -> str:
    """Plain look-up and most-of, and the chat-format look-up, of ``model`` on the held-out examples, as one line."""
    lookup, most_of = skill_accuracy(model, held_out_batch(processor))
    chat = sentence_accuracy(model, chat_lookup_batch(processor)).mean().item()
    return f"plain look-up {lookup:.3f}, most-of {most_of:.3f}; chat-format look-up {chat:.3f}"


def learning_curve(layers: int, steps: int, every: int, lr: float) -> list[tuple[int, float, float, float]]:
    """Train a fresh ``layers``-block decoder on the skill phase; return (step, look-up accuracy, most-of accuracy,
    seconds) every ``every`` steps."""
    torch.manual_seed(0)
    processor = organism.load_processor()
    model = organism.build_model(processor.tokenizer, seed=0, num_hidden_layers=layers).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=BaseTrainConfig.weight_decay)
    train_cfg = BaseTrainConfig(batch_size=32)
    held_out = held_out_batch(processor)
    curve, t0 = [], time.perf_counter()
    for step in range(steps):
        supervised_step(model, opt, collate.encode_plain(processor, *skill_batch(train_cfg, step)),
                        lr * min(1.0, (step + 1) / BaseTrainConfig.warmup_steps), BaseTrainConfig.grad_clip)
        if (step + 1) % every == 0:
            lookup, most_of = skill_accuracy(model.eval(), held_out)
            model.train()
            curve.append((step + 1, lookup, most_of, time.perf_counter() - t0))
            print(f"{layers} layers, step {step + 1}: look-up {curve[-1][1]:.3f}, most-of {curve[-1][2]:.3f} "
                  f"({curve[-1][3]:.0f} s)", flush=True)
    return curve


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 12], help="decoder depths to train")
    ap.add_argument("--steps", type=int, default=1500, help="training steps per depth")
    ap.add_argument("--every", type=int, default=100, help="measure every this many steps")
    ap.add_argument("--lr", type=float, default=BaseTrainConfig.lr, help="peak learning rate")
    ap.add_argument("--checkpoint", help="measure this organism folder or base-training checkpoint instead")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.checkpoint:
        model, processor = organism.load_organism(args.checkpoint)
        print(f"{args.checkpoint}: {lookup_scores(model, processor)}")
        return
    for layers in args.layers:
        learning_curve(layers, args.steps, args.every, args.lr)


if __name__ == "__main__":
    main()
