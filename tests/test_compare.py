"""``adt-probe compare`` end to end on tiny organisms, and its clear errors for inputs that cannot be compared."""

import json

import numpy as np
import pytest

from adt_probe.weights import random_update
from analyses import verdicts
from analyses.compare import CompareInputError, compare

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def rl_dir(tmp_path_factory, tiny_organism, processor):
    """The tiny organism with every weight changed a little (an 'RL' checkpoint of the same architecture)."""
    path = tmp_path_factory.mktemp("tiny_rl") / "model"
    random_update(tiny_organism, part="all", rel=0.05, seed=1).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def run(base, rl, items, out, **kw):
    opts = {"n_nulls": 2, "n_boot": 50, "max_new_tokens": 8, "batch_size": 16, "allow_unverified": True, **kw}
    return compare(base, rl if isinstance(rl, list) else [rl], items, out, **opts)


def test_compare_writes_findings_figures_and_report(tiny_dir, rl_dir, items, tmp_path):
    f = run(tiny_dir, [rl_dir, rl_dir], items[:10], tmp_path / "cmp")
    written = json.loads((tmp_path / "cmp" / "findings.json").read_text())
    assert written["stamp"]["rules_hash"] == verdicts.RULES_HASH
    for name in ("upper_routers", "crystallization"):
        v = written["verdicts"][name]
        assert v["verdict"] in verdicts.VERDICTS and v["rule"] == verdicts.RULES[name] and v["numbers"]
    assert written["routers"]["ratio"]["n_runs"] == 2  # two runs: the hierarchical interval
    assert len(written["routers"]["ratio"]["per_run_intervals"]) == 2
    assert "mirror" in written and "controls" in written
    sft = written["controls"]["sft"]  # auto: on for a model this small
    assert sft["max_rel_error"] < 1e-5 and {"rel_router", "topk_change_router", "ratio_rel_router"} <= set(sft)
    floor = written["crystallization"]["random_init"]
    assert {"upper_share", "rl_minus_random_upper_share", "curves", "seed"} <= set(floor)
    assert "mirror" in written and "random_init" not in written["mirror"]["crystallization"]
    tuned = written["crystallization"]["tuned_lens"]  # auto: on for a model this small
    n_layers = written["crystallization"]["n_layers"]
    for m in tuned["models"].values():
        assert len(m["heldout_kl_logit"]) == len(m["heldout_kl_tuned"]) == n_layers and m["heldout_tokens"] > 0
        assert m["heldout_kl_tuned"][-1] == m["heldout_kl_logit"][-1]  # the last block is the output: no translator
    assert {"upper_share_rl", "upper_share_base", "delta_upper_share"} <= set(tuned)
    assert written["decomposition"]["max_residual"] < 1e-10
    for fig in written["figures"].values():
        assert {p.rsplit(".", 1)[1] for p in fig} == {"png", "pdf"}
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert verdicts.RULES_HASH in report and verdicts.UPPER_ROUTERS_RULE in report
    assert "random weights" in report and "SFT on RL's think text" in report and "tuned lens trained per" in report
    assert f["verdicts"]["upper_routers"]["verdict"] in report


def test_base_equal_to_rl_says_so_and_nothing_is_shown(tiny_dir, items, tmp_path, caplog):
    # the reference chains teacher-forced: think tokens to measure although the random tiny model writes none
    f = run(tiny_dir, tiny_dir, items[:10], tmp_path / "same", source="reference")
    assert "exactly the weights of the base" in caplog.text
    assert f["warnings"] and "exactly the weights" in f["warnings"][0]
    assert {v["verdict"] for v in f["verdicts"].values()} == {"not shown"}
    table = f["decomposition"]
    for name in ("rel_change", "topk_change", "top1_flip", "js"):
        values = np.asarray(table[name]["total"]["value"], float)
        assert np.all(np.nan_to_num(values) == 0), name
    assert f["crystallization"]["delta_upper_share"]["value"] == 0
    # the random-init floor is a different network: its settling differs from the (equal) trained models'
    floor = f["crystallization"]["random_init"]["curves"]["think"]
    assert floor["n_tokens"] > 0 and np.any(np.asarray(floor["delta"]["value"]) != 0)


