"""The report of ``adt-probe reproduce``: ``report.md`` (figures inline, the results table, the two findings as
measured, commands and versions) and the same numbers in ``results.json``.

The verdicts are not made here: they come from the ``compare`` step (``analyses.compare``), by the rules of
``analyses.verdicts`` (written before any run; their text and hash are in the report). This module only lays out
numbers: the results table, the verdicts with their rules, and the descriptive drift, decomposition, trajectory and
transplant numbers beside them. ``write_compare_report`` is the report of ``adt-probe compare``: a template filled
from ``findings.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from string import Template

import numpy as np

# Figures are made without pyplot (adt_probe.plot.new_figure): nothing here sets a backend or leaves a figure open
from PIL import Image

from adt_probe.integrity import versions
from adt_probe.plot import DIRECTIONS

# Fallback captions, for figures whose files carry none (each figure's own caption is in its PNG's metadata, written
# by adt_probe.plot.save: what is shown, the interval, the noise floor)
JS_CAPTION = ("Jensen-Shannon divergence between the base and RL routing distributions per decoder layer; shaded: 95% "
              "bootstrap interval over sequences; dashed: the noise floor of each segment")
WEIGHT_CAPTION = ("Relative change of the router weights per decoder layer, next to the block's other weights; "
                  "whiskers: range over the experts' rows (weights are no sample: no interval, no noise floor)")
ROUTER_CAPTION = ("Relative router-logit change per decoder layer: router term at fixed input, input term and total; "
                  "shaded: 95% bootstrap interval over sequences; grey: the noise floor, uniform random router updates")
DECOMPOSITION_CAPTION = ("Router-logit change per decoder layer made by the router term, the input term and in total; "
                         "whiskers: 95% bootstrap interval over sequences")
SETTLING_CAPTION = ("Share of tokens settled by each stream (E: embedding), base solid, RL dashed; shaded: 95% "
                    "bootstrap interval over sequences; no noise floor (a per-model measure)")


def figure_caption(path: str | Path, fallback: str = "") -> str:
    """The caption ``adt_probe.plot.save`` wrote into the figure's PNG (``fallback`` when there is none)."""
    try:
        with Image.open(Path(path).with_suffix(".png")) as image:
            return image.info.get("Description") or fallback
    except OSError:
        return fallback


def _ci(v: dict | None, digits: int = 3) -> str:
    """``value [lo, hi]`` from an interval record; values below 0.01 in three significant digits (drift in bits is
    often that small); ``n/a`` for what is missing (e.g. a share of think tokens when no completion thinks)."""
    if not v or v.get("value") is None:
        return "n/a"
    nums = [v["value"], v.get("lo"), v.get("hi")]
    small = all(x is not None and x == x and abs(x) < 0.01 for x in nums)

    def num(x) -> str:
        return "n/a" if x is None or x != x else (f"{x:.3g}" if small else f"{x:.{digits}f}")
    return f"{num(nums[0])} [{num(nums[1])}, {num(nums[2])}]"


def _row_ci(row: dict, name: str) -> str:
    if name not in row:
        return "n/a"
    lo, hi = row[f"{name}_ci"]
    return f"{row[name]:.3f} [{lo:.3f}, {hi:.3f}]"


def drift_summary(findings: dict, weights: dict | None) -> dict:
    """Descriptive gating drift (JS, upper vs lower band, noise pair) from ``findings.json``; no verdict: JS grows
    with depth under any upstream change, so finding 1's verdict rests on the router term (``compare`` step)."""
    drift = findings["drift"]
    segment = "think" if "think" in drift else "all"
    d = drift[segment]
    out = {"segment": segment, "js_upper_minus_lower": d["js_band_contrast"]["difference"],
           "js_upper": d["js_band_contrast"]["upper"], "js_lower": d["js_band_contrast"]["lower"],
           "noise_upper_minus_lower": d["js_band_contrast_noise"]["difference"],
           "layers_above_noise": d["layers_above_noise"], "ranking_js": d["ranking_js"], "bands": findings["bands"],
           "n_tokens": d["n_tokens"]}
    if weights:
        def mean(idx, key):
            vals = [weights[key][i] for i in idx if weights[key][i] is not None]
            return sum(vals) / len(vals) if vals else None

        out["router_weight_rel_change"] = {band: mean(idx, "rel_change") for band, idx in findings["bands"].items()}
        out["other_weight_rel_change"] = {band: mean(idx, "rel_change_other")
                                          for band, idx in findings["bands"].items()}
    return out


