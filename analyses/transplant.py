"""Router transplant: the causal test of where RL's routing changes matter (``adt-probe transplant``).

    adt-probe transplant --base rl/assets/organism --rl runs/demo/final --out runs/demo/transplant

For each band of layers, the RL model routes with the base model's routers there (``rl <- base``: how much of RL's
change do those routers carry?) and the base routes with the RL routers (``base <- rl``: do they suffice?).

* Binary outcomes on held-out items (greedy, think-first prompt): accuracy and think-rate, as the paired change
  against the unmodified model with Newcombe's paired score interval and McNemar's exact test (an interval is never
  [0, 0] just because no item changed).
* Continuous outcomes, teacher-forced on the RL model's completions (far more power than a handful of flipped
  answers): per think token, the KL divergence from the RL model's output distribution and the log-prob of the
  realised think text, each as the change against the unmodified model, with BCa intervals over sequences.
* The reward (accuracy + 0.5 x well-formed), paired over items with a BCa interval.

Writes ``transplant.nc``, ``transplant.json`` and figures.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

import adt_probe
from adt_probe import plot
from adt_probe.architectures import get_module
from adt_probe.decompose import batches
from adt_probe.outputs import output_dir
from adt_probe.segments import segment_tokens
from adt_probe.stats import bca_interval, paired_proportions, per_sequence_sums
from adt_probe.weights import check_compatible, transplant
from analyses import checkpoints
from analyses.cli import command_parser
from analyses.models import for_model, load_pretrained
from analyses.record_pair import heldout
from analyses.sequences import given_completions, teacher_forced_inputs
from rl.data.prompts import MAX_NEW_TOKENS
from rl.evaluate import generate, score

log = logging.getLogger(__name__)

DIRECTIONS = ("rl <- base", "base <- rl")
BINARY = ("accuracy", "think_rate")
CONTINUOUS = ("kl_to_rl", "think_logprob")
FIGURES = ("accuracy", "reward", "kl_to_rl", "think_logprob")
WRITES = ["transplant.nc", "transplant.nc.sha256.json", "transplant.json",
          *(f"transplant_{m}.{ext}" for m in (*FIGURES, "think_rate") for ext in ("png", "pdf"))]


def bands_of(n_layers: int, n_bands: int) -> list[list[int]]:
    """``n_bands`` contiguous, equal bands of layers, lowest first."""
    return [list(b) for b in np.array_split(np.arange(n_layers), n_bands)]


def per_item(model, processor, items, max_new_tokens: int, batch_size: int = 32) -> dict[str, np.ndarray]:
    """:func:`completion_outcomes` of ``model``'s greedy think-first completions to ``items``."""
    return completion_outcomes(items, generate(model, processor, items, "think", max_new_tokens=max_new_tokens,
                                               batch_size=batch_size))


