"""Figures (``adt_probe.plot``): built outside pyplot (nothing left open, each displays once in a notebook),
captions instead of titles, the interval named in the legend, the band boundary marked, noise floors per segment,
PNG at 300 dpi beside the PDF. Synthetic Datasets: deterministic and fast."""

import json

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from PIL import Image

from adt_probe import plot

SEGMENTS = ["think", "answer", "all"]
LAYERS = np.arange(6)
MOE = np.array([False, True, True, True, True, True])  # layer 0 dense: bands are MoE layers 1-2 and 3-5
rng = np.random.default_rng(0)


def _with_ci(dims, shape, center=0.1):
    v = center + 0.01 * rng.random(shape)
    return {"": (dims, v), "_lo": (dims, v - 0.01), "_hi": (dims, v + 0.01)}


def drift_ds():
    data = {}
    for name in ("js", "top1_agreement", "noise_js"):
        data.update({f"{name}{s}": v for s, v in _with_ci(("segment", "layer"), (3, 6)).items()})
    for name in ("base_load", "rl_load", "load_shift"):
        data[name] = (("segment", "layer", "expert"), rng.random((3, 6, 4)) / 4)
    return xr.Dataset(data, coords={"segment": SEGMENTS, "layer": LAYERS, "expert": np.arange(4),
                                    "moe_layer": ("layer", MOE)})


def crystallization_ds():
    data = {f"lens_logprob{s}": v for s, v in _with_ci(("segment", "layer"), (3, 6), -2).items()}
    data["layer_histogram"] = (("segment", "layer"), np.full((3, 6), 1 / 6))
    data["mean_crystallization_layer"] = ("segment", [2.5, 3.0, 2.8])
    return xr.Dataset(data, coords={"segment": SEGMENTS, "layer": LAYERS, "moe_layer": ("layer", MOE)})


def interval(values):
    v = np.asarray(values, float)
    return {"value": v.tolist(), "lo": (v - 0.01).tolist(), "hi": (v + 0.01).tolist()}


def router_table():
    return {"layer": LAYERS.tolist(), "rel_change": {e: interval(rng.random(6)) for e in ("router", "input", "total")},
            "share": {"router": interval(np.full(6, 0.4)), "input": interval(np.full(6, 0.6))}}


def settling():
    stream = [-1, *LAYERS.tolist()]
    c = {"stream": stream, "base": interval(np.linspace(0, 1, 7)), "rl": interval(np.linspace(0, 0.9, 7)),
         "never_settled": {"base": {"value": 0.1}, "rl": {"value": 0.2}}}
    return {"think": c, "answer": c}


def controls():
    one = {"rel_router": {"lower": 0.1, "upper": 0.2}, "rel_input": {"lower": 0.3, "upper": 0.4}}
    return {"k": 2, "rl": one, **{n: {"draws": [one, one]} for n in ("routers", "others", "all")}}


def transplant_ds():
    v = np.array([[0.05, -0.1], [0.0, 0.2]])
    data = {"accuracy_delta": (("band", "direction"), v), "accuracy_delta_lo": (("band", "direction"), v - 0.1),
            "accuracy_delta_hi": (("band", "direction"), v + 0.1)}
    return xr.Dataset(data, coords={"band": ["1-2", "3-5"], "direction": ["rl <- base", "base <- rl"]})


def recording():
    n = 8
    return xr.Dataset(
        {"lens_top1": (("token", "layer"), rng.integers(0, 50, (n, 6))),
         "lens_logprob": (("token", "layer"), -rng.random((n, 6))),
         "topk_experts": (("token", "layer", "k"), rng.integers(0, 4, (n, 6, 2))),
         "topk_weights": (("token", "layer", "k"), np.full((n, 6, 2), 0.5))},
        coords={"sequence": ("token", np.zeros(n, int)), "position": ("token", np.arange(n)),
                "segment": ("token", ["prompt"] * 4 + ["think"] * 4), "token_id": ("token", np.arange(n)),
                "layer": LAYERS, "moe_layer": ("layer", MOE)}, attrs={"n_experts": 4})


