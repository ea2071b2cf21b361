"""Gating drift and crystallization: exact divergences, bounded top-k estimates, planted effects recovered."""

import copy

import distributed
import numpy as np
import pytest
import torch
import xarray as xr
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy
from transformers import Qwen3MoeForCausalLM

import adt_probe
from adt_probe.crystallize import compare_crystallization, crystallization, crystallization_layer
from adt_probe.drift import DriftInputError, above_noise, gating_drift, rank_layers, router_probs, token_metrics
from adt_probe.testing import synthetic_recording, with_logits
from tests.helpers import tiny_moe


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_divergences_equal_scipy():
    a = synthetic_recording(n_sequences=3, seq_len=10, seed=0)
    b = synthetic_recording(n_sequences=3, seq_len=10, seed=1)
    b = b.assign_coords(token_id=a.token_id)
    metrics, source = token_metrics(a, b, "softmax")
    assert source == "router_logits"
    pa, pb = softmax(a.router_logits.values.astype(np.float64)), softmax(b.router_logits.values.astype(np.float64))
    for t in range(0, 30, 7):
        for layer in range(4):
            assert metrics["js"][t, layer] == pytest.approx(jensenshannon(pa[t, layer], pb[t, layer], base=2) ** 2,
                                                            abs=1e-9)
            assert metrics["kl"][t, layer] == pytest.approx(entropy(pa[t, layer], pb[t, layer]), abs=1e-9)
            assert metrics["entropy_delta"][t, layer] == pytest.approx(entropy(pb[t, layer]) - entropy(pa[t, layer]))
            sa, sb = set(a.topk_experts.values[t, layer]), set(b.topk_experts.values[t, layer])
            assert metrics["topk_jaccard"][t, layer] == pytest.approx(len(sa & sb) / len(sa | sb))


def test_topk_only_estimate_is_bounded_by_the_truncation():
    """sqrt(JS) is a metric, so |sqrt(JS(p~, q~)) - sqrt(JS(p, q))| <= sqrt(JS(p, p~)) + sqrt(JS(q, q~))."""
    a = synthetic_recording(n_sequences=4, seq_len=16, n_experts=16, top_k=4, seed=2, scale=3.0)
    b = synthetic_recording(n_sequences=4, seq_len=16, n_experts=16, top_k=4, seed=3, scale=3.0)
    full, _ = token_metrics(a, b, "softmax")
    topk, source = token_metrics(a.drop_vars("router_logits"), b.drop_vars("router_logits"), "softmax")
    assert source == "topk" and np.isnan(topk["kl"]).all()
    pa, _ = router_probs(a, "softmax")
    pa_k, _ = router_probs(a.drop_vars("router_logits"), "softmax")
    pb, _ = router_probs(b, "softmax")
    pb_k, _ = router_probs(b.drop_vars("router_logits"), "softmax")
    js = lambda p, q: jensenshannon(p, q, base=2, axis=-1) ** 2  # noqa: E731
    bound = np.sqrt(js(pa, pa_k)) + np.sqrt(js(pb, pb_k))
    assert (np.abs(np.sqrt(topk["js"]) - np.sqrt(full["js"])) <= bound + 1e-9).all()
    assert np.corrcoef(topk["js"].ravel(), full["js"].ravel())[0, 1] > 0.5  # and it tracks the full value


def test_bootstrap_resamples_sequences_and_covers_the_estimate():
    a = synthetic_recording(n_sequences=12, seq_len=20, seed=4)
    b = synthetic_recording(n_sequences=12, seq_len=20, seed=5).assign_coords(token_id=a.token_id)
    d = gating_drift(a, b, n_boot=300)
    covered = (d.js_lo <= d.js) & (d.js <= d.js_hi)
    assert covered.where(d.js.notnull(), True).all()  # segments without tokens are NaN
    assert d.attrs["n_sequences"] == 12 and d.attrs["distribution"] == "router_logits"
    # the "all" row is the token-weighted mean of the segments
    w = d.n_tokens.sel(segment=["user", "think", "answer", "other"])
    segs = d.js.sel(segment=["user", "think", "answer", "other"])
    np.testing.assert_allclose((segs * w).sum("segment") / w.sum(), d.js.sel(segment="all"), rtol=1e-9)
    # load shares sum to 1 over experts
    np.testing.assert_allclose(d.base_load.sel(segment="all").sum("expert"), 1.0, rtol=1e-9)


