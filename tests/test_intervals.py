"""Interval functions of ``adt_probe.stats``: BCa (scipy), stratified, hierarchical, Wilson, paired proportions,
and the transplant's teacher-forced outcomes."""

import numpy as np
import pytest
from scipy import stats as sps

from adt_probe.stats import bca_interval, bca_intervals, hierarchical_interval, paired_proportions, wilson


def mean_of(sums):
    return sums[..., 0] / sums[..., 1]


def test_bca_matches_scipy_on_a_plain_mean():
    x = np.random.default_rng(0).gamma(2.0, size=40)
    got = bca_interval(np.stack([x, np.ones_like(x)], 1), mean_of, n_boot=2000, seed=1)
    ref = sps.bootstrap((x,), np.mean, n_resamples=2000, method="BCa", random_state=np.random.default_rng(1))
    assert got["value"] == pytest.approx(x.mean())
    assert got["lo"] == pytest.approx(ref.confidence_interval.low, rel=0.03)
    assert got["hi"] == pytest.approx(ref.confidence_interval.high, rel=0.03)
    assert got["n_nan"] == 0 and got["method"].startswith("BCa")


def test_nan_replicates_are_counted_not_dropped_silently():
    # one sequence carries every token of the denominator: resamples without it are 0 / 0
    per_seq = np.array([[1.0, 1.0]] + [[0.0, 0.0]] * 9)
    got = bca_interval(per_seq, mean_of, n_boot=500, seed=0)
    assert 0 < got["n_nan"] < 500


def test_identical_models_give_a_degenerate_interval_not_nan():
    per_seq = np.array([[2.0, 2.0, 2.0, 2.0]] * 12)
    got = bca_interval(per_seq, lambda s: s[..., 0] / s[..., 1] - s[..., 2] / s[..., 3], n_boot=200)
    assert (got["value"], got["lo"], got["hi"]) == (0.0, 0.0, 0.0)


def test_stratified_resampling_keeps_strata_sizes():
    # two strata with very different means: a stratified interval is narrower than an unstratified one
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0, 0.1, 20), rng.normal(10, 0.1, 20)])
    per_seq, strata = np.stack([x, np.ones_like(x)], 1), np.repeat(["a", "b"], 20)
    plain = bca_interval(per_seq, mean_of, n_boot=1000, seed=0)
    strat = bca_interval(per_seq, mean_of, n_boot=1000, seed=0, strata=strata)
    assert strat["hi"] - strat["lo"] < 0.2 * (plain["hi"] - plain["lo"])
    assert strat["lo"] <= strat["value"] <= strat["hi"] and "stratified" in strat["method"]


def test_hierarchical_interval_widens_with_run_to_run_spread():
    rng = np.random.default_rng(3)
    runs = [np.stack([rng.normal(mu, 0.1, 30), np.ones(30)], 1) for mu in (0.0, 1.0, 2.0)]
    h = hierarchical_interval(runs, mean_of, n_boot=500, seed=0)
    assert h["n_runs"] == 3 and h["per_run"] == pytest.approx([r[:, 0].mean() for r in runs])
    assert h["hi"] - h["lo"] > 1.0  # the runs disagree by 2; sequence noise alone would give ~0.05


def test_wilson_is_scipys():
    w = wilson(7, 20)
    ci = sps.binomtest(7, 20).proportion_ci(method="wilson")
    assert (w["lo"], w["hi"]) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_paired_proportions_have_width_without_discordant_pairs_and_flip_sign():
    a = np.array([True] * 15 + [False] * 5)
    same = paired_proportions(a, a)
    assert same["value"] == 0 and same["lo"] < 0 < same["hi"] and same["mcnemar_p"] == 1.0
    # at one half Newcombe's interval collapses to [0, 0] (the proportions are perfectly correlated): 60 items
    # without a discordant pair cannot rule out a change of 6 points
    half = paired_proportions(np.arange(60) % 2 == 0, np.arange(60) % 2 == 0)
    assert (half["lo"], half["hi"]) == (pytest.approx(-wilson(0, 60)["hi"]), pytest.approx(wilson(0, 60)["hi"]))
    assert half["hi"] > 0.05
    b = a.copy()
    b[15:19] = True  # four items become right, none wrong
    up, down = paired_proportions(a, b), paired_proportions(b, a)
    assert up["value"] == pytest.approx(0.2) and up["discordant"] == [0, 4]
    assert (up["lo"], up["hi"]) == (pytest.approx(-down["hi"]), pytest.approx(-down["lo"]))
    assert up["mcnemar_p"] == pytest.approx(sps.binomtest(0, 4).pvalue)
    assert 0 < up["lo"] < 0.2 < up["hi"]


def test_transplanting_identical_routers_changes_nothing_on_rl_completions(tiny_organism, processor, items):
    from adt_probe.weights import random_update
    from analyses.compare import reference_texts
    from analyses.sequences import teacher_forced_inputs
    from analyses.transplant import continuous_effects, teacher_forced_outcomes

    rl = random_update(tiny_organism, part="others", rel=0.05, seed=0)  # routers untouched
    inputs = teacher_forced_inputs(processor, items[:3], reference_texts(items[:3]))
    out = teacher_forced_outcomes(rl, tiny_organism, inputs, [[0], [1]], tokenizer=processor.tokenizer)
    assert out["sequence"].size > 0
    effects = continuous_effects(out, [[0], [1]], n_boot=50)
    for (direction, band, metric), ci in effects.items():
        assert ci["value"] == 0.0, (direction, band, metric)  # same routers swapped in: exactly no change
    assert np.all(out["rl"]["kl_to_rl"] == 0) and np.all(out["base"]["kl_to_rl"] > 0)


def test_several_statistics_share_resamples_and_each_equals_its_own_bca():
    # three ratios at once (a settling curve's streams, say), one with NaN replicates: each as bca_interval alone
    rng = np.random.default_rng(5)
    per_seq = np.column_stack([rng.random(15), rng.random(15), np.r_[1.0, np.zeros(14)], np.ones(15)])
    both = bca_intervals(per_seq, lambda s: s[..., :3] / np.stack([s[..., 3], s[..., 3], s[..., 2]], -1),
                         n_boot=400, seed=2)
    for j, got in enumerate(both):
        den = 2 if j == 2 else 3
        alone = bca_interval(per_seq, lambda s, j=j, den=den: s[..., j] / s[..., den], n_boot=400, seed=2)
        assert got == pytest.approx(alone, nan_ok=True)
    assert both[2]["n_nan"] > 0 and both[0]["n_nan"] == 0