def test_different_architectures_are_refused(tiny_dir, tokenizer, processor, items, tmp_path):
    from rl import organism

    deeper = tmp_path / "deeper"
    organism.build_model(tokenizer, seed=0, num_hidden_layers=3).save_pretrained(deeper)
    processor.save_pretrained(deeper)
    with pytest.raises(CompareInputError, match="cannot be compared.*differ in"):
        run(tiny_dir, deeper, items[:4], tmp_path / "x")


def test_different_tokenizers_are_refused(tiny_dir, tiny_organism, items, tmp_path):
    from rl.organism import load_processor

    other = tmp_path / "other_tok"
    tiny_organism.save_pretrained(other)
    load_processor().save_pretrained(other)  # the shipped organism's tokenizer, not the tiny one's
    with pytest.raises(CompareInputError, match="different tokenizers"):
        run(tiny_dir, other, items[:4], tmp_path / "x")


def test_reference_analysis_without_reference_chains_is_refused(tiny_dir, rl_dir, items, tmp_path):
    import dataclasses

    bare = [dataclasses.replace(it, reference_chain=None) for it in items[:4]]
    with pytest.raises(CompareInputError, match="no reference_chain.*--source rl"):
        run(tiny_dir, rl_dir, bare, tmp_path / "x", source="reference")


def test_the_command_line_reports_a_bad_pair_in_one_line(tiny_dir, tiny_organism, items, tmp_path):
    from analyses.cli import main
    from rl.data.items import write_items
    from rl.organism import load_processor

    other = tmp_path / "other_tok"
    tiny_organism.save_pretrained(other)
    load_processor().save_pretrained(other)
    write_items(items[:4], tmp_path / "items.jsonl")
    with pytest.raises(SystemExit, match="adt-probe compare: .*different tokenizers"):
        main(["compare", "--base", str(tiny_dir), "--rl", str(other), "--data", str(tmp_path / "items.jsonl"),
              "--out", str(tmp_path / "o"), "--allow-unverified"])


def test_settling_numbers_on_known_streams_with_user_token_labels():
    """Hand-made settling streams: shares, the output-only bin, the paired difference and user-given token groups."""
    from types import SimpleNamespace

    from analyses.compare import crystallization_numbers

    n_layers, per_seq = 4, 4  # streams -1 (embedding) .. 2; 3 = only at the output
    seq = np.repeat(np.arange(10), per_seq)
    base = np.tile([-1.0, 0.0, 2.0, 3.0], 10)  # settled: E, block 0, block 2 (upper), output only
    rl = np.tile([-1.0, 2.0, 2.0, 3.0], 10)  # one more token settles in the upper band
    info = {"sequence": seq, "segment": np.array(["think"] * len(seq)), "token_id": np.arange(len(seq)) % per_seq,
            "output_rank": np.zeros(len(seq), int), "base_output_rank": np.zeros(len(seq), int), "n_layers": n_layers}
    items = [SimpleNamespace(family="f", difficulty="easy")] * 10

    def labels(tokenizer, token_ids, segments):
        return np.where(token_ids == 1, "my_group", np.where(token_ids == 2, "other", ""))

    f = crystallization_numbers([base], [rl], [info], items, tokenizer=object(), token_labels=labels, n_boot=100)
    assert f["upper_share_rl"]["value"] == pytest.approx(2 / 3)
    assert f["upper_share_base"]["value"] == pytest.approx(1 / 3)
    assert f["delta_upper_share"]["value"] == pytest.approx(1 / 3)
    think = f["curves"]["think"]
    assert think["stream"] == [-1, 0, 1, 2]
    assert think["base"]["value"] == pytest.approx([0.25, 0.5, 0.5, 0.75])
    assert think["never_settled"]["rl"]["value"] == pytest.approx(0.25)
    mine = f["curves"]["my_group"]
    assert mine["n_tokens"] == 10 and mine["delta"]["value"] == pytest.approx([0, -1, -1, 0])
    content = f["curves"]["content (all groups)"]  # the union of both groups: half settle by block 0 in the base
    assert content["n_tokens"] == 20 and content["base"]["value"] == pytest.approx([0, 0.5, 0.5, 1])
    assert content["rl"]["value"] == pytest.approx([0, 0, 0, 1])
    v = verdicts.crystallization(f["upper_share_rl"], f["delta_upper_share"], n_sequences=f["n_sequences"])
    assert v["verdict"] == "reproduces"  # every sequence moves the same way: a degenerate, exact interval


