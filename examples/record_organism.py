"""The README's recording example, run as a script: what it records on the shipped base organism.

    python examples/record_organism.py            # one thread, about 1-2 s with loading

Prints the tokens recorded per segment and the mean crystallization layer of the think and answer tokens with their
95% intervals: the figures the README quotes under "Recording routers and lenses".
"""
import time

import numpy as np
import torch

import adt_probe
from rl.data import collate
from rl.data.tasks import generate_items
from rl.evaluate import generate
from rl.organism import load_organism


def main() -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    model, processor = load_organism()
    items = generate_items(8, seed=0)
    prompts = collate.prompt_texts(processor, items, "think")
    completions = generate(model, processor, items, "think", max_new_tokens=48)
    batch = adt_probe.teacher_force(processor, prompts, completions, audio=[it.audio for it in items])
    ds = adt_probe.record(model, batch, tokenizer=processor.tokenizer, routing="topk", lens=adt_probe.LogitLens())
    cr = adt_probe.crystallization(ds)
    seconds = time.perf_counter() - start
    n_tokens = dict(zip(*np.unique(ds["segment"].values.astype(str), return_counts=True)))
    print(f"{ds.sizes['token']} tokens recorded: " + ", ".join(f"{s} {n}" for s, n in n_tokens.items()))
    for seg in ("think", "answer"):
        if not n_tokens.get(seg):
            print(f"{seg}: no tokens")
            continue
        pick = {"segment": seg}
        print(f"{seg}: mean crystallization layer {float(cr.mean_crystallization_layer.sel(pick)):.1f} "
              f"(95% interval {float(cr.mean_crystallization_layer_lo.sel(pick)):.1f} to "
              f"{float(cr.mean_crystallization_layer_hi.sel(pick)):.1f})")
    print(f"{seconds:.1f} s on one thread, loading included")


if __name__ == "__main__":
    main()