BANDS = {"lower": [1, 2], "upper": [3, 4, 5]}
FIGURES = {  # name: (maker, layers on the x axis)
    "drift_by_layer": (lambda: plot.drift_by_layer(drift_ds(), "js", ["think", "answer"]), True),
    "drift_decomposition": (lambda: plot.drift_decomposition(xr.Dataset(
        {f"rel_change{s}": v for s, v in _with_ci(("segment", "layer", "effect"), (3, 6, 3)).items()},
        coords={"segment": SEGMENTS, "layer": LAYERS, "effect": ["router", "input", "total"]}), "rel_change",
        bands=BANDS), True),
    "expert_load": (lambda: plot.expert_load(drift_ds()), False),
    "router_weight_drift": (lambda: plot.router_weight_drift(xr.Dataset(
        {"rel_change": ("layer", rng.random(6)), "rel_change_other": ("layer", rng.random(6)),
         "rel_change_expert": (("layer", "expert"), rng.random((6, 4)))},
        coords={"layer": LAYERS, "moe_layer": ("layer", MOE)})), True),
    "drift_trajectory": (lambda: plot.drift_trajectory(xr.Dataset(
        {f"js{s}": v for s, v in _with_ci(("step", "segment", "layer"), (3, 3, 6)).items()},
        coords={"step": [0, 10, 20], "segment": SEGMENTS, "layer": LAYERS, "moe_layer": ("layer", MOE)})), False),
    "crystallization_curves": (lambda: plot.crystallization_curves(
        {"base": crystallization_ds(), "RL": crystallization_ds()}), True),
    "crystallization_histogram": (lambda: plot.crystallization_histogram(
        {"base": crystallization_ds(), "RL": crystallization_ds()}), True),
    "transplant_effects": (lambda: plot.transplant_effects(transplant_ds()), False),
    "logit_lens_grid": (lambda: plot.logit_lens_grid(recording()), False),
    "expert_grid": (lambda: plot.expert_grid(recording()), False),
    "router_effect_by_layer": (lambda: plot.router_effect_by_layer(
        router_table(), BANDS, {"min": np.zeros(6), "max": np.full(6, 0.05), "k": 3}), True),
    "router_share_by_layer": (lambda: plot.router_share_by_layer(router_table(), BANDS), True),
    "settling_curves": (lambda: plot.settling_curves(settling(), first_upper=3), True),
    "control_bars": (lambda: plot.control_bars(controls()), False),
}
INTERNAL = ("router_logits", "lens_logprob", "lens_kl_final", "noise_js", "rel_change", "top1_agreement", "_lo",
            "_hi", "rl <- base", "base <- rl")


def _texts(fig):
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_text()]


def _legend_titles(fig):
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
    return [lg.get_title().get_text() for lg in legends]


def test_every_plot_function_is_covered():
    public = {n for n in dir(plot) if not n.startswith("_") and callable(getattr(plot, n))
              and getattr(getattr(plot, n), "__module__", "") == plot.__name__}
    assert public - {"save", "new_figure", "default_bands", "PaperFigure"} == set(FIGURES)


@pytest.mark.parametrize("name", list(FIGURES))
def test_figures_are_made_outside_pyplot_and_render(name):
    plt.close("all")
    make, layers_on_x = FIGURES[name]
    fig = make()
    assert isinstance(fig, Figure) and isinstance(fig.canvas, FigureCanvasAgg)
    assert plt.get_fignums() == []  # nothing in pyplot's registry: a notebook shows the returned figure once
    assert fig._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"
    # a caption, not a title; no internal variable names anywhere on the figure
    assert len(fig.caption) > 40 and fig.caption.endswith(".")
    assert fig.get_suptitle() == ""
    assert not [t for t in _texts(fig) if any(word in t for word in INTERNAL)], _texts(fig)
    # the Okabe-Ito yellow is never a line
    assert not [ln for ax in fig.axes for ln in ax.lines
                if matplotlib.colors.to_hex(ln.get_color()).lower() == "#f0e442"]
    if layers_on_x:
        boundary = [ln for ax in fig.axes for ln in ax.lines if ln.get_gid() == "band_boundary"]
        assert boundary and {"lower band", "upper band"} <= set(_texts(fig))
        assert "Dotted line" in fig.caption