def small_streams(seed: int = 3, n_layers: int = 4, n_seq: int = 12):
    """Random settling streams of two models over ``n_seq`` sequences of 2-5 tokens (a few tokens left out)."""
    rng = np.random.default_rng(seed)
    seq = np.repeat(np.arange(n_seq), rng.integers(2, 6, n_seq))
    base = rng.integers(-1, n_layers, len(seq)).astype(float)
    rl = np.minimum(base + rng.integers(0, 2, len(seq)), n_layers - 1)
    keep = np.arange(len(seq)) % 5 != 0
    return base, rl, seq, keep


def test_settling_curves_are_scipys_bca_over_sequences():
    """Every stream's share and paired difference: value and BCa limits equal scipy.stats.bootstrap's, computed
    directly from per-sequence counts (the same seed draws the same resamples)."""
    from scipy.stats import bootstrap

    from adt_probe.crystallize import settling_curves

    n_layers = 4
    base, rl, seq, keep = small_streams(n_layers=n_layers)
    got = settling_curves(base, rl, seq, keep, n_layers, n_boot=300, seed=4)
    ids = np.unique(seq[keep])
    count = np.array([np.sum(keep & (seq == i)) for i in ids], float)
    for j, s in enumerate(got["stream"]):
        nb, nr = (np.array([np.sum((m <= s) & keep & (seq == i)) for i in ids], float) for m in (base, rl))
        def share(num, idx):
            return num[idx].sum(-1) / count[idx].sum(-1)

        # the difference as a difference of shares (as the curves compute it): the data are discrete, so resamples
        # tie with the estimate and BCa's bias correction sees the last bit of rounding
        for name, stat in (("base", lambda idx, axis=-1, nb=nb: share(nb, idx)),
                           ("delta", lambda idx, axis=-1, nb=nb, nr=nr: share(nr, idx) - share(nb, idx))):
            ref = bootstrap((np.arange(len(ids)),), stat, n_resamples=300, method="BCa", vectorized=True,
                            random_state=np.random.default_rng(4))
            assert got[name]["value"][j] == pytest.approx(stat(np.arange(len(ids))))
            assert got[name]["lo"][j] == pytest.approx(ref.confidence_interval.low, rel=1e-9), (name, s)
            assert got[name]["hi"][j] == pytest.approx(ref.confidence_interval.high, rel=1e-9), (name, s)
            assert got[name]["n_nan"][j] == 0
    assert got["never_settled"]["rl"]["value"] == pytest.approx(np.mean(rl[keep] == n_layers - 1))
    assert got["method"] == "BCa bootstrap over sequences" and got["n_sequences"] == len(ids)


def test_settling_curves_resample_within_strata():
    """Two strata settling at opposite ends: stratified intervals are much narrower and say so."""
    from adt_probe.crystallize import settling_curves

    n_layers, n_seq = 4, 20
    seq = np.repeat(np.arange(n_seq), 3)
    base = np.where(seq < 10, -1.0, 2.0)  # half the sequences settle at the embedding, half in the last block
    rl = base.copy()
    keep = np.ones(len(seq), bool)
    strata = np.repeat(["easy", "hard"], 10)
    plain = settling_curves(base, rl, seq, keep, n_layers, n_boot=500, seed=0)
    strat = settling_curves(base, rl, seq, keep, n_layers, n_boot=500, seed=0, strata=strata)
    assert "stratified" in strat["method"]
    width = {name: np.subtract(c["base"]["hi"], c["base"]["lo"])[0] for name, c in (("p", plain), ("s", strat))}
    assert width["p"] > 0.3 and width["s"] == pytest.approx(0.0, abs=1e-12)
    assert strat["base"]["value"] == pytest.approx([0.5, 0.5, 0.5, 1.0])


@pytest.fixture(scope="module")
def think_inputs(processor, items):
    """Six items' reference chains teacher-forced (think tokens although the tiny model writes none)."""
    from analyses.compare import reference_texts
    from analyses.sequences import teacher_forced_inputs

    return teacher_forced_inputs(processor, items[:6], reference_texts(items[:6]))


