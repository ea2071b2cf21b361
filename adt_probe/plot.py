"""Figures: one function per figure type, each taking Datasets and returning a matplotlib Figure.

Figures are built without pyplot (``matplotlib.figure.Figure`` with an Agg canvas), so none stays open in pyplot's
registry: in a notebook a returned figure displays exactly once (as the cell's value), and a script making many
figures holds none of them. Nothing here chooses a backend.

Every figure shows intervals (shaded 95% bootstrap bands or whiskers, the kind named in the legend) and, where the
Dataset has one, the noise floor of each segment. Figures carry no titles: each carries its caption as
``fig.caption`` (what is shown, the interval, the noise floor) for the paper or report that shows it, and ``save``
writes it into the files' metadata. Where layers are the x axis, the boundary between the lower and the upper band of
layers is a dotted line. Colours come from the Okabe-Ito palette (distinguishable with the common colour-vision
deficiencies; its yellow is never used for lines) and lines also differ in marker, so figures read in greyscale
print. ``save(fig, path)`` writes PNG (300 dpi) beside a PDF.

Examples
--------
>>> fig = drift_by_layer(drift, metric="js", segments=["think", "answer"])   # doctest: +SKIP
>>> print(fig.caption)                                                        # doctest: +SKIP
>>> save(fig, "figures/drift_js")                                             # writes .png and .pdf
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator

OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
# Colours for lines and markers: the palette without its yellow (#F0E442), which is near-invisible as a thin line
LINE_COLOURS = tuple(c for c in OKABE_ITO if c != "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LABELS = {"js": "Jensen-Shannon divergence (bits)", "kl": "KL(base || RL) (nats)",
          "topk_jaccard": "top-k Jaccard overlap", "top1_agreement": "top-1 expert agreement",
          "entropy_delta": "routing entropy change (nats)", "lens_logprob": "log-prob of next token (nats)",
          "lens_rank": "rank of next token", "lens_kl_final": "KL(final || lens) (nats)",
          "lens_entropy": "lens entropy (nats)", "rel_change": "relative router-logit change",
          "share": "share of the router-logit change", "topk_change": "top-k set change rate",
          "top1_flip": "top-1 flip rate"}
NAMES = {"js": "Jensen-Shannon divergence between the base and RL routing distributions",
         "kl": "KL divergence between the base and RL routing distributions",
         "topk_jaccard": "overlap of the base and RL top-k expert sets",
         "top1_agreement": "agreement of the base and RL top-1 experts",
         "entropy_delta": "change of the routing entropy", "lens_logprob": "logit-lens log-prob of the next token",
         "lens_rank": "logit-lens rank of the next token",
         "lens_kl_final": "KL divergence of the logit lens from the model's final distribution",
         "lens_entropy": "entropy of the logit lens", "rel_change": "relative router-logit change",
         "share": "share of the router-logit change", "topk_change": "top-k set change rate",
         "top1_flip": "top-1 flip rate"}
SHADED = "shaded: 95% sequence-bootstrap interval"
WHISKERS = "whiskers: 95% sequence-bootstrap interval"
DIRECTIONS = {"rl <- base": "base routers in the RL model", "base <- rl": "RL routers in the base model"}
TRANSPLANT = {  # metric: (y label, interval named in the legend)
    "accuracy": ("change in accuracy", "95% paired score interval (Newcombe), over items"),
    "think_rate": ("change in think-rate", "95% paired score interval (Newcombe), over items"),
    "reward": ("change in reward", "95% paired BCa bootstrap interval over items"),
    "kl_to_rl": ("change in KL from the RL model's output\n(nats per think token)",
                 "95% paired BCa bootstrap interval over sequences"),
    "think_logprob": ("change in log-prob of the think text\n(nats per think token)",
                      "95% paired BCa bootstrap interval over sequences")}


class PaperFigure(Figure):
    """A Figure outside pyplot, with its caption (``caption``) and a PNG representation for notebooks."""

    caption: str = ""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()


def new_figure(figsize: tuple[float, float], caption: str = "", **kwargs) -> PaperFigure:
    """A Figure with an Agg canvas that pyplot does not know about (``Figure(...)``, then ``fig.subplots``)."""
    fig = PaperFigure(figsize=figsize, **kwargs)
    FigureCanvasAgg(fig)
    fig.caption = caption
    return fig


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _words(items: Sequence[str]) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _style(i: int) -> dict:
    return {"color": LINE_COLOURS[i % len(LINE_COLOURS)], "marker": MARKERS[i % len(MARKERS)], "markersize": 4}


def _moe_layers(ds: xr.Dataset) -> list[int]:
    """The MoE layers (``moe_layer`` coordinate or variable; every layer without one)."""
    layers = ds["layer"].values
    if "moe_layer" in ds.coords or "moe_layer" in ds:
        moe = ds["moe_layer"].transpose(..., "layer").values
        layers = layers[np.asarray(moe, bool).reshape(-1, len(layers))[0]]
    return [int(i) for i in layers]


def default_bands(ds: xr.Dataset) -> dict[str, list[int]]:
    """Lower and upper half of the MoE layers (``moe_layer`` coordinate; all layers without one), as the analyses
    split them."""
    layers = _moe_layers(ds)
    return {"lower": layers[: len(layers) // 2], "upper": layers[len(layers) // 2:]}


def _bands_marked(ax, bands: dict | None, *, label: bool = True) -> None:
    """Whole-number layer ticks (unless the plot set its own), a dotted line between the lower and the upper band of
    layers, the bands named at the top."""
    if not isinstance(ax.xaxis.get_major_locator(), FixedLocator):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not (bands and bands.get("lower") and bands.get("upper")):
        return
    boundary = (bands["lower"][-1] + bands["upper"][0]) / 2
    ax.axvline(boundary, color="0.3", ls=":", lw=1, gid="band_boundary")
    if label:
        kw = {"transform": ax.get_xaxis_transform(), "fontsize": 7, "va": "top", "color": "0.3"}
        ax.text(boundary - 0.1, 0.98, "lower band", ha="right", **kw)
        ax.text(boundary + 0.1, 0.98, "upper band", ha="left", **kw)


def _band_sentence(bands: dict | None) -> str:
    if not (bands and bands.get("lower") and bands.get("upper")):
        return ""
    return (f" Dotted line: boundary between the lower band (layers {bands['lower'][0]}-{bands['lower'][-1]}) and "
            f"the upper band (layers {bands['upper'][0]}-{bands['upper'][-1]}).")


def save(fig: Figure, path: str | Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write ``fig`` as ``path.png`` (300 dpi) and ``path.pdf`` (vector) with its caption in the files' metadata
    (PNG ``Description``, PDF ``Subject``); returns the paths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    caption = getattr(fig, "caption", "")
    out = []
    for fmt in formats:
        target = path.with_suffix(f".{fmt}")
        metadata = {"png": {"Description": caption}, "pdf": {"Subject": caption}}.get(fmt) if caption else None
        fig.savefig(target, dpi=300, bbox_inches="tight", metadata=metadata)
        out.append(target)
    return out


def _band(ax, x, lo, hi, color, alpha=0.2):
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    ok = ~(np.isnan(lo) | np.isnan(hi))
    if ok.any():
        ax.fill_between(np.asarray(x)[ok], lo[ok], hi[ok], color=color, alpha=alpha, lw=0)


def _legend(ax, title: str, **kwargs) -> None:
    ax.legend(frameon=False, fontsize=kwargs.pop("fontsize", 8), title=title, title_fontsize=7, **kwargs)


# --- drift by layer ---------------------------------------------------------------------------------------------------

def drift_by_layer(drift: xr.Dataset, metric: str = "js", segments: Sequence[str] = ("all",),
                   title: str | None = None, bands: dict | None = None) -> PaperFigure:
    """Drift per layer with its 95% sequence-bootstrap interval per segment and, where the Dataset has one (the
    ``noise_<metric>`` variables of ``gating_drift(..., noise=...)``), the noise floor of each segment: dashed in the
    segment's colour, its interval in grey. ``bands``: lower/upper layers (default: halves of the MoE layers)."""
    bands = default_bands(drift) if bands is None else bands
    noise = f"noise_{metric}" in drift
    caption = (f"{_cap(NAMES.get(metric, metric))} per decoder layer, for {_words(segments)} tokens; "
               f"shaded: 95% bootstrap interval over sequences."
               + (" Dashed: the noise floor of each segment (the same measure between two recordings of the base "
                  "model that should not differ, e.g. another dtype or batch composition), grey: its 95% interval."
                  if noise else " No noise floor was recorded.") + _band_sentence(bands))
    fig = new_figure((6, 3.4), caption, layout="constrained")
    ax = fig.subplots()
    layers = drift["layer"].values
    for i, seg in enumerate(segments):
        st = _style(i)
        ax.plot(layers, drift[metric].sel(segment=seg), label=f"{seg} tokens", **st)
        _band(ax, layers, drift[f"{metric}_lo"].sel(segment=seg), drift[f"{metric}_hi"].sel(segment=seg), st["color"])
    if noise:  # one floor per segment: segments differ in length and so in floor
        for i, seg in enumerate(segments):
            ax.plot(layers, drift[f"noise_{metric}"].sel(segment=seg), color=_style(i)["color"], ls="--", lw=1,
                    label=f"noise floor, {seg}")
            _band(ax, layers, drift[f"noise_{metric}_lo"].sel(segment=seg),
                  drift[f"noise_{metric}_hi"].sel(segment=seg), "0.5", alpha=0.15)
    _bands_marked(ax, bands)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel(LABELS.get(metric, metric))
    if title:
        ax.set_title(title)
    _legend(ax, SHADED + ("\n(grey: of the noise floor)" if noise else ""), loc="upper left",
            bbox_to_anchor=(1.01, 1))
    ax.grid(alpha=0.3)
    return fig


