"""Held-out KL and cost of the per-model tuned lens against its number of steps, on the shipped organism.

    python -m benchmarks.tuned_lens_steps [--steps 100 150 300 600] [--per-cell 4]

The organism reads the held-out items' reference chains, teacher-forced (``--per-cell`` items per family x
difficulty: 4 gives the demo's 84). For each step count, one lens is trained from scratch
(``adt_probe.tuned_lens.train_tuned_lens``, one thread) and its held-out KL to the model's own output is printed as
the mean over the lower and the upper band's blocks, beside the logit lens's. ``adt-probe compare`` uses
``analyses.compare.TUNED_LENS_STEPS``. Last, the seconds of the whole reading as ``compare`` pays them
(``analyses.compare.tuned_lens_numbers`` for a pair, here the organism against itself: two lenses, two recordings;
the embedding stream already read by compare's logit-lens step).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from adt_probe.crystallize import embedding_top1
from adt_probe.tuned_lens import train_tuned_lens
from analyses.compare import TUNED_LENS_STEPS, reference_texts, tuned_lens_numbers
from analyses.sequences import teacher_forced_inputs
from rl import organism
from rl.organism.train_base import config_of, heldout_items


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 150, 300, 600], help="step counts to try")
    ap.add_argument("--per-cell", type=int, default=4, help="held-out items per family x difficulty")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, processor = organism.load_organism()
    items = heldout_items(dataclasses.replace(config_of(organism.ORGANISM_DIR), eval_per_cell=args.per_cell))
    inputs = teacher_forced_inputs(processor, items, reference_texts(items))
    half = model.config.text_config.num_hidden_layers // 2
    print(f"{len(items)} items; held-out KL to the model's output, nats, mean over lower / upper band blocks")
    for steps in args.steps:
        t0 = time.perf_counter()
        _, report = train_tuned_lens(model, inputs, steps=steps)
        logit, tuned = report["heldout_kl_logit"], report["heldout_kl_tuned"]
        print(f"{steps} steps, {time.perf_counter() - t0:.1f} s: logit lens {logit[:half].mean():.3f} / "
              f"{logit[half:].mean():.3f}, tuned lens {tuned[:half].mean():.3f} / {tuned[half:].mean():.3f}")
    emb = embedding_top1(model, inputs)
    t0 = time.perf_counter()
    tuned_lens_numbers(model, model, inputs, items, tokenizer=processor.tokenizer, embeddings={"base": emb, "rl": emb})
    print(f"the whole reading of a pair ({TUNED_LENS_STEPS} steps per lens): {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
