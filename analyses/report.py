"""The report of ``adt-probe reproduce``: ``report.md`` (figures inline, the results table, the two findings as
measured, commands and versions) and the same numbers in ``results.json``.

The verdicts are computed from the intervals with rules fixed here, before any run:

* finding 1 ("RL mostly reshapes the routers of the upper layers") *reproduces* when the upper-minus-lower band
  difference of the Jensen-Shannon drift has a 95% interval above 0 and above the same difference for the noise
  pair, and some upper layer's drift clears the noise floor; it is *reversed* when the interval lies below 0;
  otherwise *not shown*;
* is it the routers? The same upper-minus-lower contrast for the *router effect* (the base and the RL router reading
  the same RL stream, ``adt_probe.decompose``) and for the *input effect* (the base router reading the base and the
  RL stream): "mostly the routers" when the router effect's difference lies above the input effect's (intervals
  apart), "mostly their inputs" in the reverse case;
* finding 2 ("reasoning tokens crystallize progressively in the upper layers") *reproduces* when the RL model's
  think tokens crystallize, on average, in the upper half of the layers (interval above the midpoint) and later
  than its answer tokens (intervals apart); otherwise *not shown*, with the numbers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# No backend set here (a notebook importing analyses keeps its inline one); headless, matplotlib picks Agg itself
import matplotlib.pyplot as plt

JS_CAPTION = "Gating drift (Jensen-Shannon) per layer, 95% bootstrap intervals over sequences; grey: noise floor"
WEIGHT_CAPTION = "Router weight drift per layer, next to the other weights of the block"


def _ci(v: dict | None, digits: int = 3) -> str:
    """``value [lo, hi]``; values below 0.01 in three significant digits (drift in bits is often that small)."""
    if not v:
        return "n/a"
    if max(abs(v["value"]), abs(v["lo"]), abs(v["hi"])) < 0.01:
        return f"{v['value']:.3g} [{v['lo']:.3g}, {v['hi']:.3g}]"
    return f"{v['value']:.{digits}f} [{v['lo']:.{digits}f}, {v['hi']:.{digits}f}]"


def _row_ci(row: dict, name: str) -> str:
    if name not in row:
        return "n/a"
    lo, hi = row[f"{name}_ci"]
    return f"{row[name]:.3f} [{lo:.3f}, {hi:.3f}]"


def finding_routers(findings: dict, weights: dict | None) -> dict:
    """Verdict and numbers of finding 1 from ``findings.json`` (think tokens when there are any, else all)."""
    drift = findings["drift"]
    segment = "think" if "think" in drift else "all"
    d = drift[segment]
    diff, floor = d["js_band_contrast"]["difference"], d["js_band_contrast_noise"]["difference"]
    upper = findings["bands"]["upper"]
    upper_above = [i for i in d["layers_above_noise"] if i in upper]
    if diff["lo"] > 0 and diff["lo"] > floor["hi"] and upper_above:
        verdict = "reproduces"
    elif diff["hi"] < 0:
        verdict = "reversed"
    else:
        verdict = "not shown"
    out = {"verdict": verdict, "segment": segment, "js_upper_minus_lower": diff,
           "js_upper": d["js_band_contrast"]["upper"], "js_lower": d["js_band_contrast"]["lower"],
           "noise_upper_minus_lower": floor, "layers_above_noise": d["layers_above_noise"],
           "ranking_js": d["ranking_js"], "bands": findings["bands"], "n_tokens": d["n_tokens"]}
    if weights:
        def mean(idx, key):
            vals = [weights[key][i] for i in idx if weights[key][i] is not None]
            return sum(vals) / len(vals) if vals else None

        out["router_weight_rel_change"] = {band: mean(idx, "rel_change") for band, idx in findings["bands"].items()}
        out["other_weight_rel_change"] = {band: mean(idx, "rel_change_other")
                                          for band, idx in findings["bands"].items()}
    return out


def router_or_input(decompose: dict) -> dict:
    """Which part of the upper-band excess drift the routers themselves made, and which their inputs made."""
    router = decompose["js_band_contrast_router"]["difference"]
    inputs = decompose["js_band_contrast_input"]["difference"]
    if router["lo"] > inputs["hi"]:
        verdict = "mostly the routers"
    elif inputs["lo"] > router["hi"]:
        verdict = "mostly their inputs"
    else:
        verdict = "both, not separable here"
    return {"verdict": verdict, "router_upper_minus_lower": router, "input_upper_minus_lower": inputs,
            "router_upper": decompose["js_band_contrast_router"]["upper"],
            "router_lower": decompose["js_band_contrast_router"]["lower"],
            "input_upper": decompose["js_band_contrast_input"]["upper"],
            "input_lower": decompose["js_band_contrast_input"]["lower"], "segment": decompose["segment"]}


def finding_crystallization(findings: dict, n_layers: int) -> dict:
    """Verdict and numbers of finding 2 from ``findings.json``."""
    c = findings["crystallization"]
    if "think" not in c:
        return {"verdict": "not measurable", "why": "the RL model wrote no think tokens on the held-out set"}
    think, answer = c["think"], c.get("answer")
    midpoint = (n_layers - 1) / 2
    later = answer is not None and think["rl_mean_layer"]["lo"] > answer["rl_mean_layer"]["hi"]
    upper = think["rl_mean_layer"]["lo"] > midpoint
    return {"verdict": "reproduces" if (upper and later) else "not shown", "midpoint_layer": midpoint,
            "think_in_upper_half": upper, "think_later_than_answer": later, "think": think, "answer": answer}


def training_figure(log_path: Path, out: Path) -> list[Path]:
    """Reward, think-rate and accuracy of the rollouts per GRPO step (stage boundaries marked)."""
    from adt_probe.plot import OKABE_ITO, save

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for i, (key, label) in enumerate((("reward", "reward"), ("think_rate", "think-rate"),
                                      ("accuracy", "accuracy"))):
        ax.plot(steps, [r[key] for r in rows], color=OKABE_ITO[i], marker="os^"[i], markersize=3, label=label)
    for a, b in zip(rows, rows[1:]):
        if a["stage"] != b["stage"]:
            ax.axvline(a["step"] + 0.5, color="0.4", ls=":", lw=1)
            ax.text(a["step"] + 0.7, 0.02, b["stage"], fontsize=7, transform=ax.get_xaxis_transform())
    ax.set_xlabel("GRPO step")
    ax.set_title("Rollouts during training (per-step batch means)")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths = save(fig, out)
    plt.close(fig)
    return paths


def write_report(plan, steps: dict) -> dict:
    """Write ``report.md`` and ``results.json`` in ``plan.dir``; returns the results dict."""
    d = plan.dir
    ev, train = steps["evaluate"], steps["train"]
    n_layers = len(steps["weights"]["rel_change"])
    f1 = finding_routers(steps["findings"]["findings"], steps["weights"])
    f2 = finding_crystallization(steps["findings"]["findings"], n_layers)
    f1_mirror = finding_routers(steps["findings"]["findings_mirror"], None)
    f1["who"] = router_or_input(steps["decompose"])
    seconds = {name: json.loads((d / "steps" / f"{name}.json").read_text())["seconds"]
               for name in steps if (d / "steps" / f"{name}.json").exists()}
    training_figure(d / "runs" / f"seed-{plan.seeds[0]}" / "log.jsonl", d / "figures" / "training")
    results = {
        "base": ev["base"], "final": ev["final"], "change": ev["change"], "seeds": ev["seeds"],
        "held_out": {"n_items": ev["base"]["n_items"], "seed": plan.eval_seed, "n_per_cell": plan.n_per_cell,
                     "setting": "think-first prompt, greedy decoding; direct_accuracy: answer prompt"},
        "finding_upper_layer_routers": f1, "finding_upper_layer_routers_mirror": f1_mirror,
        "finding_crystallization": f2, "router_weight_drift": steps["weights"],
        "trajectory": steps["trajectory"], "transplant": steps["transplant"],
        "final_checkpoint": train["final"], "training_steps": train["steps"],
        "seconds": seconds, "quick": plan.quick, "overrides": plan.overrides, "versions": versions(),
    }
    (d / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")

    def fig(path: str, caption: str) -> str:
        rel = os.path.relpath(Path(path).with_suffix(".png"), d)
        return f"![{caption}]({rel})\n\n*{caption}* ([PDF]({Path(rel).with_suffix('.pdf')}))\n"

    figs = steps["findings"]["findings"]["figures"]
    cmd = f"adt-probe reproduce --out {d}" + (" --quick" if plan.quick else "") + "".join(
        f" --set {o}" for o in plan.overrides)
    table = ["| model | accuracy | think-rate | similarity to reference | process score | direct-answer accuracy |",
             "|---|---|---|---|---|---|"]
    rows = [("base", ev["base"]), *((f"RL seed {s}", r) for s, r in ev["seeds"].items()),
            (f"RL, {len(ev['seeds'])} seeds pooled", ev["final"]), ("change (RL - base)", ev["change"])]
    for name, r in rows:
        table.append(f"| {name} | {_row_ci(r, 'accuracy')} | {_row_ci(r, 'think_rate')} | "
                     f"{_row_ci(r, 'reference_similarity')} | {_row_ci(r, 'process_score')} | "
                     f"{_row_ci(r, 'direct_accuracy')} |")
    f1_text = (f"Jensen-Shannon drift of the router distributions on {f1['segment']} tokens "
               f"({f1['n_tokens']} tokens): upper layers {_ci(f1['js_upper'], 4)}, lower layers "
               f"{_ci(f1['js_lower'], 4)}, difference **{_ci(f1['js_upper_minus_lower'], 4)}** (noise pair: "
               f"{_ci(f1['noise_upper_minus_lower'], 4)}). Layers whose drift clears the noise floor: "
               f"{f1['layers_above_noise'] or 'none'}; layers by drift: {f1['ranking_js']}. Router weights moved "
               f"{_pct(f1['router_weight_rel_change'])} (other weights of the same blocks: "
               f"{_pct(f1['other_weight_rel_change'])}). Mirror check on the base's own completions: "
               f"difference {_ci(f1_mirror['js_upper_minus_lower'], 4)}, verdict {f1_mirror['verdict']}.")
    who = f1["who"]
    who_text = (f"Drift per layer mixes two causes: the router weights changed, and so did the stream they read (every "
                f"earlier block changed too, and such changes accumulate with depth). Holding the input fixed (the "
                f"base and the RL router on the same RL stream; {who['segment']} tokens): router effect upper "
                f"{_ci(who['router_upper'], 5)}, lower {_ci(who['router_lower'], 5)}, difference "
                f"**{_ci(who['router_upper_minus_lower'], 5)}**; holding the router fixed (the base router on the base "
                f"and on the RL stream): input effect upper {_ci(who['input_upper'], 5)}, lower "
                f"{_ci(who['input_lower'], 5)}, difference **{_ci(who['input_upper_minus_lower'], 5)}**. "
                f"The upper-layer excess is made by: **{who['verdict']}**.")
    if f2.get("think"):
        t, a = f2["think"], f2["answer"]
        f2_text = (f"Mean crystallization layer (first layer from which the logit lens's top-1 equals the final "
                   f"prediction and stays so; layers 0-{n_layers - 1}, midpoint {f2['midpoint_layer']:.1f}): think "
                   f"tokens base {_ci(t['base_mean_layer'], 2)}, RL {_ci(t['rl_mean_layer'], 2)}, change "
                   f"{_ci(t['delta_mean_layer'], 2)}"
                   + (f"; answer tokens base {_ci(a['base_mean_layer'], 2)}, RL {_ci(a['rl_mean_layer'], 2)}, "
                      f"change {_ci(a['delta_mean_layer'], 2)}" if a else "") + ".")
    else:
        f2_text = f2["why"]
    tr = steps["transplant"]
    tr_lines = [f"| {direction} | {band} | {_ci(v['accuracy'])} | {_ci(v['think_rate'])} |"
                for direction, bands in tr.items() if direction != "reference" for band, v in bands.items()]
    md = f"""# adt-probe reproduce{' (quick)' if plan.quick else ''}

