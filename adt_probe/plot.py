"""Figures: one function per figure type, each taking Datasets and returning a matplotlib Figure.

Every figure shows intervals (shaded 95% bootstrap bands) and, where the Dataset has one, the noise floor (grey
band). Figures carry no titles: the caption belongs to the paper or report that shows them; legends name the
interval. Colours come from the Okabe-Ito palette (distinguishable with the common colour-vision deficiencies) and
lines also differ in marker, so figures read in greyscale print. ``save(fig, path)`` writes PNG (300 dpi) and PDF.

Examples
--------
>>> fig = drift_by_layer(drift, metric="js", segments=["think", "answer"])   # doctest: +SKIP
>>> save(fig, "figures/drift_js")                                             # writes .png and .pdf
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# No backend is chosen here: matplotlib picks the headless Agg itself when there is no display, and a notebook's
# inline backend must stay in charge there so that figures (returned ones, plt.show(), xarray's .plot) display.
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure

OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LABELS = {"js": "Jensen-Shannon divergence (bits)", "kl": "KL(base || RL) (nats)",
          "topk_jaccard": "top-k Jaccard overlap", "top1_agreement": "top-1 agreement",
          "entropy_delta": "routing entropy change (nats)", "lens_logprob": "log-prob of next token (nats)",
          "lens_rank": "rank of next token", "lens_kl_final": "KL(final || lens) (nats)",
          "lens_entropy": "lens entropy (nats)", "rel_change": "relative router-logit change",
          "share": "share of the router-logit change", "topk_change": "top-k set change rate",
          "top1_flip": "top-1 flip rate"}


def _style(i: int) -> dict:
    return {"color": OKABE_ITO[i % len(OKABE_ITO)], "marker": MARKERS[i % len(MARKERS)], "markersize": 4}


def _bands_marked(ax, bands: dict | None) -> None:
    """A dotted line between the lower and the upper band of layers."""
    if bands and bands.get("lower") and bands.get("upper"):
        ax.axvline((bands["lower"][-1] + bands["upper"][0]) / 2, color="0.3", ls=":", lw=1)
        ax.text(bands["upper"][0] - 0.45, 0.98, "upper band", transform=ax.get_xaxis_transform(), fontsize=7,
                va="top")


def save(fig: plt.Figure, path: str | Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write ``fig`` as ``path.png`` (300 dpi) and ``path.pdf`` (vector); returns the paths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats:
        target = path.with_suffix(f".{fmt}")
        fig.savefig(target, dpi=300, bbox_inches="tight")
        out.append(target)
    return out


def _band(ax, x, lo, hi, color, alpha=0.2):
    ok = ~(np.isnan(lo) | np.isnan(hi))
    if ok.any():
        ax.fill_between(np.asarray(x)[ok], np.asarray(lo)[ok], np.asarray(hi)[ok], color=color, alpha=alpha, lw=0)


def drift_by_layer(drift: xr.Dataset, metric: str = "js", segments: Sequence[str] = ("all",),
                   title: str | None = None) -> plt.Figure:
    """Drift per layer with its 95% interval per segment, and the noise floor's interval in grey."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    layers = drift["layer"].values
    for i, seg in enumerate(segments):
        st = _style(i)
        ax.plot(layers, drift[metric].sel(segment=seg), label=f"{seg} (95% CI, bootstrap over sequences)", **st)
        _band(ax, layers, drift[f"{metric}_lo"].sel(segment=seg), drift[f"{metric}_hi"].sel(segment=seg), st["color"])
    if f"noise_{metric}" in drift:  # one floor per segment: segments differ in length and so in floor
        for i, seg in enumerate(segments):
            ax.plot(layers, drift[f"noise_{metric}"].sel(segment=seg), color="0.4", ls=(0, (1 + i, 2)), lw=1,
                    label=f"noise floor, {seg}")
            _band(ax, layers, drift[f"noise_{metric}_lo"].sel(segment=seg),
                  drift[f"noise_{metric}_hi"].sel(segment=seg), "0.5", alpha=0.15)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel(LABELS.get(metric, metric))
    if title:
        ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def drift_decomposition(decomposition: xr.Dataset, metric: str = "js", segment: str = "all") -> plt.Figure:
    """Per layer, the change made by the router term (same input, other router), by the input term (same router,
    other input) and in total, each with its 95% interval (``adt_probe.decompose.router_decomposition``)."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    layers = decomposition["layer"].values
    effects = list(decomposition["effect"].values)
    width = 0.8 / len(effects)
    for i, effect in enumerate(effects):
        sel = decomposition.sel(effect=effect, segment=segment)
        est = sel[metric].values
        err = np.vstack([est - sel[f"{metric}_lo"].values, sel[f"{metric}_hi"].values - est])
        ax.bar(layers + (i - (len(effects) - 1) / 2) * width, est, width=width, yerr=np.clip(err, 0, None),
               capsize=2, color=OKABE_ITO[i], hatch=("", "//", "..")[i % 3], label=f"{effect} (95% CI)")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel(LABELS.get(metric, metric))
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def expert_load(drift: xr.Dataset, segment: str = "all", title: str | None = None) -> plt.Figure:
    """Heatmaps of expert load (layer x expert): base, RL, and the shift (diverging, centred at 0)."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), sharey=True)
    base, rl = drift["base_load"].sel(segment=segment), drift["rl_load"].sel(segment=segment)
    shift = drift["load_shift"].sel(segment=segment)
    vmax = float(max(base.max(), rl.max()))
    for ax, data, name in ((axes[0], base, "base"), (axes[1], rl, "RL")):
        im = ax.imshow(data.values, aspect="auto", cmap="cividis", vmin=0, vmax=vmax, origin="lower")
        ax.set_title(f"{name} load ({segment})")
        ax.set_xlabel("expert")
    fig.colorbar(im, ax=axes[:2], fraction=0.03, label="share of top-k slots")
    lim = float(np.nanmax(np.abs(shift.values))) or 1.0
    im2 = axes[2].imshow(shift.values, aspect="auto", cmap="PuOr", vmin=-lim, vmax=lim, origin="lower")
    axes[2].set_title("load shift (RL - base)")
    axes[2].set_xlabel("expert")
    fig.colorbar(im2, ax=axes[2], fraction=0.05)
    axes[0].set_ylabel("decoder layer")
    if title:
        fig.suptitle(title)
    return fig