def completion_outcomes(items, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Per item (n,): ``accuracy`` and ``think_rate`` (bool), ``reward`` (correct + 0.5 x well formed)."""
    s = score(items, texts, with_similarity=False)
    return {"accuracy": s.correct.astype(bool), "think_rate": s.thought.astype(bool),
            "reward": s.correct.astype(float) + 0.5 * s.well_formed.astype(float)}


def _mean_of(statistic_col: int):
    return lambda sums: sums[..., statistic_col] / sums[..., -1]


@torch.no_grad()
def teacher_forced_outcomes(rl, base, inputs, bands, *, tokenizer, batch_size: int = 8) -> dict:
    """Per think token of ``inputs`` (the RL model's completions) and per (direction, band), plus the two unmodified
    models: KL(p_RL || p_model) (nats) and the log-prob of the realised next token (nats).

    Returns ``{"sequence": (tokens,), (name): {"kl_to_rl": (tokens,), "think_logprob": (tokens,)}}`` for name in
    ``"rl"``, ``"base"`` and ``"<direction>|<band index>"``.
    """
    ids_all = inputs["input_ids"]
    mask_all = inputs.get("attention_mask", torch.ones_like(ids_all)).bool()
    think = torch.from_numpy(segment_tokens(tokenizer, ids_all, mask_all) == "think")
    out, seq = {}, []
    models = {"rl": (rl, None, None), "base": (base, None, None)}
    for b, band in enumerate(bands):
        models[f"rl <- base|{b}"] = (rl, base, band)
        models[f"base <- rl|{b}"] = (base, rl, band)
    start = 0
    for batch in batches(inputs, batch_size):
        n = batch["input_ids"].shape[0]
        ids, mask = batch["input_ids"], mask_all[start:start + n]
        # a think token predicts the next token of the same sequence: keep positions whose next one is real
        keep = (think[start:start + n, :-1] & mask[:, 1:]).reshape(-1)
        target = ids[:, 1:].reshape(-1)[keep]
        seq.append(np.repeat(np.arange(start, start + n), ids.shape[1] - 1)[keep.numpy()])
        ref = None
        for name, (model, donor, band) in models.items():
            if donor is None:
                logits = model(**batch, use_cache=False).logits
            else:
                with transplant(model, donor, band):
                    logits = model(**batch, use_cache=False).logits
            logp = torch.log_softmax(logits[:, :-1].float(), -1).reshape(-1, logits.shape[-1])[keep]
            if ref is None:
                ref = logp  # the RL model comes first
            kl = (ref.exp() * (ref - logp)).sum(-1)
            out.setdefault(name, {"kl_to_rl": [], "think_logprob": []})
            out[name]["kl_to_rl"].append(kl.numpy())
            out[name]["think_logprob"].append(logp.gather(1, target[:, None])[:, 0].numpy())
        start += n
    result = {name: {k: np.concatenate(v) for k, v in d.items()} for name, d in out.items()}
    result["sequence"] = np.concatenate(seq) if seq else np.zeros(0, np.int64)
    return result


def continuous_effects(outcomes: dict, bands, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Change of each continuous outcome against the unmodified model (``rl`` for ``rl <- base``, ``base`` for
    ``base <- rl``), token mean over think tokens, BCa interval over sequences (paired)."""
    seq_ids, seq = np.unique(outcomes["sequence"], return_inverse=True)
    groups = np.zeros(len(seq), np.int64)
    out = {}
    for direction, ref_name in (("rl <- base", "rl"), ("base <- rl", "base")):
        for b in range(len(bands)):
            name = f"{direction}|{b}"
            for m in CONTINUOUS:
                diff = outcomes[name][m] - outcomes[ref_name][m]
                s, c = per_sequence_sums(np.stack([diff, np.ones_like(diff)], 1), seq, groups, len(seq_ids), 1)
                out[(direction, b, m)] = bca_interval(s[:, 0], _mean_of(0), n_boot=n_boot, seed=seed)
    return out


def run(base_path, rl_path, items, *, n_bands: int = 2, n_boot: int = 1000, seed: int = 0,
        max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = 32, allow_unverified: bool = False,
        dtype: str = "float32", device_map: str | None = None, rl_completions: Sequence[str] | None = None,
        base_completions: Sequence[str] | None = None) -> xr.Dataset:
    """Both directions per band: binary outcomes on generations, continuous ones teacher-forced on RL completions.

    Both model folders are verified first (``analyses.checkpoints``); any pair of folders of one MoE architecture
    loads, and a text model is asked the items' written facts (``analyses.models``). ``rl_completions`` and
    ``base_completions``: the unmodified models' greedy think-first completions to ``items`` when already generated
    (``adt-probe reproduce`` passes its evaluation's), one per item.
    """
    given = {"rl": given_completions(rl_completions, items, "rl completions"),  # checked before any model loads
             "base": given_completions(base_completions, items, "base completions")}
    base, processor = load_pretrained(checkpoints.model_folder(base_path, allow_unverified=allow_unverified),
                                      dtype=dtype, device_map=device_map)
    rl, _ = load_pretrained(checkpoints.model_folder(rl_path, allow_unverified=allow_unverified), dtype=dtype,
                            device_map=device_map)
    spec = check_compatible(base, rl)
    if not spec.is_moe:
        raise ValueError(f"{base_path} is a dense {spec.family} model: a router transplant needs routers")
    items = for_model(items, processor)
    bands = bands_of(len(get_module(base, spec.layers)), n_bands)
    texts = {name: given[name] or generate(model, processor, items, "think", max_new_tokens=max_new_tokens,
                                           batch_size=batch_size) for name, model in (("rl", rl), ("base", base))}
    reference = {"rl <- base": completion_outcomes(items, texts["rl"]),
                 "base <- rl": completion_outcomes(items, texts["base"])}
    inputs = teacher_forced_inputs(processor, items, texts["rl"])
    outcomes = teacher_forced_outcomes(rl, base, inputs, bands, tokenizer=processor.tokenizer,
                                       batch_size=min(batch_size, 8))
    cont = continuous_effects(outcomes, bands, n_boot=n_boot, seed=seed)
    names = [*BINARY, "reward", *CONTINUOUS]
    data = {f"{m}_delta{s}": np.full((len(bands), 2), np.nan) for m in names for s in ("", "_lo", "_hi")}
    data.update({f"{m}_mcnemar_p": np.full((len(bands), 2), np.nan) for m in BINARY})
    for b, band in enumerate(tqdm(bands, desc="transplant", unit="band")):
        for d, (direction, (model, donor)) in enumerate({"rl <- base": (rl, base), "base <- rl": (base, rl)}.items()):
            with transplant(model, donor, band):
                got = per_item(model, processor, items, max_new_tokens, batch_size)
            ref = reference[direction]
            cells = {m: paired_proportions(ref[m], got[m]) for m in BINARY}
            diff = got["reward"] - ref["reward"]
            cells["reward"] = bca_interval(np.stack([diff, np.ones_like(diff)], 1), _mean_of(0), n_boot=n_boot,
                                           seed=seed)
            cells.update({m: cont[(direction, b, m)] for m in CONTINUOUS})
            for m, ci in cells.items():
                for k, s in (("value", ""), ("lo", "_lo"), ("hi", "_hi")):
                    data[f"{m}_delta{s}"][b, d] = ci[k]
                if m in BINARY:
                    data[f"{m}_mcnemar_p"][b, d] = ci["mcnemar_p"]
    ds = xr.Dataset({k: (("band", "direction"), v) for k, v in data.items()},
                    coords={"band": [f"{band[0]}-{band[-1]}" for band in bands], "direction": list(DIRECTIONS)})
    for direction, ref in reference.items():
        for m in ("accuracy", "think_rate", "reward"):
            ds.attrs[f"{direction.split()[0]}_{m}"] = float(np.mean(ref[m]))
    ds.attrs.update(kind="router_transplant", n_items=len(items), n_boot=n_boot,
                    interval="binary: Newcombe paired score interval + McNemar exact p; reward: BCa over items; "
                             "kl_to_rl (nats), think_logprob (nats per think token): BCa over sequences, teacher-"
                             "forced on the RL model's completions, change against the unmodified model")
    return ds


def main(argv=None) -> None:
    args = command_parser("transplant", __doc__).parse_args(argv)
    out = Path(args.out)
    with output_dir(out, tool="adt-probe transplant", writes=WRITES, overwrite=args.overwrite,
                    inputs=[args.base, args.rl] + ([args.data] if args.data else [])):
        ds = run(args.base, args.rl, heldout(args.n_per_cell, args.seed, args.data), n_bands=args.bands,
                 n_boot=args.n_boot, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                 allow_unverified=args.allow_unverified, dtype=args.dtype, device_map=args.device_map)
        adt_probe.save(ds, out / "transplant.nc", overwrite=args.overwrite)
        (out / "transplant.json").write_text(json.dumps(ds.to_dict(data="list"), indent=2, default=str) + "\n")
        for metric in FIGURES:
            fig = plot.transplant_effects(ds, metric)
            plot.save(fig, out / f"transplant_{metric}")
    log.info("%s", ds.to_dataframe().round(4).to_string())


if __name__ == "__main__":
    main()