def training_figure(log_path: Path, out: Path) -> tuple[list[Path], str]:
    """The rollouts per GRPO step in two panels: the mean reward (top) apart from the think-rate and accuracy (rates,
    bottom), stage boundaries dotted; returns the paths written (PNG 300 dpi, PDF) and the caption."""
    from adt_probe.plot import LINE_COLOURS, new_figure, save

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows]
    stages = list(dict.fromkeys(str(r["stage"]) for r in rows))
    caption = ("Rollouts during GRPO training, per step: the mean reward of the step's rollouts (top) and the share "
               "of rollouts that think first and that answer correctly (bottom); batch means of one step, no interval "
               "and no noise floor." + (f" Dotted: the start of each stage ({', '.join(stages[1:])})."
                                        if len(stages) > 1 else f" One stage ({stages[0]}).") if rows else
               "Rollouts during GRPO training: the log has no steps.")
    fig = new_figure((6, 4.4), caption, layout="constrained")
    reward_ax, rate_ax = fig.subplots(2, 1, sharex=True, height_ratios=(1, 1.2))
    reward_ax.plot(steps, [r["reward"] for r in rows], color=LINE_COLOURS[0], marker="o", markersize=3)
    reward_ax.set_ylabel("mean reward")
    for i, (key, label) in enumerate((("think_rate", "think-rate"), ("accuracy", "accuracy")), start=1):
        rate_ax.plot(steps, [r[key] for r in rows], color=LINE_COLOURS[i], marker="os^"[i], markersize=3,
                     label=label)
    rate_ax.set_ylim(-0.03, 1.03)
    rate_ax.set_ylabel("share of rollouts")
    rate_ax.set_xlabel("GRPO step")
    rate_ax.legend(frameon=False, fontsize=8, title="per-step batch means", title_fontsize=7)
    for ax in (reward_ax, rate_ax):
        ax.grid(alpha=0.3)
        for a, b in zip(rows, rows[1:]):
            if a["stage"] != b["stage"]:
                ax.axvline(a["step"] + 0.5, color="0.4", ls=":", lw=1, gid="stage_boundary")
                if ax is reward_ax:
                    ax.text(a["step"] + 0.7, 0.95, str(b["stage"]), fontsize=7, va="top",
                            transform=ax.get_xaxis_transform())
    return save(fig, out), caption


REPRODUCE_TEMPLATE = Template("""# adt-probe reproduce$quick

The Audio-DeepThinker pipeline on the model organism, then the analysis of what RL changed inside the MoE. Training:
$curriculum

## Before and after RL

Held-out set: $held_out. Think-first prompt,
greedy decoding; 95% Wilson intervals (proportions) and bootstrap intervals over items (means); pooled rows: a
hierarchical bootstrap over seeds, then items. Process score: the judge's score of the think text against the
reference chain when the answer is right, 0 otherwise (MMAR-Rubrics style). Direct-answer accuracy: the answer-only
prompt.

$results_table

${over_direct}Sampled at temperature 1, the think-rate is $sampled_base (base) and $sampled_seeds (RL seeds). Training:
$steps GRPO steps per seed; final checkpoints $finals.

$fig_training
## Finding 1: does RL mainly reshape the routers of the upper layers? **$v1**

$finding1

$drift_text

> Rule ($hash1): $rule1

$figs1
## Finding 2: do reasoning tokens crystallize progressively in the upper layers? **$v2**

$finding2

> Rule ($hash2): $rule2

$figs2
## Router transplant

Change when a band of layers routes with the other model's routers (95% paired intervals over items). Reference:
final model accuracy $rl_accuracy, base $base_accuracy.

| routers swapped | layers | change of accuracy | change of think-rate |
|---|---|---|---|
$transplant_rows

$fig_transplant
## How this was made

    $command

Steps and seconds: $seconds. Everything above is in `results.json`; the datasets are in `recordings*/` (zarr),
`findings*/`, `decompose/`, `weights/`, `trajectory/` and `transplant/` (netCDF), the runs in `runs/`.
Versions: $versions.
""")


