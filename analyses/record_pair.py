"""Record a base and an RL model on the same token sequences (``adt-probe record``).

    adt-probe record --base rl/assets/organism --rl runs/demo/final --out runs/demo/recordings

The sequences are held-out prompts plus the RL model's own completions (``--source rl``, the default), or the base
model's (``--source base``, the mirror check), teacher-forced through both models. Writes ``base.zarr``,
``rl.zarr`` and ``base_noise.zarr`` (the base again in bfloat16 with another batch composition: the noise floor's pair;
in fp32 on CPU a batch change alone moves the router logits by ~1e-7, a floor that any change clears), plus
``items.jsonl`` and ``completions.jsonl``.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

import adt_probe
from adt_probe.outputs import output_dir
from analyses import checkpoints
from analyses.cli import command_parser
from analyses.models import for_model, load_pretrained
from analyses.sequences import completions, given_completions, teacher_forced_inputs
from rl.data.items import load_items, write_items
from rl.data.prompts import MAX_NEW_TOKENS
from rl.data.tasks import heldout_set
from rl.evaluate import check_fits, check_items
from rl.organism import calibrated_audio

log = logging.getLogger(__name__)

#: what ``adt-probe record`` writes in ``--out`` (and, with ``--overwrite``, the only names it replaces there)
WRITES = ["base.zarr", "rl.zarr", "base_noise.zarr", "items.jsonl", "completions.jsonl", "audio"]


def heldout(n_per_cell: int, seed: int, data: str | None, calibrated: bool = False):
    """The evaluation items: a JSONL file, or ``n_per_cell`` synthetic items per family x difficulty (``calibrated``
    clips: see ``rl.data.tasks.render``; for a model, ``rl.organism.calibrated_audio(path)``)."""
    if data:
        items = load_items(data)
        check_items(items, data)
        return items
    return heldout_set(n_per_cell, seed, prefix="eval", calibrated=calibrated)


_LOGIT_LENS = adt_probe.LogitLens()


def input_paths(items, data: str | Path | None = None) -> list[Path]:
    """The user's input files: the data file and every item's audio file (``--out`` must not overlap them)."""
    return ([Path(data)] if data else []) + sorted({Path(it.audio_path) for it in items if it.audio_path})


def record_pair(base_path, rl_path, items, out: Path, *, source: str = "rl", routing: str = "topk",
                lens: adt_probe.Lens | None = _LOGIT_LENS, batch_size: int = 8, max_new_tokens: int = MAX_NEW_TOKENS,
                allow_unverified: bool = False, overwrite: bool = False, data: str | Path | None = None,
                dtype: str = "float32", device_map: str | None = None,
                completions: Sequence[str] | None = None) -> dict[str, Path]:
    """Record both models (and the base again, batched differently) on ``source``'s completions to ``items``
    (``completions``: those greedy completions, one per item, when already generated).

    Any two folders of one architecture load (``analyses.models.load_pretrained``; ``dtype``, ``device_map`` as
    there); a text model gets the items' written facts instead of their audio (``analyses.models.for_model``).

    Before any model runs: both folders are verified (``analyses.checkpoints``; a run folder as ``rl_path`` means
    its newest complete checkpoint), ``out`` is claimed (not the input data's folder, not a folder of someone
    else's files unless ``overwrite``, writable, locked), and the items are checked to fit the model's context.
    """
    check_items(items, str(data or "items"))
    completions = given_completions(completions, items)
    base_path = checkpoints.model_folder(base_path, allow_unverified=allow_unverified)
    rl_path = checkpoints.model_folder(rl_path, allow_unverified=allow_unverified)
    with output_dir(out, tool="adt-probe record", writes=WRITES, overwrite=overwrite,
                    inputs=[*input_paths(items, data), base_path, rl_path]):
        base, processor, rl = _load_pair(base_path, rl_path, dtype=dtype, device_map=device_map)
        check_fits(rl, processor, for_model(items, processor), max_new_tokens=max_new_tokens)
        return _record(base, rl, processor, items, out, source=source, routing=routing, lens=lens,
                       batch_size=batch_size, max_new_tokens=max_new_tokens, overwrite=overwrite, texts=completions)


def _load_pair(base_path: Path, rl_path: Path, *, dtype: str, device_map: str | None):
    base, processor = load_pretrained(base_path, dtype=dtype, device_map=device_map)
    rl, rl_processor = load_pretrained(rl_path, dtype=dtype, device_map=device_map)
    if processor.tokenizer.get_vocab() != rl_processor.tokenizer.get_vocab():
        raise ValueError(f"{base_path} and {rl_path} have different tokenizers: the same token ids would mean "
                         "different text to the two models. Compare an RL model with the base it was trained from.")
    adt_probe.weights.check_compatible(base, rl)  # same architecture, layers, experts
    return base, processor, rl


def _record(base, rl, processor, items, out: Path, *, source: str, routing: str, lens: adt_probe.Lens | None,
            batch_size: int, max_new_tokens: int, overwrite: bool, texts: Sequence[str] | None) -> dict[str, Path]:
    # with completions.jsonl: the recorded sequences, rebuilt by analyses.sequences.recorded_inputs
    write_items(items, out / "items.jsonl")
    items = for_model(items, processor)
    if texts is None:
        texts = completions(rl if source == "rl" else base, processor, items, max_new_tokens=max_new_tokens,
                            batch_size=batch_size)
    (out / "completions.jsonl").write_text("".join(json.dumps({"id": it.id, "completion": t}) + "\n"
                                                   for it, t in zip(items, texts)))
    inputs = teacher_forced_inputs(processor, items, texts)
    attrs = {"source": source, "n_items": len(items)}
    paths = {}
    base_bf16 = copy.deepcopy(base).to(torch.bfloat16)
    runs = (("base", base, batch_size), ("rl", rl, batch_size), ("base_noise", base_bf16, max(1, batch_size // 2 + 1)))
    for name, model, bs in tqdm(runs, desc="record", unit="model"):
        ds = adt_probe.record(model, inputs, tokenizer=processor.tokenizer, routing=routing, lens=lens,
                              options=adt_probe.RecordOptions(batch_size=bs), attrs={**attrs, "role": name})
        paths[name] = adt_probe.save(ds, out / f"{name}.zarr", overwrite=overwrite)  # replaces only its own output
    return paths


def main(argv=None) -> None:
    args = command_parser("record", __doc__).parse_args(argv)
    torch.manual_seed(0)
    items = heldout(args.n_per_cell, args.seed, args.data, calibrated=calibrated_audio(args.base))
    paths = record_pair(args.base, args.rl, items, Path(args.out),
                        source=args.source, routing=args.routing, batch_size=args.batch_size,
                        max_new_tokens=args.max_new_tokens, allow_unverified=args.allow_unverified,
                        overwrite=args.overwrite, data=args.data, dtype=args.dtype, device_map=args.device_map)
    for name, path in paths.items():
        log.info("%s: %s", name, path)


if __name__ == "__main__":
    main()
