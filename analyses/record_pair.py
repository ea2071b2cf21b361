"""Record a base and an RL model on the same token sequences (``adt-probe record``).

    adt-probe record --base rl/assets/organism --rl runs/demo/final --out runs/demo/recordings

The sequences are held-out prompts plus the RL model's own completions (``--source rl``, the default), or the base
model's (``--source base``, the mirror check), teacher-forced through both models. Writes ``base.zarr``,
``rl.zarr`` and ``base_noise.zarr`` (the base again in bfloat16 with another batch composition: the noise floor's pair;
in fp32 on CPU a batch change alone moves the router logits by ~1e-7, a floor that any change clears), plus
``items.jsonl`` and ``completions.jsonl``.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

import adt_probe
from adt_probe.outputs import output_dir
from analyses import checkpoints

#: what ``adt-probe record`` writes in ``--out`` (and, with ``--overwrite``, the only names it replaces there)
WRITES = ["base.zarr", "rl.zarr", "base_noise.zarr", "items.jsonl", "completions.jsonl", "audio"]


def heldout(n_per_cell: int, seed: int, data: str | None):
    """The evaluation items: a JSONL file, or ``n_per_cell`` synthetic items per family x difficulty."""
    from rl.data.items import load_items
    from rl.data.tasks import DIFFICULTY_BANDS, FAMILIES, generate_items
    from rl.evaluate import check_items

    if data:
        items = load_items(data)
        check_items(items, data)
        return items
    items = []
    for band in DIFFICULTY_BANDS:
        items += generate_items(n_per_cell * len(FAMILIES), seed=seed, difficulty=band, prefix=f"eval-{band}")
    return items


def input_paths(items, data: str | Path | None = None) -> list[Path]:
    """The user's input files: the data file and every item's audio file (``--out`` must not overlap them)."""
    return ([Path(data)] if data else []) + sorted({Path(it.audio_path) for it in items if it.audio_path})


def record_pair(base_path, rl_path, items, out: Path, *, source: str = "rl", routing: str = "topk",
                lens: str = "logit", batch_size: int = 8, max_new_tokens: int = 96, allow_unverified: bool = False,
                overwrite: bool = False, data: str | Path | None = None) -> dict[str, Path]:
    """Record both models (and the base again, batched differently) on ``source``'s completions to ``items``.

    Before any model runs: both folders are verified (``analyses.checkpoints``; a run folder as ``rl_path`` means
    its newest complete checkpoint), ``out`` is claimed (not the input data's folder, not a folder of someone
    else's files unless ``overwrite``, writable, locked), and the items are checked to fit the model's context.
    """
    from rl.evaluate import check_fits, check_items

    check_items(items, str(data or "items"))
    base_path = checkpoints.model_folder(base_path, allow_unverified=allow_unverified)
    rl_path = checkpoints.model_folder(rl_path, allow_unverified=allow_unverified)
    with output_dir(out, tool="adt-probe record", writes=WRITES, overwrite=overwrite,
                    inputs=[*input_paths(items, data), base_path, rl_path]):
        base, processor, rl = _load_pair(base_path, rl_path)
        check_fits(rl, processor, items, max_new_tokens=max_new_tokens)
        return _record(base, rl, processor, items, out, source=source, routing=routing, lens=lens,
                       batch_size=batch_size, max_new_tokens=max_new_tokens, overwrite=overwrite)


def _load_pair(base_path: Path, rl_path: Path):
    from rl.organism import load_organism

    base, processor = load_organism(base_path)
    rl, rl_processor = load_organism(rl_path)
    if processor.tokenizer.get_vocab() != rl_processor.tokenizer.get_vocab():
        raise ValueError(f"{base_path} and {rl_path} have different tokenizers: the same token ids would mean "
                         "different text to the two models. Compare an RL model with the base it was trained from.")
    adt_probe.weights.check_compatible(base, rl)  # same architecture, layers, experts
    return base, processor, rl


def _record(base, rl, processor, items, out: Path, *, source: str, routing: str, lens: str, batch_size: int,
            max_new_tokens: int, overwrite: bool) -> dict[str, Path]:
    from analyses.sequences import completions, teacher_forced_inputs
    from rl.data.items import write_items

    texts = completions(rl if source == "rl" else base, processor, items, max_new_tokens=max_new_tokens)
    (out / "completions.jsonl").write_text("".join(json.dumps({"id": it.id, "completion": t}) + "\n"
                                                   for it, t in zip(items, texts)))
    write_items(items, out / "items.jsonl")  # with completions.jsonl: the recorded sequences, rebuilt by
    # analyses.sequences.recorded_inputs
    inputs = teacher_forced_inputs(processor, items, texts)
    attrs = {"source": source, "n_items": len(items)}
    paths = {}
    base_bf16 = copy.deepcopy(base).to(torch.bfloat16)
    for name, model, bs in (("base", base, batch_size), ("rl", rl, batch_size),
                            ("base_noise", base_bf16, max(1, batch_size // 2 + 1))):
        ds = adt_probe.record(model, inputs, tokenizer=processor.tokenizer, routing=routing, lens=lens,
                              batch_size=bs, attrs={**attrs, "role": name})
        paths[name] = adt_probe.save(ds, out / f"{name}.zarr", overwrite=overwrite)  # replaces only its own output
    return paths


def main(argv=None) -> None:
    from rl.organism import ORGANISM_DIR

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=str(ORGANISM_DIR), help="base model folder")
    ap.add_argument("--rl", required=True, help="RL model folder (a checkpoint, or a run folder: its newest complete "
                                                "checkpoint)")
    ap.add_argument("--out", required=True, help="output folder (new or empty, or an earlier `record` output)")
    ap.add_argument("--data", help="JSONL items (default: synthetic held-out set)")
    ap.add_argument("--n-per-cell", type=int, default=4)
    ap.add_argument("--seed", type=int, default=30_011)
    ap.add_argument("--source", choices=["rl", "base"], default="rl", help="whose completions are teacher-forced")
    ap.add_argument("--routing", choices=["topk", "full"], default="full")
    checkpoints.add_arguments(ap)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    paths = record_pair(args.base, args.rl, heldout(args.n_per_cell, args.seed, args.data), Path(args.out),
                        source=args.source, routing=args.routing,
                        allow_unverified=args.allow_unverified, overwrite=args.overwrite, data=args.data)
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