def test_mismatched_recordings_are_refused():
    a = synthetic_recording(seed=0)
    with pytest.raises(DriftInputError, match="token_id"):
        gating_drift(a, synthetic_recording(seed=1))
    with pytest.raises(DriftInputError, match="expert"):
        gating_drift(a, synthetic_recording(seed=0, n_experts=16))
    with pytest.raises(DriftInputError, match="tokens"):
        gating_drift(a, synthetic_recording(seed=0, n_sequences=3))


def test_streamed_zarr_equals_in_memory(tmp_path):
    a = synthetic_recording(n_sequences=6, seq_len=40, seed=6)
    b = with_logits(a, a.router_logits.values + np.random.default_rng(7).normal(0, 1, a.router_logits.shape))
    adt_probe.save(a, tmp_path / "a.zarr")
    adt_probe.save(b, tmp_path / "b.zarr")
    lazy = gating_drift(adt_probe.open(tmp_path / "a.zarr"), adt_probe.open(tmp_path / "b.zarr"), chunk_tokens=37,
                        n_boot=50)
    xr.testing.assert_allclose(lazy, gating_drift(a, b, n_boot=50), rtol=1e-9)


# --- planted effects in a real MoE model ---------------------------------------------------------------------------

def plant(model: Qwen3MoeForCausalLM, layers: list[int]) -> Qwen3MoeForCausalLM:
    """Copy ``model`` and redraw the routers of ``layers``. Their experts are made identical first (in both models),
    so a routing change there cannot change what the layer computes: drift downstream stays at the noise floor and
    the test isolates what the metric attributes to each layer."""
    for i in layers:
        experts = model.model.layers[i].mlp.experts
        with torch.no_grad():
            experts.gate_up_proj.copy_(experts.gate_up_proj[:1].expand_as(experts.gate_up_proj))
            experts.down_proj.copy_(experts.down_proj[:1].expand_as(experts.down_proj))
    rl = copy.deepcopy(model)
    with torch.no_grad():
        for i in layers:
            rl.model.layers[i].mlp.gate.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(100 + i))
    return rl


@pytest.mark.parametrize("planted", [[1, 4], [0], [5]])
def test_planted_router_changes_top_the_ranking_and_the_rest_stays_at_noise(planted):
    base = tiny_moe()
    rl = plant(base, planted)
    ids = torch.randint(0, 96, (16, 24), generator=torch.Generator().manual_seed(3))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    rec_base = adt_probe.record(base, inputs, routing="full", lens=None,
                                options=adt_probe.RecordOptions(batch_size=16))
    rec_base_again = adt_probe.record(base, inputs, routing="full", lens=None,
                                      options=adt_probe.RecordOptions(batch_size=5))  # another composition
    rec_rl = adt_probe.record(rl, inputs, routing="full", lens=None, options=adt_probe.RecordOptions(batch_size=16))
    d = gating_drift(rec_base, rec_rl, noise=(rec_base, rec_base_again), n_boot=200)
    assert sorted(rank_layers(d, "js")[: len(planted)]) == planted
    clears = above_noise(d, "js").values
    assert clears[planted].all()
    others = [i for i in range(6) if i not in planted]
    # Unplanted layers: numerically the same routing; their drift sits at the float noise of the noise pair.
    assert (d.js.sel(segment="all").values[others] <= d.noise_js_hi.sel(segment="all").values[others] + 1e-9).all()
    assert (d.top1_agreement.sel(segment="all").values[others] == 1).all()
    assert (d.top1_agreement.sel(segment="all").values[planted] < 0.7).all()


# --- crystallization -----------------------------------------------------------------------------------------------