def router_weight_drift(weights: xr.Dataset, title: str | None = None) -> plt.Figure:
    """Relative change of the router weights per layer (bar: whole router; whisker: range over experts' rows) next to
    the relative change of the block's other weights (the reference: how much training moved that block at all)."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    layers = weights["layer"].values
    rel = weights["rel_change"].values
    lo = np.nanmin(weights["rel_change_expert"].values, axis=1)
    hi = np.nanmax(weights["rel_change_expert"].values, axis=1)
    ax.bar(layers - 0.2, rel, width=0.4, color=OKABE_ITO[0], label="router",
           yerr=np.vstack([np.clip(rel - lo, 0, None), np.clip(hi - rel, 0, None)]), capsize=2)
    if "rel_change_other" in weights:
        ax.bar(layers + 0.2, weights["rel_change_other"].values, width=0.4, color=OKABE_ITO[1], hatch="//",
               label="other weights of the block")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel(r"$\|W_{RL} - W_{base}\| / \|W_{base}\|$")
    if title:
        ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def drift_trajectory(trajectory: xr.Dataset, metric: str = "js", layers: Sequence[int] | None = None,
                     segment: str = "all") -> plt.Figure:
    """Drift from the base along the checkpoints of a run (``step`` dimension), one line per layer."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    steps = trajectory["step"].values
    layers = list(trajectory["layer"].values if layers is None else layers)
    for i, layer in enumerate(layers):
        st = _style(i)
        sel = trajectory.sel(layer=layer, segment=segment)
        ax.plot(steps, sel[metric], label=f"layer {layer}", **st)
        _band(ax, steps, sel[f"{metric}_lo"], sel[f"{metric}_hi"], st["color"], alpha=0.12)
    ax.set_xlabel("RL step")
    ax.set_ylabel(LABELS.get(metric, metric))
    ax.legend(frameon=False, fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def crystallization_curves(curves: dict[str, xr.Dataset], variable: str = "lens_logprob",
                           segments: Sequence[str] = ("think", "answer")) -> plt.Figure:
    """Lens curves by layer for each (model, segment), e.g. ``{"base": c_base, "RL": c_rl}`` from
    ``crystallization``; solid = first model, dashed = second."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for m, (label, c) in enumerate(curves.items()):
        for i, seg in enumerate(segments):
            st = _style(i)
            layers = c["layer"].values
            ax.plot(layers, c[variable].sel(segment=seg), ls="-" if m == 0 else "--",
                    label=f"{label}: {seg} (95% CI)", **st)
            _band(ax, layers, c[f"{variable}_lo"].sel(segment=seg), c[f"{variable}_hi"].sel(segment=seg),
                  st["color"], alpha=0.15)
    ax.set_xlabel("decoder layer (lens after block)")
    ax.set_ylabel(LABELS.get(variable, variable))
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def crystallization_histogram(curves: dict[str, xr.Dataset], segments: Sequence[str] = ("think", "answer")
                              ) -> plt.Figure:
    """Where tokens crystallize: share of tokens per crystallization layer, per model and segment."""
    fig, axes = plt.subplots(1, len(segments), figsize=(4 * len(segments), 3.2), sharey=True, squeeze=False)
    for ax, seg in zip(axes[0], segments):
        n = len(curves)
        for m, (label, c) in enumerate(curves.items()):
            layers = c["layer"].values
            width = 0.8 / n
            ax.bar(layers + (m - (n - 1) / 2) * width, c["layer_histogram"].sel(segment=seg), width=width,
                   color=OKABE_ITO[m], hatch=("", "//", "..")[m % 3], label=f"{label} (mean "
                   f"{float(c['mean_crystallization_layer'].sel(segment=seg)):.2f})")
        ax.set_title(f"{seg} tokens")
        ax.set_xlabel("crystallization layer")
        ax.legend(frameon=False, fontsize=8)
    axes[0][0].set_ylabel("share of tokens")
    fig.tight_layout()
    return fig


def transplant_effects(effects: xr.Dataset, metric: str = "accuracy") -> plt.Figure:
    """Change of ``metric`` when a band of layers routes with the other model's routers, with intervals.

    ``effects`` has dims ``band`` and ``direction`` and variables ``<metric>_delta``, ``_lo``, ``_hi``.
    """
    fig, ax = plt.subplots(figsize=(6, 3.4))
    bands = [str(b) for b in effects["band"].values]
    x = np.arange(len(bands))
    directions = list(effects["direction"].values)
    width = 0.8 / len(directions)
    for i, d in enumerate(directions):
        sel = effects.sel(direction=d)
        est = sel[f"{metric}_delta"].values
        err = np.vstack([est - sel[f"{metric}_delta_lo"].values, sel[f"{metric}_delta_hi"].values - est])
        ax.bar(x + (i - (len(directions) - 1) / 2) * width, est, width=width, yerr=err, capsize=3,
               color=OKABE_ITO[i], hatch=("", "//")[i % 2], label=str(d))
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(x, bands)
    ax.set_xlabel("transplanted layer band")
    ax.set_ylabel(f"change in {metric}")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


# --- token x layer grids (one sequence) -------------------------------------------------------------------------------

def _one_sequence(ds: xr.Dataset, sequence: int, max_tokens: int) -> xr.Dataset:
    """The last ``max_tokens`` tokens of ``sequence`` (where completions end), in position order."""
    if int(sequence) not in set(np.unique(ds["sequence"].values).tolist()):
        raise ValueError(f"sequence {sequence} is not in the recording (it has sequences "
                         f"{sorted(set(np.unique(ds['sequence'].values).tolist()))[:10]} ...)")
    seq = ds.isel(token=np.flatnonzero(ds["sequence"].values == sequence))
    seq = seq.isel(token=np.argsort(seq["position"].values, kind="stable"))
    return seq.isel(token=slice(-max_tokens, None))


def _token_text(tokenizer, ids) -> list[str]:
    """Readable token strings (byte-level symbols decoded; line breaks and tabs shown as escapes)."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    return [tokenizer.decode([int(i)]).replace("\n", "\\n").replace("\t", "\\t") for i in ids]


def _token_labels(seq: xr.Dataset, tokenizer) -> list[str]:
    if "token_str" in seq.coords:
        return [str(t) for t in seq["token_str"].values]
    if tokenizer is None:
        return [str(int(i)) for i in seq["token_id"].values]
    return _token_text(tokenizer, seq["token_id"].values)


def _grid_axes(n_tokens: int, n_layers: int) -> tuple[Figure, plt.Axes]:
    # Made through pyplot (whose first figure makes a notebook's inline backend render Figures) and closed at once:
    # a notebook then shows it once, as the cell's value, and scripts making many figures hold none of them open
    fig = plt.figure(figsize=(min(2.0 + 0.62 * n_tokens, 40), min(max(3.5, 1.5 + 0.3 * n_layers), 30)),
                     layout="constrained")
    plt.close(fig)
    return fig, fig.add_subplot()


def _label_grid(ax: plt.Axes, labels: list[str], layers: np.ndarray, segments: np.ndarray) -> None:
    ax.set_xticks(range(len(labels)), [lab[:10] for lab in labels], rotation=90, fontsize=7)
    step = max(1, len(layers) // 16)
    ax.set_yticks(range(0, len(layers), step), [str(int(v)) for v in layers[::step]], fontsize=7)
    ax.set_xlabel("input token (think and answer tokens in bold)")
    ax.set_ylabel("layer (0 = first block's output)")
    for tick, seg in zip(ax.get_xticklabels(), segments):
        if seg in ("think", "answer"):
            tick.set_fontweight("bold")


def logit_lens_grid(ds: xr.Dataset, tokenizer=None, *, sequence: int = 0, max_tokens: int = 24,
                    cell_text: bool = True) -> Figure:
    """The classic logit-lens picture of one sequence: token x layer, each cell the lens's top-1 prediction.

    Parameters
    ----------
    ds : a recording with ``lens_top1`` and ``lens_logprob`` (token, layer) (``adt_probe.record``, default lens).
    tokenizer : turns token ids into the strings written in the cells (and on the axis, unless the recording has a
        ``token_str`` coordinate); without one the cells hold token ids.
    sequence : which sequence of the recording.
    max_tokens : the last this many tokens of the sequence are shown (a completion's end).
    cell_text : write the top-1 token in each cell.

    Returns
    -------
    matplotlib Figure: x = input token, y = layer (the model's output at the top); colour = log-probability the
    lens gives the actual next token (nats; white: no next token).
    """
    for name in ("lens_top1", "lens_logprob"):
        if name not in ds:
            raise ValueError(f"the recording has no {name!r}: record with lens='logit' (or 'tuned')")
    seq = _one_sequence(ds, sequence, max_tokens)
    logprob = seq["lens_logprob"].transpose("layer", "token").values  # (layers, tokens)
    top1 = seq["lens_top1"].transpose("layer", "token").values
    fig, ax = _grid_axes(seq.sizes["token"], seq.sizes["layer"])
    finite = logprob[np.isfinite(logprob)]
    vmin = float(np.percentile(finite, 2)) if finite.size else -10.0
    image = ax.imshow(np.ma.masked_invalid(logprob), aspect="auto", origin="lower", cmap="viridis", vmin=vmin,
                      vmax=0.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="lens log-prob of the actual next token (nats)", shrink=0.8)
    if cell_text:
        ids = np.unique(top1[top1 >= 0])  # -1: the lens was not computed for that token (lens_segments)
        words = {i: w[:7] for i, w in zip(ids, _token_text(tokenizer, ids))} if tokenizer is not None \
            else {i: str(i) for i in ids}
        words[-1] = ""
        dark = logprob < (vmin / 2)  # white text on the dark end of viridis
        for (layer, tok), word in np.ndenumerate(np.vectorize(words.get, otypes=[object])(top1)):
            ax.text(tok, layer, word, ha="center", va="center", fontsize=5.5,
                    color="white" if dark[layer, tok] else "black")
    _label_grid(ax, _token_labels(seq, tokenizer), seq["layer"].values, seq["segment"].values)
    fig.suptitle(f"Logit lens, sequence {sequence}: the top-1 token each layer predicts next", fontsize=9)
    return fig


def expert_grid(ds: xr.Dataset, tokenizer=None, *, sequence: int = 0, max_tokens: int = 24,
                cell_text: bool = True) -> Figure:
    """Token x layer grid of each token's top-1 expert in one sequence (MoE layers only).

    Parameters
    ----------
    ds : a recording with ``topk_experts`` and ``topk_weights`` (token, layer, k), k = 0 the heaviest expert.
    tokenizer : for the token strings on the axis (or the recording's ``token_str`` coordinate).
    sequence, max_tokens, cell_text : as in :func:`logit_lens_grid`.

    Returns
    -------
    matplotlib Figure: colour = top-1 expert index (one colour per expert), cell text = that expert and its routing
    weight in percent.
    """
    if "topk_experts" not in ds:
        raise ValueError("the recording has no 'topk_experts': record an MoE model with routing='topk' or 'full'")
    seq = _one_sequence(ds, sequence, max_tokens)
    moe = seq["moe_layer"].values if "moe_layer" in seq.coords else np.ones(seq.sizes["layer"], bool)
    seq = seq.isel(layer=np.flatnonzero(moe))
    expert = seq["topk_experts"].isel(k=0).transpose("layer", "token").values.astype(int)
    weight = seq["topk_weights"].isel(k=0).transpose("layer", "token").values
    n_experts = int(ds.attrs.get("n_experts") or expert.max() + 1)
    colours = plt.get_cmap("tab20" if n_experts > 10 else "tab10").colors
    cmap = ListedColormap([colours[i % len(colours)] for i in range(n_experts)])
    fig, ax = _grid_axes(seq.sizes["token"], seq.sizes["layer"])
    image = ax.imshow(np.ma.masked_less(expert, 0), aspect="auto", origin="lower", cmap=cmap,
                      norm=BoundaryNorm(np.arange(n_experts + 1) - 0.5, n_experts), interpolation="nearest")
    bar = fig.colorbar(image, ax=ax, label="top-1 expert", shrink=0.8)
    bar.set_ticks(range(0, n_experts, max(1, n_experts // 16)))
    if cell_text:
        for (layer, tok), e in np.ndenumerate(expert):
            if e >= 0:
                ax.text(tok, layer, f"{e}\n{100 * weight[layer, tok]:.0f}%", ha="center", va="center",
                        fontsize=5, linespacing=0.9)
    _label_grid(ax, _token_labels(seq, tokenizer), seq["layer"].values, seq["segment"].values)
    fig.suptitle(f"Top-1 expert per token and MoE layer, sequence {sequence} (text: expert, routing weight)",
                 fontsize=9)
    return fig


def router_effect_by_layer(table: dict, bands: dict | None = None, null: dict | None = None) -> plt.Figure:
    """Relative router-logit change per layer: router term (fixed input), input term and total, 95% intervals;
    grey: the range of uniform random router updates (the calibration). ``table``: ``findings["decomposition"]``."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    layers = np.asarray(table["layer"])
    for i, (effect, label) in enumerate((("router", "router term ||dW x̄|| (fixed input)"),
                                         ("input", "input term ||W̄ dx||"), ("total", "total"))):
        v = table["rel_change"][effect]
        st = _style(i)
        ax.plot(layers, v["value"], label=f"{label}", **st)
        _band(ax, layers, np.asarray(v["lo"], float), np.asarray(v["hi"], float), st["color"])
    if null:
        ax.fill_between(layers, null["min"], null["max"], color="0.6", alpha=0.35, lw=0,
                        label=f"uniform random router updates ({null['k']} draws, range)")
    _bands_marked(ax, bands)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("relative router-logit change")
    ax.legend(frameon=False, fontsize=7, title="shaded: 95% CI, bootstrap over sequences", title_fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def router_share_by_layer(table: dict, bands: dict | None = None) -> plt.Figure:
    """Share of the router-logit change made by the router term and by the input term per layer (they add up to 1
    exactly), 95% intervals."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    layers = np.asarray(table["layer"])
    for i, effect in enumerate(("router", "input")):
        v = table["share"][effect]
        est = np.asarray(v["value"], float)
        err = np.clip(np.vstack([est - np.asarray(v["lo"], float), np.asarray(v["hi"], float) - est]), 0, None)
        ax.bar(layers + (i - 0.5) * 0.4, est, width=0.4, yerr=err, capsize=2, color=OKABE_ITO[i],
               hatch=("", "//")[i], label=f"{effect} term (95% CI)")
    _bands_marked(ax, bands)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("share of the logit change")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def settling_curves(curves: dict, first_upper: int | None = None, groups: Sequence[str] = ("think", "answer"),
                    random_init: dict | None = None) -> plt.Figure:
    """Share of tokens settled by each stream (E = embedding, then each block), base solid and RL dashed, with 95%
    intervals; the share that settles only at the output is printed in the legend (it is no settling layer).
    ``random_init``: the random-weights baseline's think curve (``curves["think"]`` of ``random_init_numbers``),
    drawn grey and dotted as the floor."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    if random_init and "random_init" in random_init:
        c = random_init["random_init"]
        ax.plot(random_init["stream"], c["value"], color="0.5", ls=":", marker=".", label="random init: think "
                f"(output only: {random_init['never_settled']['random_init']['value']:.2f})")
        _band(ax, np.asarray(random_init["stream"]), np.asarray(c["lo"], float), np.asarray(c["hi"], float), "0.5",
              alpha=0.1)
    for i, g in enumerate(x for x in groups if x in curves and "rl" in curves[x]):
        c = curves[g]
        x = np.asarray(c["stream"])
        for m, ls in (("base", "-"), ("rl", "--")):
            st = _style(i)
            never = c["never_settled"][m]["value"]
            ax.plot(x, c[m]["value"], ls=ls, label=f"{'RL' if m == 'rl' else 'base'}: {g} (output only: "
                    f"{never:.2f})", **st)
            _band(ax, x, np.asarray(c[m]["lo"], float), np.asarray(c[m]["hi"], float), st["color"], alpha=0.12)
    if first_upper is not None:
        ax.axvline(first_upper - 0.5, color="0.3", ls=":", lw=1)
    ticks = np.asarray(next(iter(curves.values()))["stream"])
    ax.set_xticks(ticks, ["E" if t < 0 else str(t) for t in ticks])
    ax.set_xlabel("stream (E: embedding; i: after block i)")
    ax.set_ylabel("share settled by this stream")
    ax.set_ylim(0, 1)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False, fontsize=7, title="shaded: 95% BCa CI, bootstrap over sequences", title_fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def control_bars(controls: dict) -> plt.Figure:
    """Relative router-logit change at fixed input (router term) and input term, lower and upper band: RL next to
    random-direction updates of RL's own per-tensor norm (routers only, all but routers, everything; mean of the
    draws, whiskers: range) and, when run, the SFT control at RL's norm."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=False)
    every = {"rl": "RL", "routers": "random:\nrouters", "others": "random:\nall but routers", "all": "random:\nall",
             "sft": "SFT,\nRL's norm"}
    names = [n for n in every if n in controls]
    labels = [every[n] for n in names]
    for ax, q, ylabel in ((axes[0], "rel_router", "router term (relative)"),
                          (axes[1], "rel_input", "input term (relative)")):
        for j, band in enumerate(("lower", "upper")):
            vals, lo, hi = [], [], []
            for n in names:
                if n in ("rl", "sft"):  # one model each: no range
                    v = controls[n][q][band]
                    vals.append(v), lo.append(v), hi.append(v)
                else:
                    draws = [d[q][band] for d in controls[n]["draws"]]
                    vals.append(np.mean(draws)), lo.append(min(draws)), hi.append(max(draws))
            x = np.arange(len(names)) + (j - 0.5) * 0.4
            err = np.clip(np.vstack([np.subtract(vals, lo), np.subtract(hi, vals)]), 0, None)
            ax.bar(x, vals, width=0.4, yerr=err, capsize=2, color=OKABE_ITO[j], hatch=("", "//")[j],
                   label=f"{band} band")
        ax.set_xticks(np.arange(len(names)), labels, fontsize=7)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(frameon=False, fontsize=8, title=f"whiskers: range of {controls['k']} draws", title_fontsize=7)
    fig.tight_layout()
    return fig