def test_random_init_baseline_is_seeded_and_differs_from_the_model(tiny_organism, think_inputs, tokenizer):
    import torch

    from analyses.compare import random_init, settling_of

    a, b = random_init(tiny_organism, 10_000), random_init(tiny_organism, 10_000)
    pairs = list(zip(tiny_organism.parameters(), a.parameters(), b.parameters()))
    assert all(torch.equal(x, y) for _, x, y in pairs)  # seeded
    assert not all(torch.equal(m, x) for m, x, _ in pairs)  # not the model's weights
    mine, _ = settling_of(tiny_organism, think_inputs, tokenizer=tokenizer)
    floor, _ = settling_of(a, think_inputs, tokenizer=tokenizer)
    assert mine.shape == floor.shape and np.any(mine != floor)


def test_sft_control_has_rls_update_norm_per_tensor(tiny_organism, think_inputs, tokenizer):
    import torch

    from adt_probe.weights import update_norms
    from analyses.sft_control import sft_control, sft_finetune

    rl = random_update(tiny_organism, part="all", rel=0.05, seed=1)
    model, info = sft_control(tiny_organism, rl, think_inputs, tokenizer=tokenizer, steps=3, batch_size=3)
    want, got = update_norms(tiny_organism, rl), update_norms(tiny_organism, model)
    matched = [n for n in want if n not in info["unmatched"]]
    assert len(matched) > 0.5 * len(want)
    for n in matched:
        assert got[n] == pytest.approx(want[n], rel=1e-5), n
    assert all(got[n] == 0 for n in info["unmatched"]) and info["max_rel_error"] < 1e-5
    # the direction is the fine-tuning's: same update up to a positive scale per tensor
    tuned = sft_finetune(tiny_organism, think_inputs, tokenizer=tokenizer, steps=3, batch_size=3)
    theirs, ctrl = dict(tuned.named_parameters()), dict(model.named_parameters())
    moved = [(n, p) for n, p in tiny_organism.named_parameters() if n in matched and want[n] > 0]
    for n, p in moved[:8]:
        cos = torch.nn.functional.cosine_similarity((theirs[n] - p).detach().flatten().double(),
                                                    (ctrl[n] - p).detach().flatten().double(), dim=0)
        assert float(cos) > 0.999, n
    assert all(p.grad is None for p in tiny_organism.parameters())  # the base is left untouched


def test_tuned_lens_reading_is_the_logit_lens_reading_before_training(tiny_organism, think_inputs, tokenizer,
                                                                       items):
    # an untrained tuned lens is the identity: its shares must be the logit lens's, number for number
    from analyses.compare import crystallization_numbers, settling_of, tuned_lens_numbers

    rl = random_update(tiny_organism, part="all", rel=0.05, seed=1)
    tuned = tuned_lens_numbers(tiny_organism, rl, think_inputs, items[:6], tokenizer=tokenizer, steps=0, n_boot=50)
    (b, b_info) = settling_of(tiny_organism, think_inputs, tokenizer=tokenizer)
    (r, r_info) = settling_of(rl, think_inputs, tokenizer=tokenizer)
    logit = crystallization_numbers([b], [r], [{**r_info, "base_output_rank": b_info["output_rank"]}], items[:6],
                                    token_labels=None, n_boot=50)
    for key in ("upper_share_rl", "upper_share_base", "delta_upper_share"):
        assert np.isfinite(tuned[key]["value"]) and tuned[key] == logit[key], key
    for m in tuned["models"].values():
        assert m["heldout_kl_tuned"] == m["heldout_kl_logit"]


def test_tuned_lens_of_a_model_against_itself_moves_nothing(tiny_organism, think_inputs, tokenizer, items):
    import torch

    from analyses.compare import tuned_lens_numbers

    before = [p.detach().clone() for p in tiny_organism.parameters()]
    t = tuned_lens_numbers(tiny_organism, tiny_organism, think_inputs, items[:6], tokenizer=tokenizer, steps=20,
                           n_boot=50)
    assert t["delta_upper_share"]["value"] == 0
    assert t["models"]["base"] == t["models"]["rl"]  # same model, same seed: the same lens
    kl = t["models"]["base"]
    assert np.mean(kl["heldout_kl_tuned"][:-1]) < np.mean(kl["heldout_kl_logit"][:-1])  # 20 steps already help
    assert all(torch.equal(a, p) for a, p in zip(before, tiny_organism.parameters()))
    assert all(p.grad is None for p in tiny_organism.parameters())