def test_crystallization_layer_of_constructed_tokens():
    top1 = np.array([[5, 3, 7, 7, 7],    # settles at layer 2
                     [7, 7, 3, 7, 7],    # leaves and returns: layer 3
                     [1, 1, 1, 1, 1],    # from the start: layer 0
                     [1, 2, 3, 4, 9],    # only at the output: layer 4
                     [-1, 2, 2, 2, 2]])  # lens not computed: NaN
    np.testing.assert_array_equal(crystallization_layer(top1), [2, 3, 0, 4, np.nan])


def test_crystallization_summaries_recover_a_known_structure():
    ds = synthetic_recording(n_sequences=6, seq_len=8, n_layers=5, seed=8)
    n = ds.sizes["token"]
    known = np.where(ds.segment.values == "think", 4, 1)  # think tokens settle late, the rest early
    top1 = np.tile(np.arange(5) + 50, (n, 1))
    top1[np.arange(5)[None, :] >= known[:, None]] = 9
    ds["lens_top1"] = (("token", "layer"), top1)
    c = crystallization(ds, n_boot=100)
    np.testing.assert_array_equal(c.crystallization_layer.values, known)
    assert c.mean_crystallization_layer.sel(segment="think").item() == 4
    assert c.mean_crystallization_layer.sel(segment="user").item() == 1
    assert c.layer_histogram.sel(segment="think", layer=4).item() == 1
    rl = ds.copy()
    top1_rl = top1.copy()
    top1_rl[ds.segment.values == "think", 2:] = 9  # RL: think tokens settle at layer 2
    rl["lens_top1"] = (("token", "layer"), top1_rl)
    cmp = compare_crystallization(ds, rl, n_boot=100)
    assert cmp.delta_mean_layer.sel(segment="think").item() == -2
    assert cmp.delta_mean_layer.sel(segment="answer").item() == 0
    assert cmp.delta_mean_layer_hi.sel(segment="think").item() == -2  # no variance: a point interval


def test_band_contrast_sees_an_upper_band_effect_and_not_a_flat_one():
    a = synthetic_recording(n_sequences=10, seq_len=20, n_layers=6, seed=9)
    rng = np.random.default_rng(10)
    scale = np.array([0.1, 0.1, 0.1, 2.0, 2.0, 2.0])[None, :, None]  # upper layers move much more
    b = with_logits(a, a.router_logits.values + rng.normal(0, 1, a.router_logits.shape) * scale)
    c = adt_probe.band_contrast(a, b, lower=[0, 1, 2], upper=[3, 4, 5], n_boot=200)
    assert c["difference"]["lo"] > 0 and c["upper"]["value"] > c["lower"]["value"]
    flat = with_logits(a, a.router_logits.values + rng.normal(0, 1, a.router_logits.shape))
    c0 = adt_probe.band_contrast(a, flat, lower=[0, 1, 2], upper=[3, 4, 5], n_boot=200)
    assert c0["difference"]["lo"] < 0 < c0["difference"]["hi"]


def test_topk_kernel_equals_the_metrics_over_all_experts():
    """The streaming kernel's top-k path (sums over the union of the two top-k sets) against ``token_metrics``,
    with a dense layer and a token whose last slot is empty."""
    from adt_probe.drift import token_metrics, topk_token_metrics

    a = synthetic_recording(n_sequences=3, seq_len=20, n_layers=4, n_experts=16, top_k=4, full=False, seed=1)
    b = synthetic_recording(n_sequences=3, seq_len=20, n_layers=4, n_experts=16, top_k=4, full=False, seed=2)
    for ds in (a, b):
        ds["topk_experts"][:, 2] = -1  # a dense layer
        ds["topk_weights"][:, 2] = np.nan
    a["topk_experts"][5, 1, 3] = -1
    fast = topk_token_metrics(a, b)
    slow, source = token_metrics(a, b, "softmax")
    assert source == "topk"
    for name, values in slow.items():
        np.testing.assert_allclose(fast[name], values, rtol=1e-9, atol=1e-12, err_msg=name)