def drift_decomposition(decomposition: xr.Dataset, metric: str = "js", segment: str = "all",
                        bands: dict | None = None) -> PaperFigure:
    """Per layer, the change made by the router term (same input, other router), by the input term (same router,
    other input) and in total, each with its 95% interval (``adt_probe.decompose.router_decomposition``)."""
    bands = default_bands(decomposition) if bands is None else bands
    caption = (f"{_cap(NAMES.get(metric, metric))} per decoder layer ({segment} tokens), split exactly into "
               f"the router term (the RL router on the base model's input), the input term (the base router on the "
               f"RL model's input) and the total; whiskers: 95% bootstrap interval over sequences."
               + _band_sentence(bands))
    fig = new_figure((6, 3.4), caption, layout="constrained")
    ax = fig.subplots()
    layers = decomposition["layer"].values
    effects = list(decomposition["effect"].values)
    names = {"router": "router term (fixed input)", "input": "input term (fixed router)", "total": "total"}
    width = 0.8 / len(effects)
    for i, effect in enumerate(effects):
        sel = decomposition.sel(effect=effect, segment=segment)
        est = sel[metric].values
        err = np.vstack([est - sel[f"{metric}_lo"].values, sel[f"{metric}_hi"].values - est])
        ax.bar(layers + (i - (len(effects) - 1) / 2) * width, est, width=width,
               yerr=np.clip(np.nan_to_num(err), 0, None), capsize=2, color=LINE_COLOURS[i],
               hatch=("", "//", "..")[i % 3], label=names.get(str(effect), str(effect)))
    _bands_marked(ax, bands)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel(LABELS.get(metric, metric))
    _legend(ax, WHISKERS)
    ax.grid(alpha=0.3, axis="y")
    return fig