def write_report(plan, steps: dict) -> dict:
    """Write ``report.md`` (:data:`REPRODUCE_TEMPLATE`) and ``results.json`` in ``plan.dir``; returns the results."""
    d = plan.dir
    cmp = json.loads(Path(steps["compare"]["findings"]).read_text())
    results = reproduce_results(plan, steps, cmp)
    (d / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    training_figure(d / "runs" / f"seed-{plan.seeds[0]}" / "log.jsonl", d / "figures" / "training")
    (d / "report.md").write_text(REPRODUCE_TEMPLATE.substitute(reproduce_fields(plan, steps, cmp, results)))
    return results


def reproduce_results(plan, steps: dict, cmp: dict) -> dict:
    """``results.json``: before/after (pooled over seeds, and per seed), both findings with their verdicts and
    numbers, the descriptive analyses, seconds per step and versions."""
    ev, train = steps["evaluate"], steps["train"]
    f1 = {**cmp["verdicts"]["upper_routers"], "drift": drift_summary(steps["findings"]["findings"], steps["weights"]),
          "drift_mirror": drift_summary(steps["findings"]["findings_mirror"], None),
          "decomposition": steps["decompose"]}
    seconds = {name: json.loads((plan.dir / "steps" / f"{name}.json").read_text())["seconds"]
               for name in steps if (plan.dir / "steps" / f"{name}.json").exists()}
    return {
        "base": ev["base"], "final": ev["final"], "change": ev["change"], "seeds": ev["seeds"],
        "over_base_direct": ev.get("over_base_direct"),  # absent in a demo folder evaluated before it existed
        "held_out": {"n_items": ev["base"]["n_items"], "seed": plan.eval_seed, "n_per_cell": plan.n_per_cell,
                     "items": ev.get("items"), "extra_seed": plan.extra_seed, "extra_per_cell": plan.extra_per_cell,
                     "setting": "think-first prompt, greedy decoding; direct_accuracy: answer prompt"},
        "finding_upper_layer_routers": f1, "finding_crystallization": cmp["verdicts"]["crystallization"],
        "rules": cmp["stamp"], "router_weight_drift": steps["weights"],
        "trajectory": steps["trajectory"], "transplant": steps["transplant"],
        "final_checkpoint": train["final"], "training_steps": train["steps"],
        "seconds": seconds, "quick": plan.quick, "overrides": plan.overrides, "versions": versions(),
    }


def reproduce_fields(plan, steps: dict, cmp: dict, results: dict) -> dict[str, str]:
    """Every ``$name`` of :data:`REPRODUCE_TEMPLATE`, as text."""
    d, ev, train = plan.dir, steps["evaluate"], steps["train"]
    f1, f2 = results["finding_upper_layer_routers"], results["finding_crystallization"]
    figs = steps["findings"]["findings"]["figures"]

    def fig(path: str, caption: str) -> str:
        rel = os.path.relpath(Path(path).with_suffix(".png"), d)
        return (f"![{caption}]({rel})\n\n*{figure_caption(path, caption)}* "
                f"([PDF]({Path(rel).with_suffix('.pdf')}))\n")

    tr = steps["transplant"]
    return {
        "quick": " (quick)" if plan.quick else "", "curriculum": _curriculum(train.get("config", {})),
        "held_out": _held_out_text(plan, ev),
        "results_table": _results_table(ev), "over_direct": _over_direct_text(ev.get("over_base_direct")),
        "sampled_base": f"{ev['base'].get('think_rate_sampled_t1', float('nan')):.3f}",
        "sampled_seeds": ", ".join(f"{r.get('think_rate_sampled_t1', float('nan')):.3f}" for r in ev["seeds"].values()),
        "steps": str(train["steps"]),
        "finals": ", ".join(f"`{os.path.relpath(path, d)}`" for path in train["final"].values()),
        "fig_training": fig(str(d / "figures" / "training"), "Reward, think-rate and accuracy of rollouts per step"),
        "v1": f1["verdict"], "finding1": _finding1_text(f1, cmp), "drift_text": _drift_text(f1),
        "hash1": f1["rules_hash"][:12], "rule1": f1["rule"],
        "figs1": "\n".join([
            fig(cmp["figures"]["router_effect"][0], ROUTER_CAPTION), fig(figs["drift_js"][0], JS_CAPTION),
            fig(str(d / "decompose" / "drift_decomposition"), DECOMPOSITION_CAPTION),
            fig(figs["drift_top1"][0], "Top-1 expert agreement between base and RL per layer"),
            fig(figs["expert_load"][0], "Expert load, base vs RL, and the shift"),
            fig(str(d / "weights" / "router_weight_drift"), WEIGHT_CAPTION),
            fig(str(d / "trajectory" / "drift_trajectory"), "Gating drift from the base along the checkpoints")]),
        "v2": f2["verdict"], "finding2": _finding2_text(f2, cmp["crystallization"]),
        "hash2": f2["rules_hash"][:12], "rule2": f2["rule"],
        "figs2": fig(cmp["figures"]["settling"][0], SETTLING_CAPTION) + "\n" + _crystallization_figs(figs, fig),
        "rl_accuracy": f"{tr['reference'].get('rl_accuracy', float('nan')):.3f}",
        "base_accuracy": f"{tr['reference'].get('base_accuracy', float('nan')):.3f}",
        "transplant_rows": "\n".join(
            f"| {DIRECTIONS.get(direction, direction)} | {band} | {_ci(v['accuracy'])} | {_ci(v['think_rate'])} |"
            for direction, bands in tr.items() if direction != "reference" for band, v in bands.items()),
        "fig_transplant": fig(str(d / "transplant" / "transplant_accuracy"),
                              "Router transplant: change of accuracy per layer band"),
        "command": f"adt-probe reproduce --out {d}" + (" --quick" if plan.quick else "")
                   + "".join(f" --set {o}" for o in plan.overrides),
        "seconds": ", ".join(f"{k} {v:.0f} s" for k, v in results["seconds"].items()),
        "versions": ", ".join(f"{k} {v}" for k, v in results["versions"].items()),
    }


def _curriculum(config: dict) -> str:
    """The stages of the run's config in words: name, steps, data and rewards (weights)."""
    stages = config.get("stages") or []
    if not stages:
        return "GRPO (the run's config)."
    parts = [f"{s['name']} ({s['steps']} steps on {(s.get('data') or {}).get('source', 'synthetic')} items; rewards "
             + ", ".join(f"{name} {w:g}" for name, w in s["rewards"].items()) + ")" for s in stages]
    return "; then ".join(parts) + ". Mined stages read boundary cases from the policy's own rollouts."


def _held_out_text(plan, ev: dict) -> str:
    """The held-out items in words: how many, from which seeds, and which numbers the extra items carry."""
    main = f"{plan.n_per_cell} per family x difficulty, seeds from {plan.eval_seed}, one per band"
    extra = (ev.get("items") or {}).get("extra")
    if not extra:
        return f"{ev['base']['n_items']} synthetic items ({main})"
    first = ev["items"]["held_out"]
    return (f"{ev['base']['n_items']} synthetic items: {first} ({main}), on which everything below is measured, and "
            f"{extra} more ({plan.extra_per_cell} per cell, seeds from {plan.extra_seed}) for this table's greedy "
            f"columns (no judge, no sampling: the process score and the sampled think-rate are of the {first})")


def _results_table(ev: dict) -> str:
    lines = ["| model | accuracy | think-rate | similarity to reference | inference-step coverage | process score | "
             "direct-answer accuracy |", "|---|---|---|---|---|---|---|"]
    rows = [("base", ev["base"]), *((f"RL seed {s}", r) for s, r in ev["seeds"].items()),
            (f"RL, {len(ev['seeds'])} seeds pooled", ev["final"]), ("change (RL - base)", ev["change"])]
    for name, r in rows:
        lines.append(f"| {name} | " + " | ".join(_row_ci(r, key) for key in (
            "accuracy", "think_rate", "reference_similarity", "inference_coverage", "process_score",
            "direct_accuracy")) + " |")
    return "\n".join(lines)


def _over_direct_text(gain: dict | None) -> str:
    """The sentence on RL's think-first accuracy against the base's direct answer ('' for a folder without it)."""
    if not gain:
        return ""
    return ("Against the base's direct answer (the answer prompt, no think block), the RL models' think-first accuracy "
            f"changes by {_row_ci(gain, 'accuracy')} (paired, hierarchical over seeds, then items): the gain over the "
            "best the base does without reasoning.\n\n")


def _sentence(text: str) -> str:
    """``text`` with its first letter capitalised (verdict reasons are written to follow a colon)."""
    return text[:1].upper() + text[1:]


def _finding1_text(f1: dict, cmp: dict) -> str:
    r1 = cmp["routers"]
    band = r1["band"]
    mirror = cmp.get("mirror", {}).get("verdicts", {}).get("upper_routers", {}).get("verdict", "n/a")
    return (f"{_sentence(f1['why'])}. Router term at fixed input (relative router-logit change, {r1['segment']} "
            f"tokens): lower band {_ci(band['rel_router']['lower'], 4)}, upper {_ci(band['rel_router']['upper'], 4)}; "
            f"upper/lower ratio **{_ci(r1['ratio'], 3)}** against {len(r1['null_ratios'])} uniform random router "
            f"updates ({', '.join(f'{x:.3f}' for x in r1['null_ratios'] if x is not None)}). Input term: lower "
            f"{_ci(band['rel_input']['lower'], 4)}, upper {_ci(band['rel_input']['upper'], 4)}; router share of the "
            f"change: lower {_ci(band['share_router']['lower'], 3)}, upper {_ci(band['share_router']['upper'], 3)}. "
            f"Mirror (base's completions): {mirror}. Details, controls and the rule: "
            f"[compare/report.md](compare/report.md).")


def _drift_text(f1: dict) -> str:
    drift, mirror = f1["drift"], f1["drift_mirror"]
    return (f"Descriptive, not the verdict: Jensen-Shannon drift of the router distributions ({drift['segment']} "
            f"tokens, {drift['n_tokens']}): upper {_ci(drift['js_upper'], 4)}, lower {_ci(drift['js_lower'], 4)}, "
            f"difference {_ci(drift['js_upper_minus_lower'], 4)} (noise pair "
            f"{_ci(drift['noise_upper_minus_lower'], 4)}; mirror {_ci(mirror['js_upper_minus_lower'], 4)}). JS grows "
            f"with depth under any upstream change, so it cannot tell a reshaped router from a changed input. Router "
            f"weights moved {_pct(drift.get('router_weight_rel_change'))} (other weights of the same blocks: "
            f"{_pct(drift.get('other_weight_rel_change'))}).")


def _finding2_text(f2: dict, c2: dict) -> str:
    return (f"{_sentence(f2['why'])}. Share of settled think tokens settling in the upper band (blocks "
            f"{c2['first_upper_block']}+; the embedding stream counts as a stream, tokens settling only at the "
            f"output apart): RL {_ci(c2['upper_share_rl'])}, base on the same tokens "
            f"{_ci(c2.get('upper_share_base'))}, difference {_ci(c2['delta_upper_share'])}. Curves per token "
            f"group, the random-init floor and the rule: [compare/report.md](compare/report.md).")


def _crystallization_figs(figs: dict, fig) -> str:
    parts = []
    for key, caption in (("crystallization_logprob", "Logit-lens log-prob of the next token per layer"),
                         ("crystallization_kl", "KL of the lens to the final distribution per layer"),
                         ("crystallization_histogram", "Where tokens crystallize")):
        if key in figs:
            parts.append(fig(figs[key][0], caption + ", base vs RL"))
    return "\n".join(parts)


def _pct(by_band: dict | None) -> str:
    if not by_band:
        return "n/a"
    return ", ".join(f"{band} {100 * v:.2f}%" for band, v in by_band.items() if v is not None)



# ---------------------------------------------------------------------------------------------------------------------
# The report of ``adt-probe compare``: a template filled from ``findings.json``, the verdict rules beside it.

COMPARE_TEMPLATE = Template("""# adt-probe compare

Base `$base` against RL $rl, on $n_items items of `$data` ($source_text). Rules: `analyses.verdicts`,
sha256 `$rules_hash` (the same hash is in `findings.json`; rules are fixed before results are seen).

$warnings
## Finding 1: does RL mainly reshape the routers of the upper layers? **$v1**

$why1

| | lower band $lower | upper band $upper |
|---|---|---|
$band_rows

Upper/lower ratio of the router term at fixed input: **$ratio** ($ratio_method; $ratio_nan NaN replicates).
Uniform random router updates of the same relative size on the same tokens give ratios $nulls.

> Rule: $rule1

$fig_router_effect
$fig_router_share
### Controls without retraining

Random-direction updates with the RL update's own norm per tensor ($control_k draws each). Router term at fixed
input (relative), lower / upper band:

| update | router term | input term | RL's router term over the control's |
|---|---|---|---|
$control_rows

$sft_text
$fig_controls
## Finding 2: do reasoning tokens crystallize progressively in the upper layers? **$v2**

$why2

Share of settled think tokens that settle in the upper band (blocks $first_upper and later): RL $u_rl, base on the
same tokens $u_base, difference $du. Think tokens whose prediction appears only at the output: base $never_base,
RL $never_rl.

$random_init

$tuned_lens
| tokens | n | settled by E: base / RL | by block 0: base / RL | by the last lower block | output only |
|---|---|---|---|---|---|
$group_rows

> Rule: $rule2

$fig_settling
$mirror
## Numbers and rules

Every number above, with its interval method and NaN-replicate count, is in `findings.json` (`verdicts`, `routers`,
`decomposition`, `controls`, `crystallization`$mirror_key). Figures: PNG (300 dpi) and PDF in `figures/`.
""")


def _figure(findings: dict, name: str, caption: str, base: Path) -> str:
    paths = findings.get("figures", {}).get(name)
    if not paths:
        return ""
    png = os.path.relpath(paths[0], base)
    return f"![{caption}]({png})\n\n*{figure_caption(paths[0], caption)}* ([PDF]({Path(png).with_suffix('.pdf')}))\n"


def _band_rows(r: dict) -> str:
    labels = {"rel_router": "router term, relative (fixed input)", "rel_input": "input term, relative",
              "share_router": "router share of the change", "topk_change_router": "top-k change rate at fixed input",
              "top1_flip_router": "top-1 flip rate at fixed input", "js_router": "JS at fixed input (bits)",
              "topk_change_total": "top-k change rate, total", "js_total": "JS, total (bits)"}
    return "\n".join(f"| {label} | {_ci(r['band'][q]['lower'], 4)} | {_ci(r['band'][q]['upper'], 4)} |"
                     for q, label in labels.items() if q in r["band"])


def _control_rows(c: dict | None) -> str:
    if not c:
        return "| (not run) | | | |"

    def row(label: str, v: dict, ratio: dict | None) -> str:
        over = f"{_maybe(ratio['lower'])} / {_maybe(ratio['upper'])}" if ratio else "1"
        return (f"| {label} | {v['rel_router']['lower']:.4g} / {v['rel_router']['upper']:.4g} | "
                f"{v['rel_input']['lower']:.4g} / {v['rel_input']['upper']:.4g} | {over} |")

    rows = [row("RL", c["rl"], None)]
    names = {"routers": "random: routers only", "others": "random: all but routers", "all": "random: everything"}
    rows += [row(label, c[part]["mean"], c[part]["rl_over_control_rel_router"])
             for part, label in names.items() if part in c]
    if "sft" in c:
        rows.append(row(f"SFT on RL's think text ({c['sft']['steps']} steps, RL's norm)", c["sft"],
                        c["sft"]["rl_over_control_rel_router"]))
    return "\n".join(rows)


def _sft_text(c: dict | None) -> str:
    """The SFT control's routing numbers and how well its norm was matched (empty when it was not run)."""
    s = (c or {}).get("sft")
    if not s:
        return ""
    return (f"SFT control: top-k change rate at fixed input {_maybe(s['topk_change_router']['lower'])} / "
            f"{_maybe(s['topk_change_router']['upper'])} (RL {_maybe(c['rl']['topk_change_router']['lower'])} / "
            f"{_maybe(c['rl']['topk_change_router']['upper'])}), upper/lower ratio of the router term "
            f"{_maybe(s['ratio_rel_router'])} (RL {_maybe(c['rl']['ratio_rel_router'])}); update norm per tensor "
            f"matched to RL's within {s['max_rel_error']:.1e} (relative); {len(s['unmatched'])} tensors the "
            f"fine-tuning left unchanged ({100 * s['unmatched_share']:.2f}% of RL's squared update norm).\n")


def _maybe(x) -> str:
    return "n/a" if x is None or x != x else f"{x:.3g}"


def _group_rows(cr: dict) -> str:
    rows = []
    last_lower = cr["first_upper_block"] - 1
    for g, c in cr["curves"].items():
        if "rl" not in c:
            rows.append(f"| {g} | 0 | | | | |")
            continue
        cells = [f"{c['base']['value'][i]:.3f} / {c['rl']['value'][i]:.3f}"
                 for i in (c["stream"].index(s) for s in (-1, 0, last_lower))]
        rows.append(f"| {g} | {c['n_tokens']} | {' | '.join(cells)} | "
                    f"{c['never_settled']['base']['value']:.3f} / {c['never_settled']['rl']['value']:.3f} |")
    return "\n".join(rows)


def _random_init_text(cr: dict) -> str:
    """The random-init floor of finding 2 beside base and RL (empty when it was not computed)."""
    ri = cr.get("random_init")
    if not ri:
        return ""
    think = ri["curves"]["think"]
    never = think.get("never_settled", {}).get("random_init")
    return (f"Floor: the same architecture with random weights (seed {ri['seed']}) on the same tokens settles "
            f"{_ci(ri['upper_share'])} of its settled think tokens in the upper band (RL minus random-init "
            f"{_ci(ri['rl_minus_random_upper_share'])}); settled by the embedding stream "
            f"{_maybe(think['random_init']['value'][0]) if 'random_init' in think else 'n/a'}, only at the output "
            f"{_ci(never)}. An upper-band share at this floor says nothing about training.")


def _tuned_lens_text(cr: dict) -> str:
    """Finding 2 read through a tuned lens per model, with each lens's held-out KL (empty when not run)."""
    t = cr.get("tuned_lens")
    if not t:
        return ""
    first_upper = cr["first_upper_block"]

    def bands(kl: list) -> str:
        return f"{np.mean(kl[:first_upper]):.3f} / {np.mean(kl[first_upper:]):.3f}"

    rows = "\n".join(f"| {name} | {m['heldout_tokens']} | {bands(m['heldout_kl_logit'])} | "
                     f"{bands(m['heldout_kl_tuned'])} |" for name, m in t["models"].items())
    never = t.get("never_settled", {})
    return (f"Read through a tuned lens trained per model ({t['steps']} steps on 75% of the sequences): upper-band "
            f"share RL {_ci(t['upper_share_rl'])}, base {_ci(t['upper_share_base'])}, difference "
            f"{_ci(t['delta_upper_share'])}; only at the output base {_ci(never.get('base'))}, RL "
            f"{_ci(never.get('rl'))}. Held-out KL to the model's own output (nats, mean over the lower / upper "
            f"band's blocks):\n\n| model | held-out tokens | logit lens | tuned lens |\n|---|---|---|---|\n{rows}\n")


def compare_report_text(findings: dict, base: Path) -> str:
    """The report of one ``findings.json`` (``base``: the folder figure paths are made relative to)."""
    inp, r, cr, v = findings["inputs"], findings["routers"], findings["crystallization"], findings["verdicts"]
    think = cr["curves"].get("think", {})
    never = think.get("never_settled", {})
    mirror = findings.get("mirror")
    mirror_text = ""
    if mirror:
        mirror_text = (f"## Mirror: on the base model's own completions\n\nFinding 1: **"
                       f"{mirror['verdicts']['upper_routers']['verdict']}** (ratio {_ci(mirror['routers']['ratio'])}"
                       f"); finding 2: **{mirror['verdicts']['crystallization']['verdict']}** "
                       f"({mirror['verdicts']['crystallization']['why']}).\n")
    return COMPARE_TEMPLATE.substitute(
        base=inp["base"], rl=", ".join(f"`{p}`" for p in inp["rl"]), n_items=inp["n_items"], data=inp["data"],
        source_text=("each RL model's own greedy completions, teacher-forced through both models"
                     if inp["source"] == "rl" else "the items' reference chains, teacher-forced"),
        rules_hash=findings["stamp"]["rules_hash"],
        warnings="".join(f"**Warning:** {w}\n\n" for w in findings.get("warnings", [])),
        v1=v["upper_routers"]["verdict"], why1=_sentence(v["upper_routers"]["why"]), rule1=v["upper_routers"]["rule"],
        lower=r["bands"]["lower"], upper=r["bands"]["upper"], band_rows=_band_rows(r), ratio=_ci(r["ratio"]),
        ratio_method=r["ratio"].get("method", ""), ratio_nan=r["ratio"].get("n_nan", 0),
        nulls=", ".join(_maybe(x) for x in r["null_ratios"]) or "none (--nulls 0)",
        fig_router_effect=_figure(findings, "router_effect", "Relative router-logit change per layer: router term "
                                  "at fixed input, input term and total, 95% CI; grey: uniform random router "
                                  "updates; dotted: band boundary", base),
        fig_router_share=_figure(findings, "router_share", "Share of the router-logit change made by the router "
                                 "and the input term per layer (exact split; they add up to 1), 95% CI", base),
        control_k=(findings.get("controls") or {}).get("k", 0), control_rows=_control_rows(findings.get("controls")),
        sft_text=_sft_text(findings.get("controls")),
        fig_controls=_figure(findings, "controls", "RL next to random-direction updates of RL's own per-tensor "
                             "norm: router and input terms per band (whiskers: range over draws)", base),
        v2=v["crystallization"]["verdict"], why2=_sentence(v["crystallization"]["why"]),
        rule2=v["crystallization"]["rule"],
        first_upper=cr["first_upper_block"], u_rl=_ci(cr["upper_share_rl"]),
        u_base=_ci(cr.get("upper_share_base")),
        du=_ci(cr["delta_upper_share"]), never_base=_ci(never.get("base")), never_rl=_ci(never.get("rl")),
        group_rows=_group_rows(cr), random_init=_random_init_text(cr), tuned_lens=_tuned_lens_text(cr),
        fig_settling=_figure(findings, "settling", "Share of tokens settled by each stream (E: embedding), base "
                             "solid, RL dashed, 95% CI; legend: share settling only at the output", base),
        mirror=mirror_text, mirror_key=", `mirror`" if mirror else "")


def write_compare_report(findings: dict, path: Path) -> Path:
    """Write ``report.md`` for ``adt-probe compare``."""
    path = Path(path)
    path.write_text(compare_report_text(findings, path.parent))
    return path