def test_users_own_segment_labels_group_drift_and_crystallization():
    labels = np.tile(np.repeat(["question", "think", "reasoning", "other"], 4), 6)
    a = synthetic_recording(n_sequences=6, seq_len=16, segments=labels, seed=1)
    b = synthetic_recording(n_sequences=6, seq_len=16, segments=labels, seed=2).assign_coords(token_id=a.token_id)
    drift = gating_drift(a, b, n_boot=50)
    assert list(drift.segment.values[-3:]) == ["question", "reasoning", "all"]
    assert int(drift.n_tokens.sel(segment="reasoning")) == 24
    mine = drift.js.sel(segment="question").values
    tokens = np.flatnonzero(labels == "question")
    direct = gating_drift(a.isel(token=tokens), b.isel(token=tokens), by=None, n_boot=0).js.sel(segment="all")
    np.testing.assert_allclose(mine, direct.values)
    cryst = adt_probe.crystallization(a, n_boot=20)
    assert "reasoning" in cryst.segment.values and int(cryst.n_tokens.sel(segment="question")) == 24


def test_blocks_on_workers_equal_the_in_process_result(tmp_path, monkeypatch):
    """The top-k streaming path: zarr read in store chunks (several blocks, sequences spanning blocks) equals the
    in-memory result, and so does the same computation on a thread pool and on worker processes (what a
    ``dask.distributed`` client runs), bit for bit."""
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
    from multiprocessing import get_context

    a = synthetic_recording(n_sequences=7, seq_len=30, n_layers=3, n_experts=16, top_k=4, full=False, seed=11)
    b = synthetic_recording(n_sequences=7, seq_len=30, n_layers=3, n_experts=16, top_k=4, full=False, seed=12)
    b = b.assign_coords(token_id=a.token_id)
    b["topk_experts"][:, 1] = -1  # a dense layer in both
    b["topk_weights"][:, 1] = np.nan
    a["topk_experts"][:, 1] = -1
    a["topk_weights"][:, 1] = np.nan
    adt_probe.save(a.chunk({"token": 64}), tmp_path / "a.zarr")
    adt_probe.save(b.chunk({"token": 64}), tmp_path / "b.zarr")
    la, lb = adt_probe.open(tmp_path / "a.zarr"), adt_probe.open(tmp_path / "b.zarr")
    assert la.topk_experts.chunks[0][0] == 64
    memory = gating_drift(a, b, n_boot=100, chunk_tokens=50)
    lazy = gating_drift(la, lb, n_boot=100, chunk_tokens=50)
    xr.testing.assert_allclose(lazy, memory, rtol=1e-12, atol=1e-15)
    monkeypatch.setattr("adt_probe.drift._IN_FLIGHT", 2)  # fewer blocks in flight than there are blocks
    with ThreadPoolExecutor(2) as pool:
        xr.testing.assert_identical(gating_drift(la, lb, n_boot=100, chunk_tokens=50, client=pool), lazy)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        xr.testing.assert_identical(gating_drift(la, lb, n_boot=100, chunk_tokens=50, client=pool), lazy)


def test_a_dask_cluster_computes_the_same_drift(tmp_path):
    a = synthetic_recording(n_sequences=5, seq_len=20, n_layers=2, n_experts=8, top_k=2, full=False, seed=13)
    b = synthetic_recording(n_sequences=5, seq_len=20, n_layers=2, n_experts=8, top_k=2, full=False, seed=14)
    b = b.assign_coords(token_id=a.token_id)
    adt_probe.save(a.chunk({"token": 32}), tmp_path / "a.zarr")
    adt_probe.save(b.chunk({"token": 32}), tmp_path / "b.zarr")
    la, lb = adt_probe.open(tmp_path / "a.zarr"), adt_probe.open(tmp_path / "b.zarr")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True) as cluster, \
            distributed.Client(cluster) as client:
        xr.testing.assert_identical(gating_drift(la, lb, n_boot=50, client=client), gating_drift(la, lb, n_boot=50))