def expert_load(drift: xr.Dataset, segment: str = "all", title: str | None = None) -> PaperFigure:
    """Heatmaps of expert load (layer x expert): base, RL, and the shift (diverging, centred at 0)."""
    caption = (f"Expert load per decoder layer ({segment} tokens): the share of top-k routing slots each expert gets "
               f"in the base model, in the RL model, and the shift (RL minus base). Point estimates; no interval.")
    fig = new_figure((11, 3.4), caption, layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    base, rl = drift["base_load"].sel(segment=segment), drift["rl_load"].sel(segment=segment)
    shift = drift["load_shift"].sel(segment=segment)
    vmax = float(max(base.max(), rl.max()))
    for ax, data, name in ((axes[0], base, "base model"), (axes[1], rl, "RL model")):
        im = ax.imshow(data.values, aspect="auto", cmap="cividis", vmin=0, vmax=vmax, origin="lower")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("expert")
    fig.colorbar(im, ax=axes[:2], fraction=0.03, label="share of top-k slots")
    lim = float(np.nanmax(np.abs(shift.values))) or 1.0
    im2 = axes[2].imshow(shift.values, aspect="auto", cmap="PuOr", vmin=-lim, vmax=lim, origin="lower")
    axes[2].set_title("shift (RL minus base)", fontsize=9)
    axes[2].set_xlabel("expert")
    fig.colorbar(im2, ax=axes[2], fraction=0.05, label="change in share of slots")
    axes[0].set_ylabel("decoder layer")
    if title:
        fig.suptitle(title)
    return fig


def router_weight_drift(weights: xr.Dataset, title: str | None = None, bands: dict | None = None) -> PaperFigure:
    """Relative change of the router weights per layer (bar: whole router; whisker: range over experts' rows) next to
    the relative change of the block's other weights (the reference: how much training moved that block at all)."""
    bands = default_bands(weights) if bands is None else bands
    other = "rel_change_other" in weights
    caption = ("Relative change of the router weights per decoder layer, ||W_RL - W_base|| / ||W_base||; whiskers: "
               "range over the experts' rows (no sampling interval: the weights are not a sample)."
               + (" Hatched: the same for the block's other weights, how much training moved that block at all."
                  if other else "") + _band_sentence(bands))
    fig = new_figure((6, 3.4), caption, layout="constrained")
    ax = fig.subplots()
    layers = weights["layer"].values
    rel = weights["rel_change"].values
    lo = np.nanmin(weights["rel_change_expert"].values, axis=1)
    hi = np.nanmax(weights["rel_change_expert"].values, axis=1)
    ax.bar(layers - 0.2, rel, width=0.4, color=LINE_COLOURS[0], label="router",
           yerr=np.nan_to_num(np.vstack([np.clip(rel - lo, 0, None), np.clip(hi - rel, 0, None)])), capsize=2)
    if other:
        ax.bar(layers + 0.2, weights["rel_change_other"].values, width=0.4, color=LINE_COLOURS[1], hatch="//",
               label="other weights of the block")
    _bands_marked(ax, bands)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel(r"$\|W_{RL} - W_{base}\| / \|W_{base}\|$")
    if title:
        ax.set_title(title)
    _legend(ax, "whiskers: range over the experts' rows")
    ax.grid(alpha=0.3, axis="y")
    return fig


def drift_trajectory(trajectory: xr.Dataset, metric: str = "js", layers: Sequence[int] | None = None,
                     segment: str = "all", bands: dict | None = None) -> PaperFigure:
    """Drift from the base along the checkpoints of a run (``step`` dimension) as small multiples: one panel per
    layer (default: the MoE layers), shared axes, coloured by band, each with its 95% interval."""
    bands = default_bands(trajectory) if bands is None else bands
    layers = _moe_layers(trajectory) if layers is None else [int(v) for v in layers]
    noise = f"noise_{metric}" in trajectory
    ncols = min(len(layers), 4 if len(layers) <= 12 else 8)
    nrows = math.ceil(len(layers) / ncols)
    caption = (f"{_cap(NAMES.get(metric, metric))} from the base model at each checkpoint of the RL run "
               f"({segment} tokens), one panel per decoder layer"
               + (" (blue: lower band, vermillion: upper band)" if bands.get("upper") else "")
               + "; shaded: 95% bootstrap interval over sequences; step 0 is the base (0 by construction)."
               + (" Dashed: the noise floor." if noise else " No noise floor was recorded along the run."))
    fig = new_figure((1.9 * ncols + 0.8, 1.45 * nrows + 0.8), caption, layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)).ravel()
    steps = trajectory["step"].values
    upper = set(bands.get("upper") or [])
    for ax, layer in zip(axes, layers):
        i = 1 if layer in upper else 0
        st = _style(i)
        sel = trajectory.sel(layer=layer, segment=segment)
        ax.plot(steps, sel[metric], lw=1.5, **st)
        _band(ax, steps, sel[f"{metric}_lo"], sel[f"{metric}_hi"], st["color"], alpha=0.2)
        if noise:
            ax.plot(steps, sel[f"noise_{metric}"], color="0.4", ls="--", lw=1)
        band = " (upper)" if layer in upper else " (lower)" if layer in (bands.get("lower") or []) else ""
        ax.text(0.03, 0.95, f"layer {layer}{band}", transform=ax.transAxes, fontsize=7, va="top")
        ax.grid(alpha=0.3)
    for ax in axes[len(layers):]:
        ax.set_visible(False)
    fig.supxlabel("RL step", fontsize=9)
    fig.supylabel(LABELS.get(metric, metric), fontsize=9)
    for ax in axes[:len(layers)]:
        ax.tick_params(labelbottom=True)
    handles = [axes[0].plot([], [], **_style(0), label="lower band")[0],
               axes[0].plot([], [], **_style(1), label="upper band")[0]] if upper else \
        [axes[0].plot([], [], **_style(0), label="drift from the base")[0]]
    fig.legend(handles=handles, loc="outside upper center", ncol=2, frameon=False, fontsize=7, title=SHADED,
               title_fontsize=7)
    return fig


