"""Does a look-up learned on plain text carry over to the chat format? A short fine-tune from a checkpoint.

    python -m benchmarks.skill_transfer runs/v5/skill-end [--steps 300] [--question last | --choices hidden]
        [--lr 1e-4] [--text-chain 1]

From ``CHECKPOINT`` (e.g. the end of v5's skill phase), ``--steps`` text-phase steps of chat-formatted sub-skill items
only (``rl.organism.train_base.sample_batch`` with ``text_skills = 1``: written facts, context / notes / chain modes;
a fresh AdamW at the recipe's learning rate or ``--lr``, 20 warm-up steps, one thread), then
``benchmarks.lookup_depth``'s whole-sentence look-up (plain and chat format: is the plain skill kept?) and the
sub-skill accuracy from written facts of ``benchmarks.organism_facts_probe``, direct and after the think-first prompt.
``--question last`` moves the question after the choices and the instruction (the prompt every other tool uses puts it
first), to test whether the distance between question and answer is what blocks the transfer. ``--choices hidden``
drops the list of choices from the prompt (it names every attribute word, a distractor the plain format does not
have). Nothing is saved.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.lookup_depth import lookup_scores
from benchmarks.organism_facts_probe import skill_accuracy
from rl import organism
from rl.data import collate, prompts
from rl.organism.recipe import BaseTrainConfig
from rl.organism.train_base import sample_batch, supervised_step

#: data-stream steps of the fine-tune start here, past any step the base training drew
FIRST_STEP = 5000


#: the prompt's own user text, kept before ``--question last`` replaces ``prompts.user_text``
QUESTION_FIRST = prompts.user_text


def question_last(item, mode: prompts.Mode) -> str:
    """``prompts.user_text`` with the question after the choices and the instruction."""
    text = QUESTION_FIRST(item, mode)
    return text if mode == "describe" else f"{text.removeprefix(item.question + ' ')}\n{item.question}"


def without_choices(item, mode: prompts.Mode) -> str:
    """``prompts.user_text`` without the list of choices."""
    text = QUESTION_FIRST(item, mode)
    return text if mode == "describe" else text.replace(f" {prompts.format_choices(item.choices)}", "", 1)


def fine_tune(model, processor, steps: int, lr: float = BaseTrainConfig.lr,
              text_chain: float = BaseTrainConfig.text_chain) -> None:
    """``steps`` chat-format steps of sub-skill items (batch 32) on ``model``, in place; ``text_chain`` of them write
    the answer sentence in the think block (the rest answer directly, from the prompt or after notes)."""
    cfg = BaseTrainConfig(perception_steps=0, skill_steps=0, text_steps=10**6, steps=10**6, text_skills=1.0,
                          text_chain=text_chain)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        loss = supervised_step(model, opt, collate.encode_supervised(processor, *sample_batch(cfg, FIRST_STEP + step)),
                               lr * min(1.0, (step + 1) / 20), cfg.grad_clip)
        if (step + 1) % 50 == 0:
            print(f"step {step + 1}: loss {loss:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    model.eval()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="an organism folder or a base-training checkpoint")
    ap.add_argument("--steps", type=int, default=300, help="fine-tuning steps")
    ap.add_argument("--question", choices=["first", "last"], default="first", help="where the prompt puts it")
    ap.add_argument("--lr", type=float, default=BaseTrainConfig.lr, help="peak learning rate (the recipe's: 1e-3)")
    ap.add_argument("--text-chain", type=float, default=BaseTrainConfig.text_chain,
                    help="share of examples that write the answer sentence in the think block (the recipe's: 0.4)")
    ap.add_argument("--per-cell", type=int, default=10, help="held-out items per skill x band x 3")
    ap.add_argument("--choices", choices=["shown", "hidden"], default="shown", help="list the choices in the prompt")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.question == "last" and args.choices == "hidden":
        ap.error("--question last moves the question after the choices: use it with --choices shown")
    if args.question == "last":
        prompts.user_text = question_last  # every prompt of this process, training and probe alike
    if args.choices == "hidden":
        prompts.user_text = without_choices
    model, processor = organism.load_organism(args.checkpoint)
    fine_tune(model, processor, args.steps, args.lr, args.text_chain)
    print(f"after the fine-tune: {lookup_scores(model, processor)}")
    print("direct answer:")
    skill_accuracy(model, processor, args.per_cell, "answer", 16)
    print("think-first prompt:")
    skill_accuracy(model, processor, args.per_cell, "think", 60)


if __name__ == "__main__":
    main()