@pytest.mark.parametrize("name", ["drift_by_layer", "crystallization_curves", "router_effect_by_layer",
                                  "settling_curves", "drift_trajectory"])
def test_the_legend_names_the_shaded_interval(name):
    fig = FIGURES[name][0]()
    assert any("shaded: 95% sequence-bootstrap interval" in t for t in _legend_titles(fig))
    assert "95% bootstrap interval over sequences" in fig.caption


@pytest.mark.parametrize("name", ["drift_decomposition", "router_share_by_layer"])
def test_the_legend_names_the_whiskers(name):
    assert "whiskers: 95% sequence-bootstrap interval" in _legend_titles(FIGURES[name][0]())


def test_drift_has_a_noise_floor_per_segment_and_the_boundary_between_the_moe_halves():
    fig = plot.drift_by_layer(drift_ds(), "js", ["think", "answer"])
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert {"noise floor, think", "noise floor, answer", "think tokens", "answer tokens"} <= set(labels)
    assert "noise floor of each segment" in fig.caption
    (boundary,) = [ln for ln in fig.axes[0].lines if ln.get_gid() == "band_boundary"]
    assert boundary.get_xdata()[0] == 2.5  # MoE layers 1-5: lower 1-2, upper 3-5
    without = plot.drift_by_layer(drift_ds().drop_vars(["noise_js", "noise_js_lo", "noise_js_hi"]), "js", ["all"])
    assert "No noise floor" in without.caption


def test_transplant_effects_are_dots_with_paired_intervals_and_directions_in_words():
    fig = plot.transplant_effects(transplant_ds())
    ax = fig.axes[0]
    assert not [p for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle)]  # no bars
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2
    assert ax.get_legend_handles_labels()[1] == ["base routers in the RL model", "RL routers in the base model"]
    assert "paired score interval" in _legend_titles(fig)[0]
    # the whiskers are the Dataset's interval: band "3-5", direction "base <- rl": 0.2 [0.1, 0.3]
    segments = bars[1].lines[2][0].get_segments()
    assert np.allclose(segments[1][:, 1], [0.1, 0.3])


def test_trajectory_is_small_multiples_one_panel_per_moe_layer():
    fig = FIGURES["drift_trajectory"][0]()
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 5  # the MoE layers 1-5
    assert {"layer 1 (lower)", "layer 5 (upper)"} <= set(_texts(fig))


def test_save_writes_png_at_300_dpi_beside_pdf_with_the_caption(tmp_path):
    fig = FIGURES["drift_by_layer"][0]()
    paths = plot.save(fig, tmp_path / "sub" / "drift_js")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)
    with Image.open(paths[0]) as image:
        assert np.allclose(image.info["dpi"], 300, atol=0.5)
        assert image.info["Description"] == fig.caption
        assert image.size[0] > 5 * 300  # 6 inches wide, less the trimmed margin
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert plt.get_fignums() == []


def test_training_figure_has_reward_apart_from_rates(tmp_path):
    from analyses.report import training_figure

    log = tmp_path / "log.jsonl"
    rows = [{"step": s, "stage": "stage1" if s < 3 else "stage2", "reward": 0.1 * s, "think_rate": 0.5,
             "accuracy": 0.05 * s} for s in range(6)]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    plt.close("all")
    paths, caption = training_figure(log, tmp_path / "training")
    from analyses.report import figure_caption

    assert figure_caption(paths[0]) == caption and figure_caption(tmp_path / "missing", "x") == "x"
    assert plt.get_fignums() == []
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    with Image.open(paths[0]) as image:
        assert np.allclose(image.info["dpi"], 300, atol=0.5)
        assert image.info["Description"] == caption
    assert "reward" in caption and "stage" in caption


def test_report_captions_come_from_the_figures(tmp_path):
    from analyses.report import _figure

    fig = FIGURES["drift_by_layer"][0]()
    paths = plot.save(fig, tmp_path / "figures" / "drift_js")
    md = _figure({"figures": {"drift_js": [str(p) for p in paths]}}, "drift_js", "short alt text", tmp_path)
    assert md.startswith("![short alt text](figures/drift_js.png)")
    assert f"*{fig.caption}*" in md and "95% bootstrap interval over sequences" in md and "noise floor" in md