def crystallization_curves(curves: dict[str, xr.Dataset], variable: str = "lens_logprob",
                           segments: Sequence[str] = ("think", "answer"), bands: dict | None = None) -> PaperFigure:
    """Lens curves by layer for each (model, segment), e.g. ``{"base": c_base, "RL": c_rl}`` from
    ``crystallization``; solid = first model, dashed = second."""
    first = next(iter(curves.values()))
    bands = default_bands(first) if bands is None else bands
    names = list(curves)
    caption = (f"{_cap(NAMES.get(variable, variable))} after each decoder layer, for "
               f"{_words(segments)} tokens; {names[0]} solid"
               + (f", {names[1]} dashed" if len(names) > 1 else "")
               + "; shaded: 95% bootstrap interval over sequences. No noise floor (a per-model measure)."
               + _band_sentence(bands))
    fig = new_figure((6, 3.4), caption, layout="constrained")
    ax = fig.subplots()
    for m, (label, c) in enumerate(curves.items()):
        for i, seg in enumerate(segments):
            st = _style(i)
            layers = c["layer"].values
            ax.plot(layers, c[variable].sel(segment=seg), ls="-" if m == 0 else "--", label=f"{label}: {seg}", **st)
            _band(ax, layers, c[f"{variable}_lo"].sel(segment=seg), c[f"{variable}_hi"].sel(segment=seg),
                  st["color"], alpha=0.15)
    _bands_marked(ax, bands)
    ax.set_xlabel("decoder layer (lens after the block)")
    ax.set_ylabel(LABELS.get(variable, variable))
    _legend(ax, SHADED, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(alpha=0.3)
    return fig


def crystallization_histogram(curves: dict[str, xr.Dataset], segments: Sequence[str] = ("think", "answer"),
                              bands: dict | None = None) -> PaperFigure:
    """Where tokens crystallize: share of tokens per crystallization layer, per model and segment."""
    first = next(iter(curves.values()))
    bands = default_bands(first) if bands is None else bands
    caption = ("Share of tokens per crystallization layer (the layer from which the logit lens keeps the final "
               f"prediction), per model, for {_words(segments)} tokens; legend: mean crystallization layer. "
               "Shares, no interval." + _band_sentence(bands))
    fig = new_figure((4 * len(segments), 3.2), caption, layout="constrained")
    axes = fig.subplots(1, len(segments), sharey=True, squeeze=False)
    for ax, seg in zip(axes[0], segments):
        n = len(curves)
        for m, (label, c) in enumerate(curves.items()):
            layers = c["layer"].values
            width = 0.8 / n
            ax.bar(layers + (m - (n - 1) / 2) * width, c["layer_histogram"].sel(segment=seg), width=width,
                   color=LINE_COLOURS[m], hatch=("", "//", "..")[m % 3], label=f"{label} (mean "
                   f"{float(c['mean_crystallization_layer'].sel(segment=seg)):.2f})")
        _bands_marked(ax, bands)
        ax.set_title(f"{seg} tokens", fontsize=9)
        ax.set_xlabel("crystallization layer")
        ax.legend(frameon=False, fontsize=8, loc="center left")
    axes[0][0].set_ylabel("share of tokens")
    return fig


def transplant_effects(effects: xr.Dataset, metric: str = "accuracy") -> PaperFigure:
    """Change of ``metric`` when a band of layers routes with the other model's routers: one dot per (band,
    direction) with its 95% paired interval, directions in words.

    ``effects`` has dims ``band`` and ``direction`` and variables ``<metric>_delta``, ``_lo``, ``_hi``.
    """
    ylabel, interval = TRANSPLANT.get(metric, (f"change in {metric}", "95% paired interval"))
    directions = list(effects["direction"].values)
    words = [DIRECTIONS.get(str(d), str(d)) for d in directions]
    caption = (f"Router transplant: {ylabel.replace(chr(10), ' ')} when the routers of one band of layers are "
               f"swapped ({'; '.join(words)}), against the unmodified model; whiskers: {interval}. Zero: no change.")
    fig = new_figure((6, 3.4), caption, layout="constrained")
    ax = fig.subplots()
    bands = [str(b) for b in effects["band"].values]
    x = np.arange(len(bands))
    width = 0.5 / max(1, len(directions) - 1) if len(directions) > 1 else 0.0
    for i, (d, word) in enumerate(zip(directions, words)):
        sel = effects.sel(direction=d)
        est = sel[f"{metric}_delta"].values
        err = np.clip(np.nan_to_num(np.vstack([est - sel[f"{metric}_delta_lo"].values,
                                               sel[f"{metric}_delta_hi"].values - est])), 0, None)
        st = _style(i)
        ax.errorbar(x + (i - (len(directions) - 1) / 2) * width, est, yerr=err, ls="none", capsize=3,
                    color=st["color"], marker=st["marker"], markersize=6, label=word)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(x, [f"layers {b}" for b in bands])
    ax.set_xlim(-0.6, len(bands) - 0.4)
    ax.set_xlabel("band of layers whose routers are swapped")
    ax.set_ylabel(ylabel)
    _legend(ax, f"whiskers: {interval}")
    ax.grid(alpha=0.3, axis="y")
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


def _grid_axes(n_tokens: int, n_layers: int, caption: str):
    fig = new_figure((min(2.0 + 0.62 * n_tokens, 40), min(max(3.5, 1.5 + 0.3 * n_layers), 30)), caption,
                     layout="constrained")
    return fig, fig.add_subplot()


def _label_grid(ax, labels: list[str], layers: np.ndarray, segments: np.ndarray) -> None:
    ax.set_xticks(range(len(labels)), [lab[:10] for lab in labels], rotation=90, fontsize=7)
    step = max(1, len(layers) // 16)
    ax.set_yticks(range(0, len(layers), step), [str(int(v)) for v in layers[::step]], fontsize=7)
    ax.set_xlabel("input token (think and answer tokens in bold)")
    ax.set_ylabel("layer (0 = first block's output)")
    for tick, seg in zip(ax.get_xticklabels(), segments):
        if seg in ("think", "answer"):
            tick.set_fontweight("bold")


def logit_lens_grid(ds: xr.Dataset, tokenizer=None, *, sequence: int = 0, max_tokens: int = 24,
                    cell_text: bool = True) -> PaperFigure:
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
    fig, ax = _grid_axes(seq.sizes["token"], seq.sizes["layer"],
                         f"Logit lens on sequence {sequence}: for each input token (x) and layer (y), the token the "
                         f"lens after that layer predicts next (cell text) and the log-probability it gives the "
                         f"actual next token (colour; white: no next token). One sequence, no interval.")
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
    return fig


def expert_grid(ds: xr.Dataset, tokenizer=None, *, sequence: int = 0, max_tokens: int = 24,
                cell_text: bool = True) -> PaperFigure:
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
    colours = colormaps["tab20" if n_experts > 10 else "tab10"].colors
    cmap = ListedColormap([colours[i % len(colours)] for i in range(n_experts)])
    fig, ax = _grid_axes(seq.sizes["token"], seq.sizes["layer"],
                         f"Top-1 expert of each input token (x) in each MoE layer (y), sequence {sequence}: colour "
                         f"and cell text name the expert, with its routing weight in percent. One sequence, no "
                         f"interval.")
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
    return fig


def router_effect_by_layer(table: dict, bands: dict | None = None, null: dict | None = None) -> PaperFigure:
    """Relative router-logit change per layer: router term (fixed input), input term and total, 95% intervals;
    grey: the range of uniform random router updates (the calibration). ``table``: ``findings["decomposition"]``."""
    caption = ("Relative router-logit change per decoder layer, split exactly into the router term (the RL router "
               "on the base model's input), the input term (the base router on the changed input) and the total; "
               "shaded: 95% bootstrap interval over sequences."
               + (f" Grey: the noise floor, the range of the router term under {null['k']} uniform random router "
                  f"updates of the same relative size." if null else " No noise floor was computed.")
               + _band_sentence(bands))
    fig = new_figure((6, 3.4), caption, layout="constrained")
    ax = fig.subplots()
    layers = np.asarray(table["layer"])
    for i, (effect, label) in enumerate((("router", "router term ||dW x̄|| (fixed input)"),
                                         ("input", "input term ||W̄ dx||"), ("total", "total"))):
        v = table["rel_change"][effect]
        st = _style(i)
        ax.plot(layers, np.asarray(v["value"], float), label=label, **st)
        _band(ax, layers, np.asarray(v["lo"], float), np.asarray(v["hi"], float), st["color"])
    if null:
        ax.fill_between(layers, null["min"], null["max"], color="0.6", alpha=0.35, lw=0,
                        label=f"noise floor: random router updates ({null['k']} draws, range)")
    _bands_marked(ax, bands)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("relative router-logit change")
    _legend(ax, SHADED, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(alpha=0.3)
    return fig


def router_share_by_layer(table: dict, bands: dict | None = None) -> PaperFigure:
    """Share of the router-logit change made by the router term and by the input term per layer (they add up to 1
    exactly), 95% intervals."""
    caption = ("Share of the router-logit change made by the router term and by the input term per decoder layer "
               "(an exact split: they add up to 1); whiskers: 95% bootstrap interval over sequences."
               + _band_sentence(bands))
    fig = new_figure((6, 3.2), caption, layout="constrained")
    ax = fig.subplots()
    layers = np.asarray(table["layer"])
    for i, effect in enumerate(("router", "input")):
        v = table["share"][effect]
        est = np.asarray(v["value"], float)
        err = np.clip(np.vstack([est - np.asarray(v["lo"], float), np.asarray(v["hi"], float) - est]), 0, None)
        ax.bar(layers + (i - 0.5) * 0.4, est, width=0.4, yerr=np.nan_to_num(err), capsize=2,
               color=LINE_COLOURS[i], hatch=("", "//")[i], label=f"{effect} term")
    _bands_marked(ax, bands)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("share of the router-logit change")
    _legend(ax, WHISKERS)
    ax.grid(alpha=0.3, axis="y")
    return fig


def settling_curves(curves: dict, first_upper: int | None = None, groups: Sequence[str] = ("think", "answer"),
                    random_init: dict | None = None) -> PaperFigure:
    """Share of tokens settled by each stream (E = embedding, then each block), base solid and RL dashed, with 95%
    intervals; the share that settles only at the output is printed in the legend (it is no settling layer).
    ``random_init``: the random-weights baseline's think curve (``curves["think"]`` of ``random_init_numbers``),
    drawn grey and dotted as the floor."""
    caption = ("Share of tokens whose logit-lens prediction has settled by each stream (E: the embedding; i: after "
               "block i), base model solid, RL model dashed, per token group; shaded: 95% bootstrap interval over "
               "sequences (BCa); legend: the share settling only at the output."
               + (" Grey dotted: the same architecture with random weights (the floor a trained model must clear)."
                  if random_init and "random_init" in random_init else " No noise floor (a per-model measure).")
               + ("" if first_upper is None else
                  f" Dotted line: boundary between the lower and the upper band (blocks {first_upper} and later)."))
    fig = new_figure((6, 3.4), caption, layout="constrained")
    ax = fig.subplots()
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
        _bands_marked(ax, {"lower": [first_upper - 1], "upper": [first_upper]})
    ticks = np.asarray(next(iter(curves.values()))["stream"])
    ax.set_xticks(ticks, ["E" if t < 0 else str(t) for t in ticks])
    ax.set_xlabel("stream (E: embedding; i: after block i)")
    ax.set_ylabel("share settled by this stream")
    ax.set_ylim(0, 1)
    if ax.get_legend_handles_labels()[0]:
        _legend(ax, SHADED + " (BCa)", fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def control_bars(controls: dict) -> PaperFigure:
    """Relative router-logit change at fixed input (router term) and input term, lower and upper band: RL next to
    random-direction updates of RL's own per-tensor norm (routers only, all but routers, everything; mean of the
    draws, whiskers: range) and, when run, the SFT control at RL's norm."""
    caption = ("Relative router-logit change at fixed input (router term, left) and input term (right) in the "
               "lower and the upper band: the RL update next to random-direction updates with the RL update's own "
               f"norm per tensor (routers only, all but routers, everything); bars: mean of {controls['k']} draws, "
               "whiskers: their range (the controls' spread; the RL bar is one measurement)"
               + ("; SFT: the base fine-tuned on the RL model's think text, its update scaled to RL's norm per tensor."
                  if "sft" in controls else "."))
    fig = new_figure((8, 3.2), caption, layout="constrained")
    axes = fig.subplots(1, 2, sharey=False)
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
            ax.bar(x, vals, width=0.4, yerr=err, capsize=2, color=LINE_COLOURS[j], hatch=("", "//")[j],
                   label=f"{band} band")
        ax.set_xticks(np.arange(len(names)), labels, fontsize=7)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(frameon=False, fontsize=8, title=f"whiskers: range of {controls['k']} draws", title_fontsize=7)
    return fig