The Audio-DeepThinker pipeline on the model organism: GRPO with the hybrid reasoning reward (stage 1), boundary
mining, GRPO with the LLM-judge reward (stage 2), then the analysis of what RL changed inside the MoE.

## Before and after RL

Held-out set: {ev['base']['n_items']} synthetic items ({plan.n_per_cell} per family x difficulty, seed
{plan.eval_seed}), think-first prompt, greedy decoding; 95% Wilson intervals (proportions) and bootstrap intervals
over items (means). Process score: the judge's score of the think text against the reference chain when the answer
is right, 0 otherwise (MMAR-Rubrics style). Direct-answer accuracy: the answer-only prompt.

{chr(10).join(table)}

Sampled at temperature 1, the think-rate is {ev['base'].get('think_rate_sampled_t1', float('nan')):.3f} (base) and
{ev['final'].get('think_rate_sampled_t1', float('nan')):.3f} (final). Training: {train['steps']} GRPO steps; final
checkpoint `{os.path.relpath(train['final'], d)}`.

{fig(str(d / 'figures' / 'training'), 'Reward, think-rate and accuracy of the rollouts per step')}
## Finding 1: does RL mostly reshape the routers of the upper layers? **{f1['verdict']}**

{f1_text}

{who_text}

{fig(figs['drift_js'][0], JS_CAPTION)}
{fig(str(d / 'decompose' / 'drift_decomposition'), 'Drift per layer made by the router, by its input, and in total')}
{fig(figs['drift_top1'][0], 'Top-1 expert agreement between base and RL per layer')}
{fig(figs['expert_load'][0], 'Expert load, base vs RL, and the shift')}
{fig(str(d / 'weights' / 'router_weight_drift'), WEIGHT_CAPTION)}
{fig(str(d / 'trajectory' / 'drift_trajectory'), 'Gating drift from the base along the checkpoints of the run')}
## Finding 2: do reasoning tokens crystallize progressively in the upper layers? **{f2['verdict']}**

{f2_text}

{_crystallization_figs(figs, fig)}
## Router transplant

Change when a band of layers routes with the other model's routers (95% paired bootstrap over items). Reference:
final model accuracy {tr['reference'].get('rl_accuracy', float('nan')):.3f}, base
{tr['reference'].get('base_accuracy', float('nan')):.3f}.

| direction | layers | change of accuracy | change of think-rate |
|---|---|---|---|
{chr(10).join(tr_lines)}

{fig(str(d / 'transplant' / 'transplant_accuracy'), 'Router transplant: change of accuracy per layer band')}
## How this was made

    {cmd}

Steps and seconds: {', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())}. Everything above is in
`results.json`; the datasets are in `recordings*/` (zarr), `findings*/`, `decompose/`, `weights/`, `trajectory/`
and `transplant/` (netCDF), the run in `run/`.
Versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}.
"""
    (d / "report.md").write_text(md)
    return results


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


def versions() -> dict:
    import platform

    import torch
    import transformers

    import adt_probe

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "adt_probe": adt_probe.__version__, "platform": platform.platform()}
