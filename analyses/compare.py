"""Any base checkpoint against one or several RL checkpoints: findings, figures, report (``adt-probe compare``).

    adt-probe compare --base rl/assets/organism --rl runs/a/final --rl runs/b/final --data items.jsonl --out cmp

Both models read the same tokens: the prompts of ``--data`` plus each RL model's own greedy completions (and, the
mirror check, the base's own completions). Then:

1. router effect at fixed input (``adt_probe.decompose.router_effects``: the exact split of every router-logit change
   into ``ΔW x̄ + Δb`` and ``W̄ Δx``), per layer and per band, scale-free, with top-k change and top-1 flip rates and
   JS beside it; calibrated by ``--nulls`` random router updates of uniform relative size on the same tokens;
2. controls without retraining: random-direction updates with the RL update's own norm per tensor, of the routers
   only, of everything but the routers, and of everything (``--nulls`` seeds each); and the SFT control
   (``analyses.sft_control``: the base fine-tuned a few dozen steps on the RL model's think text, its update rescaled
   per tensor to RL's norm; ``--sft-control``, by default only for models of at most 50M parameters);
3. crystallization: where think tokens (and content tokens) settle, embedding stream included, output-only bin apart,
   with paired BCa curves; its floor, the same architecture with random weights on the same tokens; and the same
   shares read through a tuned lens trained per model (``--tuned-lens``), with each lens's held-out KL beside the
   logit lens's: the logit lens under-reads early layers, which could move where tokens seem to settle;
4. the verdicts of ``analyses.verdicts`` (rules and hash stamped), ``findings.json``, figures (PNG 300 dpi + PDF),
   ``report.md``.

With several ``--rl`` runs every band statistic also gets a hierarchical bootstrap (runs, then sequences), and the
verdicts use it. Intervals: BCa over sequences, stratified by family x difficulty when the items carry them.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

import adt_probe
from adt_probe import plot
from adt_probe.crystallize import (
    embedding_top1,
    settling_curves,
    settling_stream,
    upper_share,
    upper_share_delta,
    upper_share_intervals,
    upper_share_sums,
)
from adt_probe.decompose import (
    band_mean,
    band_ratio,
    band_sums,
    capture_router_inputs,
    layer_effects,
    router_effects,
    token_groups,
)
from adt_probe.stats import bca_interval, hierarchical_interval
from adt_probe.tuned_lens import train_tuned_lens
from adt_probe.weights import check_compatible, random_update, router_nulls, router_parameter_names, update_norms
from analyses import checkpoints, verdicts
from analyses.cli import command_parser
from analyses.models import for_model, load_pretrained, wanted
from analyses.report import write_compare_report
from analyses.sequences import completions, given_completions, teacher_forced_inputs
from analyses.sft_control import sft_control
from rl.data.items import load_items
from rl.data.prompts import MAX_NEW_TOKENS, reference_completion
from rl.train.checkpoint import CheckpointError

log = logging.getLogger(__name__)

#: band quantities reported beside the verdict's ratio (see ``adt_probe.decompose.band_sums``)
BAND_QUANTITIES = ("rel_router", "rel_input", "rel_total", "share_router", "topk_change_router", "top1_flip_router",
                   "js_router", "topk_change_input", "topk_change_total", "top1_flip_total", "js_total")
CONTROL_PARTS = ("routers", "others", "all")
#: band means of every control (relative router-logit change at fixed input, input term, routing change rates)
CONTROL_QUANTITIES = ("rel_router", "rel_input", "topk_change_router", "top1_flip_router")
#: organism content words (attribute levels, event kinds); counts are digits and the answer word its own group
ATTRIBUTE_WORDS = frozenset({"very", "low", "middle", "high", "short", "medium", "long", "quiet", "loud", "tone",
                             "noise", "higher", "lower", "longer", "shorter", "louder", "quieter"})


class CompareInputError(ValueError):
    """Checkpoints or data that cannot be compared; the message names the problem and the fix."""


# ---------------------------------------------------------------------------------------------------------------------
# inputs


def same_weights(a, b) -> bool:
    """True when every parameter of the two models is identical."""
    pb = dict(b.named_parameters())
    return all(torch.equal(p, pb[n]) for n, p in a.named_parameters())


def check_pair(base, base_processor, rl, rl_processor, base_path, rl_path) -> list[str]:
    """Raise ``CompareInputError`` for a pair that cannot be compared; return warnings (a base equal to the RL)."""
    if base_processor.tokenizer.get_vocab() != rl_processor.tokenizer.get_vocab():
        raise CompareInputError(f"{base_path} and {rl_path} have different tokenizers: the same token ids would mean "
                                "different text to the two models. Compare an RL model with the base it was trained "
                                "from.")
    try:
        check_compatible(base, rl)
    except Exception as err:  # UnknownArchitectureError or a shape mismatch: one message for the user
        raise CompareInputError(f"{base_path} and {rl_path} cannot be compared: {err}") from err
    if [n for n, _ in base.named_parameters()] != [n for n, _ in rl.named_parameters()]:
        raise CompareInputError(f"{base_path} and {rl_path} have different parameters (architectures differ): compare "
                                "an RL model with the base it was trained from.")
    if same_weights(base, rl):
        return [f"{rl_path} has exactly the weights of the base {base_path}: every difference is 0 and every verdict "
                "is 'not shown'. Pass the trained checkpoint as --rl."]
    return []


def check_items(items, *, need_reference: bool = False, path: str = "data") -> None:
    """A clear error for an empty data file, or for items without reference chains when an analysis needs them."""
    if not items:
        raise CompareInputError(f"{path}: no items; pass a JSONL file in the item format (rl.data.items)")
    if need_reference:
        missing = [it.id for it in items if not it.reference_chain]
        if missing:
            raise CompareInputError(f"{path}: {len(missing)} of {len(items)} items have no reference_chain (first: "
                                    f"{missing[0]!r}), but --source reference teacher-forces the reference chains. Add "
                                    "reference chains to the items, or use --source rl.")


def reference_texts(items) -> list[str]:
    """Completions made of each item's reference chain in a think block, then its answer (``--source reference``)."""
    return [reference_completion(it) for it in items]


def strata_of(items, sequence: np.ndarray) -> np.ndarray | None:
    """family x difficulty per sequence that carries tokens (``sequence``: sorted unique ids), or None."""
    labels = [f"{getattr(it, 'family', '')}|{getattr(it, 'difficulty', '')}" for it in items]
    if len(set(labels)) <= 1:
        return None
    out = np.array([labels[int(s)] for s in sequence])
    counts = {s: int((out == s).sum()) for s in set(out)}
    return out if counts and min(counts.values()) >= 2 else None  # a stratum of one sequence: nothing to resample


def content_groups(tokenizer, token_ids: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Organism content tokens per token: ``attribute`` (level and kind words), ``count`` (digits) in think or answer
    text, ``answer_word`` (answer text between the tags); ``""`` elsewhere."""
    strings = np.array([t.lstrip("Ġ").lower() if isinstance(t, str) else ""
                        for t in tokenizer.convert_ids_to_tokens([int(i) for i in token_ids])])
    out = np.full(len(strings), "", dtype="<U12")
    text = np.isin(segments, ["think", "answer"])
    out[text & np.isin(strings, list(ATTRIBUTE_WORDS))] = "attribute"
    out[text & np.char.isdigit(strings)] = "count"
    out[(segments == "answer") & ~np.char.startswith(strings, "<") & (strings != "")] = "answer_word"
    return out


# ---------------------------------------------------------------------------------------------------------------------
# finding 1: the routers at fixed input


def router_rel_size(base, rl) -> float:
    """Pooled relative change of the router weights, sqrt(sum ||ΔW||² / sum ||W||²) over MoE layers."""
    names = router_parameter_names(base)
    theirs = dict(rl.named_parameters())
    num = sum(float((theirs[n].detach().double() - p.detach().double()).pow(2).sum())
              for n, p in base.named_parameters() if n in names)
    den = sum(float(p.detach().double().pow(2).sum()) for n, p in base.named_parameters() if n in names)
    return (num / max(den, 1e-30)) ** 0.5


def halves(layers) -> tuple[list[int], list[int]]:
    """Lower and upper half of the MoE layers (fixed before looking)."""
    layers = [int(i) for i in layers]
    return layers[: len(layers) // 2], layers[len(layers) // 2:]


def segment_for(effects_list) -> str:
    """Think tokens when every run has some, else all tokens."""
    return "think" if all(token_groups(e, "think").any() for e in effects_list) else "all"


def _interval(per_run: list[np.ndarray], statistic, *, n_boot: int, seed: int, strata: list) -> dict:
    """BCa per run; with several runs the hierarchical interval, the per-run intervals beside it."""
    each = [bca_interval(a, statistic, n_boot=n_boot, seed=seed, strata=s) for a, s in zip(per_run, strata)]
    if len(per_run) == 1:
        return each[0]
    return {**hierarchical_interval(per_run, statistic, n_boot=n_boot, seed=seed), "per_run_intervals": each}


def router_numbers(effects_list, items, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """The band numbers of finding 1 from ``router_effects`` of each run (same layers)."""
    lower, upper = halves(effects_list[0]["layer"].values)
    segment = segment_for(effects_list)
    strata = []
    for e in effects_list:
        keep = token_groups(e, segment)
        strata.append(strata_of(items, np.unique(e["sequence"].values[keep])))
    sums = {q: [band_sums(e, q, lower=lower, upper=upper, segment=segment) for e in effects_list]
            for q in BAND_QUANTITIES}
    out = {"segment": segment, "bands": {"lower": lower, "upper": upper},
           "ratio": _interval(sums["rel_router"], band_ratio, n_boot=n_boot, seed=seed, strata=strata),
           "null_ratios": [float(band_ratio(band_sums(e, f"rel_null_{j}", lower=lower, upper=upper,
                                                       segment=segment).sum(0)))
                           for e in effects_list for j in range(e.sizes.get("null", 0))],
           "n_sequences": min(int(np.unique(e["sequence"].values[token_groups(e, segment)]).size)
                              for e in effects_list),
           "band": {q: {b: _interval(sums[q], band_mean(b), n_boot=n_boot, seed=seed, strata=strata)
                        for b in ("lower", "upper")} for q in BAND_QUANTITIES},
           "stratified": any(s is not None for s in strata)}
    return out


def router_finding(base, rls, inputs_list, items, *, tokenizer=None, n_nulls: int = 5, seed: int = 0,
                   n_boot: int = 1000, batch_size: int = 8) -> dict:
    """Finding 1 end to end: router effects of every run (with ``n_nulls`` uniform random router updates of the
    run's own pooled relative size), band numbers, verdict. Returns ``{"effects", "numbers", "verdict"}``."""
    effects = []
    for k, (rl, inputs) in enumerate(zip(rls, inputs_list)):
        rel = router_rel_size(base, rl)
        nulls = router_nulls(base, rel if rel > 0 else 0.05, n_nulls, seed=seed + 1000 * k)
        effects.append(router_effects(base, rl, inputs, tokenizer=tokenizer, nulls=nulls, batch_size=batch_size))
    numbers = router_numbers(effects, items, n_boot=n_boot, seed=seed)
    numbers["router_rel_size"] = [router_rel_size(base, rl) for rl in rls]
    moved = any(v > 0 for v in numbers["router_rel_size"])
    verdict = verdicts.upper_routers(numbers["ratio"], numbers["null_ratios"], routers_moved=moved,
                                     n_sequences=numbers["n_sequences"])
    verdict["numbers"]["band"] = {q: numbers["band"][q] for q in ("rel_router", "rel_input", "share_router",
                                                                  "topk_change_router", "top1_flip_router",
                                                                  "js_router")}
    return {"effects": effects, "numbers": numbers, "verdict": verdict}


def _rl_over(rl_row: dict, control: dict) -> dict:
    """RL's router term over a control's, per band (NaN where the control's is 0)."""
    return {b: rl_row["rel_router"][b] / control["rel_router"][b] if control["rel_router"][b] > 0 else float("nan")
            for b in ("lower", "upper")}


def controls(base, rl, inputs, items, *, tokenizer=None, k: int = 5, seed: int = 0, n_boot: int = 200,
             batch_size: int = 8, sft: bool = False) -> dict:
    """Random-direction updates with the RL update's own norm per tensor, of the routers only, everything but the
    routers, and everything; ``k`` seeds each. Per part: the band means of the router and input terms and the
    upper/lower ratio of each draw, and how RL's router effect compares (RL over the draws' mean). ``sft``: also the
    SFT control (``analyses.sft_control``: the base fine-tuned on these inputs' think text, at RL's norm per tensor),
    under ``"sft"`` with the same numbers and its fine-tuning record."""
    norms = update_norms(base, rl)
    routers = router_parameter_names(base)
    cached = capture_router_inputs(base, inputs, batch_size=batch_size)  # the base once for all 3 x k draws

    def effects(model):
        return router_effects(base, model, inputs, tokenizer=tokenizer, batch_size=batch_size, base_inputs=cached)

    rl_eff = effects(rl)
    lower, upper = halves(rl_eff["layer"].values)
    segment = segment_for([rl_eff])

    def summary(eff) -> dict:
        row = {}
        for q in CONTROL_QUANTITIES:
            s = band_sums(eff, q, lower=lower, upper=upper, segment=segment).sum(0)
            row[q] = {"lower": float(band_mean("lower")(s)), "upper": float(band_mean("upper")(s))}
        row["ratio_rel_router"] = float(band_ratio(band_sums(eff, "rel_router", lower=lower, upper=upper,
                                                             segment=segment).sum(0)))
        return row

    out = {"rl": summary(rl_eff), "k": k, "segment": segment, "definition":
           "per tensor a Gaussian direction scaled to ||theta_rl - theta_base|| of that tensor"}
    for part in CONTROL_PARTS if k > 0 else ():
        chosen = {n: v for n, v in norms.items() if part == "all" or (part == "routers") == (n in routers)}
        draws = [summary(effects(random_update(base, part=part, norms=chosen, seed=seed + j))) for j in range(k)]
        mean = {q: {b: float(np.mean([d[q][b] for d in draws])) for b in ("lower", "upper")}
                for q in CONTROL_QUANTITIES}
        out[part] = {"draws": draws, "mean": mean, "rl_over_control_rel_router": _rl_over(out["rl"], mean)}
    if sft:
        model, record = sft_control(base, rl, inputs, tokenizer=tokenizer, seed=seed, batch_size=batch_size)
        row = summary(effects(model))
        out["sft"] = {**row, "rl_over_control_rel_router": _rl_over(out["rl"], row), **record}
    return out


# ---------------------------------------------------------------------------------------------------------------------
# finding 2: crystallization


def settling_of(model, inputs, *, tokenizer=None, batch_size: int = 8, lens: adt_probe.Lens | None = None,
                embedding: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Per token: settling stream (embedding = -1) read through ``lens`` (default the logit lens), and the
    recording's coordinates, output rank and the embedding stream's top-1 (``embedding``: that top-1 from an earlier
    call on the same model and inputs, which no lens changes, so it is not computed again)."""
    rec = adt_probe.record(model, inputs, routing=None, lens=lens or adt_probe.LogitLens(), tokenizer=tokenizer,
                           options=adt_probe.RecordOptions(batch_size=batch_size))
    emb = embedding_top1(model, inputs, batch_size=batch_size) if embedding is None else embedding
    stream = settling_stream(rec["lens_top1"].values, emb)
    info = {"sequence": rec["sequence"].values, "segment": rec["segment"].values.astype(str),
            "token_id": rec["token_id"].values, "output_rank": rec["lens_rank"].values[:, -1],
            "n_layers": rec.sizes["layer"], "embedding_top1": emb}
    return stream, info


def crystallization_numbers(base_streams, rl_streams, infos, items, *, tokenizer=None, token_labels=content_groups,
                            n_boot: int = 1000, seed: int = 0) -> dict:
    """Finding 2's numbers: U(RL), dU (hierarchical with several runs), and curves per token group of the first run.

    ``infos``: per run, :func:`settling_of`'s dict of the RL model plus ``base_output_rank``; ``token_labels``: a
    function ``(tokenizer, token_ids (tokens,), segments (tokens,)) -> labels (tokens,)`` giving each token a group
    ("" for none): every label becomes a token group of its own (default: the organism's content tokens), and with
    two labels or more their union is one more group, ``"content (all groups)"``.
    """
    n_layers = infos[0]["n_layers"]
    first_upper = n_layers // 2
    keeps, sums, strata = [], [], []
    for b, r, info in zip(base_streams, rl_streams, infos):
        keep = info["segment"] == "think"
        keeps.append(keep)
        sums.append(upper_share_sums(b, r, info["sequence"], keep, first_upper, n_layers))
        strata.append(strata_of(items, np.unique(info["sequence"][keep])))
    ok = [s.shape[0] > 0 for s in sums]
    n_seq = min(s.shape[0] for s in sums)
    if all(ok):
        u = _interval(sums, upper_share, n_boot=n_boot, seed=seed, strata=strata)
        d = _interval(sums, upper_share_delta, n_boot=n_boot, seed=seed, strata=strata)
        ub = _interval([x[:, [2, 3, 0, 1]] for x in sums], upper_share, n_boot=n_boot, seed=seed, strata=strata)
    else:
        u = d = ub = {"value": float("nan"), "lo": float("nan"), "hi": float("nan")}
    b0, r0, info0 = base_streams[0], rl_streams[0], infos[0]
    both_right = (info0["output_rank"] == 0) & (info0["base_output_rank"] == 0)
    token_sets = {"think": keeps[0], "answer": info0["segment"] == "answer",
                  "think, both outputs right": keeps[0] & both_right}
    if tokenizer is not None and token_labels is not None:
        labels = np.asarray(token_labels(tokenizer, info0["token_id"], info0["segment"])).astype(str)
        groups = sorted(set(labels) - {""})
        for g in groups:
            token_sets[g] = labels == g
        if len(groups) > 1:  # issue 17's depth target reads all content tokens at once (attribute, count, answer)
            token_sets["content (all groups)"] = labels != ""
    curves = {g: settling_curves(b0, r0, info0["sequence"], keep, n_layers, n_boot=n_boot, seed=seed,
                                 strata=strata_of(items, np.unique(info0["sequence"][keep])))
              for g, keep in token_sets.items()}
    return {"upper_share_rl": u, "upper_share_base": ub, "delta_upper_share": d, "n_sequences": n_seq,
            "first_upper_block": first_upper,
            "n_layers": n_layers, "curves": curves}


#: Adam steps of each tuned lens (``adt_probe.tuned_lens.train_tuned_lens``'s default: held-out KL flattens by then
#: on the organism)
TUNED_LENS_STEPS = 300


def tuned_lens_numbers(base, rl, inputs, items, *, tokenizer=None, n_boot: int = 1000, seed: int = 0,
                       batch_size: int = 8, steps: int = TUNED_LENS_STEPS,
                       embeddings: dict[str, np.ndarray] | None = None) -> dict:
    """Finding 2 read through a tuned lens trained per model on ``inputs`` (Belrose et al. 2023).

    Each model gets its own lens, trained on 75% of the sequences; ``models[name]`` holds its held-out KL to the
    model's own output per block (nats, (layers,) lists), logit lens beside tuned lens. Then the settling streams of
    both models through their lenses give U(RL), U(base) and dU as in :func:`crystallization_numbers` (the embedding
    row stays a raw read: a tuned lens translates block outputs only). The verdict stays the logit lens's (its rule
    is fixed before results); this is its robustness check. ``embeddings``: ``{"base": ..., "rl": ...}``, the
    embedding stream's top-1 of each model on ``inputs`` when :func:`settling_of` already read it.
    """
    out = {"steps": steps, "models": {}}
    streams, infos = {}, {}
    for name, model in (("base", base), ("rl", rl)):
        lens, rep = train_tuned_lens(model, inputs, steps=steps, seed=seed, batch_size=batch_size)
        out["models"][name] = {"heldout_kl_logit": rep["heldout_kl_logit"].tolist(),
                               "heldout_kl_tuned": rep["heldout_kl_tuned"].tolist(),
                               "heldout_tokens": rep["heldout_tokens"], "train_tokens": rep["train_tokens"]}
        streams[name], infos[name] = settling_of(model, inputs, tokenizer=tokenizer, batch_size=batch_size,
                                                 lens=lens, embedding=(embeddings or {}).get(name))
    info = {**infos["rl"], "base_output_rank": infos["base"]["output_rank"]}
    cr = crystallization_numbers([streams["base"]], [streams["rl"]], [info], items, token_labels=None,
                                 n_boot=n_boot, seed=seed)
    think = cr["curves"]["think"]
    return {**out, **{k: cr[k] for k in ("upper_share_rl", "upper_share_base", "delta_upper_share", "n_sequences")},
            "never_settled": think.get("never_settled", {})}


#: added to ``--seed`` for the random initialisation: seed 0 is often the initialisation the base itself was trained
#: from (``rl.organism.build_model(seed=0)``), and the baseline must be an independent draw
RANDOM_INIT_SEED_OFFSET = 10_000


def random_init(model, seed: int):
    """The same architecture with freshly initialised weights (``model.__class__(model.config)`` after
    ``torch.manual_seed(seed)``), in the model's dtype and device, eval mode; the global RNG state is left as it was."""
    p = next(model.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = model.__class__(model.config)
    return fresh.to(device=p.device, dtype=p.dtype).eval()


def _renamed(curve: dict, name: str) -> dict:
    """A :func:`settling_curves` dict whose "base" model is ``name`` (the random-init baseline, say)."""
    out = {(name if k == "base" else k): v for k, v in curve.items()}
    if "never_settled" in out:
        out["never_settled"] = {(name if k == "base" else k): v for k, v in out["never_settled"].items()}
    return out


def random_init_numbers(model, rl_stream: np.ndarray, info: dict, inputs, items, *, tokenizer=None, seed: int = 0,
                        n_boot: int = 1000, batch_size: int = 8) -> dict:
    """The floor of finding 2: the architecture with random weights, recorded on the same tokens as the RL model.

    Parameters
    ----------
    model : the base (its architecture and config are used, not its weights).
    rl_stream : (tokens,) the RL model's settling streams on ``inputs``; ``info``: its :func:`settling_of` dict.

    Returns
    -------
    dict: ``upper_share`` (the random-init model's share of settled think tokens settling in the upper band),
    ``rl_minus_random_upper_share`` (paired), ``curves`` (think tokens: ``random_init`` vs ``rl`` and their
    difference), ``seed``. A "crystallizes in the upper layers" claim must clear this floor: a random network's
    lens also agrees with its own output from some block on.
    """
    init_seed = seed + RANDOM_INIT_SEED_OFFSET
    stream, _ = settling_of(random_init(model, init_seed), inputs, tokenizer=tokenizer, batch_size=batch_size)
    n_layers = info["n_layers"]
    keep = info["segment"] == "think"
    strata = strata_of(items, np.unique(info["sequence"][keep]))
    shares = upper_share_intervals(upper_share_sums(stream, rl_stream, info["sequence"], keep, n_layers // 2,
                                                    n_layers), n_boot=n_boot, seed=seed, strata=strata)
    curve = settling_curves(stream, rl_stream, info["sequence"], keep, n_layers, n_boot=n_boot, seed=seed,
                            strata=strata)
    return {"seed": init_seed, "upper_share": shares["base"], "rl_minus_random_upper_share": shares["delta"],
            "curves": {"think": _renamed(curve, "random_init")},
            "definition": "the base's architecture with random weights (model.__class__(config), seeded), "
                          "recorded on the RL model's completions"}



# ---------------------------------------------------------------------------------------------------------------------
# the command


def load(path, *, dtype: str = "float32", device_map: str | None = None):
    """Model and processor of a checkpoint folder (``analyses.models.load_pretrained``: any transformers model)."""
    if not Path(path, "config.json").exists():
        raise CompareInputError(f"{path}: no config.json; pass a checkpoint folder written by save_pretrained")
    return load_pretrained(path, dtype=dtype, device_map=device_map)


def inputs_for(model, processor, items, source: str, max_new_tokens: int,
               texts: Sequence[str] | None = None) -> tuple[list[str], dict]:
    """The texts and teacher-forced inputs: ``model``'s greedy completions (``texts`` when already generated), or
    the reference chains."""
    if source == "reference":
        texts = reference_texts(items)
    else:
        texts = list(texts) if texts is not None else completions(model, processor, items,
                                                                  max_new_tokens=max_new_tokens)
    return texts, teacher_forced_inputs(processor, items, texts)


def analyse(base, rls, inputs_list, items, *, tokenizer, n_nulls: int, seed: int, n_boot: int,
            batch_size: int = 8, with_controls: bool = True, token_labels=content_groups, sft: bool = False,
            tuned: bool = False) -> dict:
    """Both findings on given inputs (one per RL run); returns numbers, verdicts and the datasets to save.

    ``with_controls``: also the random-update controls (and with ``sft`` the SFT control), the random-init
    baseline of crystallization and, with ``tuned``, its tuned-lens reading, on the first run's inputs.
    """
    f1 = router_finding(base, rls, inputs_list, items, tokenizer=tokenizer, n_nulls=n_nulls, seed=seed,
                        n_boot=n_boot, batch_size=batch_size)
    base_streams, rl_streams, infos = [], [], []
    for rl, inputs in zip(rls, inputs_list):
        b, b_info = settling_of(base, inputs, tokenizer=tokenizer, batch_size=batch_size)
        r, r_info = settling_of(rl, inputs, tokenizer=tokenizer, batch_size=batch_size)
        base_streams.append(b)
        rl_streams.append(r)
        infos.append({**r_info, "base_output_rank": b_info["output_rank"],
                      "base_embedding_top1": b_info["embedding_top1"]})
    f2 = crystallization_numbers(base_streams, rl_streams, infos, items, tokenizer=tokenizer,
                                 token_labels=token_labels, n_boot=n_boot,
                                 seed=seed)
    if with_controls:
        f2["random_init"] = random_init_numbers(base, rl_streams[0], infos[0], inputs_list[0], items,
                                                tokenizer=tokenizer, seed=seed, n_boot=n_boot, batch_size=batch_size)
    if with_controls and tuned:
        f2["tuned_lens"] = tuned_lens_numbers(
            base, rls[0], inputs_list[0], items, tokenizer=tokenizer, n_boot=n_boot, seed=seed, batch_size=batch_size,
            embeddings={"base": infos[0]["base_embedding_top1"], "rl": infos[0]["embedding_top1"]})
    v2 = verdicts.crystallization(f2["upper_share_rl"], f2["delta_upper_share"], n_sequences=f2["n_sequences"])
    layers = layer_effects(f1["effects"][0], segment=f1["numbers"]["segment"], n_boot=n_boot, seed=seed)
    out = {"verdicts": {"upper_routers": f1["verdict"], "crystallization": v2},
           "routers": f1["numbers"], "crystallization": f2, "decomposition": _layer_table(layers),
           "null_per_layer": _null_per_layer(f1["effects"][0], f1["numbers"]["segment"]),
           "_datasets": {"router_effects_per_layer": layers}}
    if with_controls and (n_nulls > 0 or sft):
        out["controls"] = controls(base, rls[0], inputs_list[0], items, tokenizer=tokenizer, k=n_nulls, seed=seed,
                                   n_boot=n_boot, batch_size=batch_size, sft=sft)
    return out


def _layer_table(layers) -> dict:
    """Per layer and effect: relative change, share, routing changes, each {value, lo, hi} lists."""
    out = {"layer": [int(v) for v in layers["layer"].values], "n_tokens": int(layers["n_tokens"])}
    for name in ("rel_change", "share", "topk_change", "top1_flip", "js"):
        out[name] = {e: {k: [float(v) for v in layers[name + s].sel(effect=e).values]
                         for k, s in (("value", ""), ("lo", "_lo"), ("hi", "_hi"))}
                     for e in layers["effect"].values.tolist()}
    out["max_residual"] = float(layers.attrs["max_residual"])
    return out


def _null_per_layer(effects, segment: str) -> dict:
    """Per layer, the relative router-logit change of each uniform random router update (the calibration)."""
    keep = token_groups(effects, segment)
    if effects.sizes.get("null", 0) == 0:
        return {}
    num = effects["norm_null"].values[keep].sum(0)  # (layer, null)
    den = effects["norm_ref"].values[keep].sum(0)[:, None]
    rel = num / den
    return {"layer": [int(v) for v in effects["layer"].values], "min": rel.min(1).tolist(),
            "max": rel.max(1).tolist(), "k": int(rel.shape[1])}


def compare(base_path, rl_paths, items, out: Path, *, seed: int = 0, n_nulls: int = 5, n_boot: int = 1000,
            max_new_tokens: int = MAX_NEW_TOKENS, source: str = "rl", mirror: bool = True, batch_size: int = 8,
            data_path: str = "data", token_labels=content_groups, allow_unverified: bool = False,
            dtype: str = "float32", device_map: str | None = None, sft_control: str = "auto",
            tuned_lens: str = "auto", rl_completions: Sequence[Sequence[str] | None] | None = None,
            base_completions: Sequence[str] | None = None) -> dict:
    """Run every analysis of a base against one or several RL checkpoints; write ``findings.json``, figures and
    ``report.md`` to ``out``. Returns the findings.

    ``token_labels(tokenizer, token_ids, segments) -> labels``: the user's token groups for the settling curves
    (default :func:`content_groups`, the organism's content tokens; None: segments only). Model folders are
    verified against their manifest first (``analyses.checkpoints``; ``allow_unverified`` for your own models).
    ``sft_control`` and ``tuned_lens``: ``on``, ``off`` or ``auto`` (on for models of at most
    ``analyses.models.AUTO_MAX_PARAMETERS`` parameters: each trains something, cheap for the organism, not for a 30B
    model on a laptop). ``rl_completions`` (one list per RL run, or None for a run) and ``base_completions``: greedy
    completions already generated for ``items`` (``adt-probe reproduce`` passes its evaluation's), not generated again.
    """
    check_items(items, need_reference=source == "reference", path=data_path)
    if not rl_paths:
        raise CompareInputError("no --rl checkpoint given")
    # completions already generated: checked here, before any model loads
    given = [given_completions(t, items) for t in (rl_completions or [None] * len(rl_paths))]
    if len(given) != len(rl_paths):
        raise CompareInputError(f"{len(given)} lists of completions for {len(rl_paths)} RL checkpoints; pass one list "
                                "per checkpoint, in their order (None for one to generate)")
    base_completions = given_completions(base_completions, items)
    torch.manual_seed(seed)
    base_path = checkpoints.model_folder(base_path, allow_unverified=allow_unverified)
    rl_paths = [checkpoints.model_folder(p, allow_unverified=allow_unverified) for p in rl_paths]
    base, processor = load(base_path, dtype=dtype, device_map=device_map)
    rls, warnings = [], []
    for path in rl_paths:
        rl, rl_processor = load(path, dtype=dtype, device_map=device_map)
        warnings += check_pair(base, processor, rl, rl_processor, base_path, path)
        rls.append(rl)
    for w in warnings:
        log.warning(f"adt-probe compare: {w}")
    items = for_model(items, processor)  # a text model reads the clips' facts written out instead of their audio
    out.mkdir(parents=True, exist_ok=True)
    texts = [inputs_for(rl, processor, items, source, max_new_tokens, t) for rl, t in zip(rls, given)]
    _write_completions(out / "completions_rl.jsonl", items, [t for t, _ in texts], rl_paths)
    sft, tuned = wanted(sft_control, base, "sft control"), wanted(tuned_lens, base, "tuned lens")
    main_result = analyse(base, rls, [i for _, i in texts], items, tokenizer=processor.tokenizer, n_nulls=n_nulls,
                          seed=seed, n_boot=n_boot, batch_size=batch_size, token_labels=token_labels, sft=sft,
                          tuned=tuned)
    datasets = main_result.pop("_datasets")
    findings = {"stamp": verdicts.stamp(), "verdicts": main_result.pop("verdicts"), **main_result,
                "inputs": {"base": str(base_path), "rl": [str(p) for p in rl_paths], "data": data_path,
                           "n_items": len(items), "seed": seed, "nulls": n_nulls, "n_boot": n_boot,
                           "source": source, "max_new_tokens": max_new_tokens, "sft_control": sft,
                           "tuned_lens": tuned},
                "warnings": warnings}
    if mirror and source == "rl":
        b_texts, b_inputs = inputs_for(base, processor, items, "rl", max_new_tokens, base_completions)
        _write_completions(out / "completions_base.jsonl", items, [b_texts], [base_path])
        m = analyse(base, rls[:1], [b_inputs], items, tokenizer=processor.tokenizer, n_nulls=n_nulls, seed=seed,
                    n_boot=n_boot, batch_size=batch_size, with_controls=False, token_labels=token_labels)
        m.pop("_datasets")
        findings["mirror"] = {"on": "the base model's own completions (first RL run)", **m}
    for name, ds in datasets.items():
        adt_probe.save(ds, out / f"{name}.nc")
    findings["figures"] = figures(findings, out / "figures")
    (out / "findings.json").write_text(json.dumps(_jsonable(findings), indent=1) + "\n")
    write_compare_report(findings, out / "report.md")
    return findings


def _write_completions(path: Path, items, texts_per_run, paths) -> None:
    rows = [{"id": it.id, "model": str(p), "completion": t}
            for p, texts in zip(paths, texts_per_run) for it, t in zip(items, texts)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _jsonable(x):
    """NaN and infinities as null (JSON has neither); numpy scalars as numbers."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def figures(findings: dict, folder: Path) -> dict:
    """The compare figures (PNG 300 dpi + PDF); returns ``name -> [paths]``."""
    made = {"router_effect": plot.router_effect_by_layer(findings["decomposition"], findings["routers"]["bands"],
                                                         findings.get("null_per_layer")),
            "router_share": plot.router_share_by_layer(findings["decomposition"], findings["routers"]["bands"]),
            "settling": plot.settling_curves(findings["crystallization"]["curves"],
                                             findings["crystallization"]["first_upper_block"],
                                             random_init=findings["crystallization"].get("random_init", {})
                                             .get("curves", {}).get("think"))}
    if "controls" in findings:
        made["controls"] = plot.control_bars(findings["controls"])
    paths = {}
    for name, fig in made.items():
        paths[name] = [str(p) for p in plot.save(fig, folder / name)]
    return paths


def expand_runs(paths) -> list[str]:
    """``--rl`` values: a checkpoint folder, or a folder whose sub-folders are checkpoints (one per run)."""
    out = []
    for p in paths:
        p = Path(p)
        subs = sorted(q for q in p.iterdir() if (q / "config.json").exists()) if p.is_dir() else []
        out += [str(p)] if (p / "config.json").exists() or not subs else [str(q) for q in subs]
    return out


def main(argv=None) -> None:
    args = command_parser("compare", __doc__).parse_args(argv)
    try:
        items = load_items(args.data)
        result = compare(args.base, expand_runs(args.rl), items, Path(args.out), seed=args.seed, n_nulls=args.nulls,
                         n_boot=args.n_boot, max_new_tokens=args.max_new_tokens, source=args.source,
                         mirror=not args.no_mirror, batch_size=args.batch_size, data_path=args.data,
                         allow_unverified=args.allow_unverified, dtype=args.dtype, device_map=args.device_map,
                         sft_control=args.sft_control, tuned_lens=args.tuned_lens)
    except (CompareInputError, CheckpointError) as err:
        sys.exit(f"adt-probe compare: {err}")
    for name, v in result["verdicts"].items():
        print(f"{name}: {v['verdict']} ({v['why']})")
    print(f"findings: {Path(args.out) / 'findings.json'}; report: {Path(args.out) / 'report.md'}")


if __name__ == "__main__":
    main()
