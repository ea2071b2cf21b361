"""Reliability: nothing silently wrong, nothing of the user's lost (issue 18's probes, one test per row).

Damaged checkpoints are named and skipped by every reader; outputs never replace a user's files, never share a
temporary name and never have two writers; recordings need their checksums; storage behaves like xarray; inputs are
checked before any expensive work.
"""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import adt_probe
from adt_probe.outputs import LOCK, OutputBusyError, OutputError, check_not_inputs, exclusive_lock, unique_tmp
from adt_probe.testing import synthetic_recording
from analyses import checkpoints, record_pair, trajectory, weights
from analyses.reproduce import Plan, final_checkpoint, run_dir
from rl.data.items import load_items, write_items
from rl.data.prompts import MAX_NEW_TOKENS
from rl.evaluate import PreflightError, check_fits, evaluate
from rl.evaluate import main as eval_main
from rl.train import checkpoint as ckpt
from rl.train import grpo

ROOT = Path(__file__).parents[1]


def flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def save_model(folder: Path, model, processor, manifest: bool = True) -> Path:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if manifest:
        ckpt.write_manifest(folder, 0)
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_organism, processor):
    return save_model(tmp_path_factory.mktemp("base") / "model", tiny_organism, processor)


@pytest.fixture
def run(tmp_path, tiny_organism, processor):
    """A run folder with checkpoints at steps 1 and 2 (written by the trainer's own save), the newest damaged."""
    root = tmp_path / "demo" / "runs" / "seed-0" / "checkpoints"  # where reproduce --out demo trains its first seed
    opt = torch.optim.AdamW(tiny_organism.parameters())
    for step in (1, 2):
        ckpt.save_checkpoint(root, ckpt.TrainerState(step=step), tiny_organism, processor, opt)
    flip_bit(root / "step-000002" / "model.safetensors")
    (root.parent / "config.json").write_text("{}\n")  # the run config the trainer writes beside its checkpoints
    return root.parent


@pytest.fixture
def recordings(tmp_path, items):
    """An ``adt-probe record`` folder's sequences (items and completions) for two items."""
    folder = tmp_path / "recordings"
    write_items(items[:2], folder / "items.jsonl")
    (folder / "completions.jsonl").write_text("".join(
        f'{{"id": "{it.id}", "completion": "<think>a tone</think><answer>A</answer>"}}\n' for it in items[:2]))
    return folder


# --- 1. damaged checkpoints -----------------------------------------------------------------------------------------

def test_record_names_a_damaged_checkpoint_before_loading_it(base, tmp_path, tiny_organism, processor, items):
    rl = save_model(tmp_path / "rl", tiny_organism, processor)
    flip_bit(rl / "model.safetensors")  # one flipped bit in the weights: still loadable, silently wrong
    with pytest.raises(ckpt.CheckpointError, match=r"rl: verification failed: model\.safetensors differs from what "
                                                   r"was written \(sha256 mismatch\)"):
        record_pair.record_pair(base, rl, items[:2], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything ran or was written


def test_corrupt_newest_checkpoint_is_skipped_by_reproduce_trajectory_and_compare(run, base, recordings, tmp_path,
                                                                                  caplog):
    step1 = run / "checkpoints" / "step-000001"
    plan = Plan.make(str(tmp_path / "demo"), quick=True)
    assert run_dir(plan) == run and final_checkpoint(plan) == step1  # reproduce
    assert checkpoints.model_folder(run) == step1  # record / weights / transplant / decompose given the run folder
    weights.run(base, run, tmp_path / "weights")
    result = trajectory.run(run, base, recordings, tmp_path / "trajectory", n_boot=10)
    assert result["steps"] == [0, 1]
    assert "skipping checkpoint" in caplog.text
    assert "step-000002 (step 2): model.safetensors differs" in caplog.text


def test_truncated_safetensors_names_the_path(tmp_path, tiny_organism, processor):
    with_manifest = save_model(tmp_path / "a", tiny_organism, processor)
    st = with_manifest / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(ckpt.CheckpointError, match=r"a: verification failed: model\.safetensors has \d+ bytes, the "
                                                   r"manifest says \d+"):
        checkpoints.model_folder(with_manifest)
    own = save_model(tmp_path / "own", tiny_organism, processor, manifest=False)
    with pytest.raises(ckpt.CheckpointError, match=r"own: verification failed: no manifest\.json.*--allow-unverified"):
        checkpoints.model_folder(own)
    assert checkpoints.model_folder(own, allow_unverified=True) == own
    st = own / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(ckpt.CheckpointError, match=r"own: verification failed: model\.safetensors: \d+ bytes, its "
                                                   r"header describes \d+ \(truncated"):
        checkpoints.model_folder(own, allow_unverified=True)


def test_allow_unverified_warns(tmp_path, tiny_organism, processor, caplog):
    own = save_model(tmp_path / "own", tiny_organism, processor, manifest=False)
    checkpoints.model_folder(own, allow_unverified=True)
    assert "has no manifest.json: its files cannot be verified" in caplog.text


# --- 2. user files never deleted or overwritten ---------------------------------------------------------------------

def test_save_never_deletes_a_users_folder(tmp_path):
    ds = synthetic_recording()
    target = tmp_path / "u.zarr"
    (target / "sub").mkdir(parents=True)
    (target / "thesis.txt").write_text("three years")
    (target / "sub" / "results.csv").write_text("1,2")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match=r"u\.zarr exists and was not written by adt_probe\.save "
                                              r"\(sub/results\.csv, thesis\.txt\)"):
            adt_probe.save(ds, target, overwrite=overwrite)
    assert (target / "thesis.txt").read_text() == "three years" and (target / "sub" / "results.csv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary, no lock left


def test_save_replaces_its_own_output_and_foreign_files_only_on_request(tmp_path):
    ds = synthetic_recording(seed=1)
    store = adt_probe.save(synthetic_recording(seed=0), tmp_path / "r.zarr")
    adt_probe.save(ds, store)  # its own earlier output
    np.testing.assert_array_equal(adt_probe.open(store).router_logits.values, ds.router_logits.values)
    foreign = tmp_path / "data.nc"
    foreign.write_bytes(b"the user's own netCDF")
    with pytest.raises(OutputError, match=r"data\.nc exists and was not written by adt_probe\.save.*overwrite=True"):
        adt_probe.save(ds, foreign)
    assert foreign.read_bytes() == b"the user's own netCDF"
    adt_probe.save(ds, foreign, overwrite=True)
    assert adt_probe.open(foreign).sizes == ds.sizes


def test_record_out_refuses_a_folder_of_user_files(base, tmp_path, items):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("three years")
    with pytest.raises(OutputError, match=r"mine is not empty and was not written by adt-probe record \(it holds "
                                          r"thesis\.txt\).*--overwrite to replace only"):
        record_pair.record_pair(base, base, items[:2], out)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.txt"]


def test_record_never_writes_into_the_input_datas_folder(base, tmp_path, items):
    data = write_items(items[:2], tmp_path / "data" / "items.jsonl")
    wavs = {p: p.read_bytes() for p in (tmp_path / "data").rglob("*.wav")}
    assert wavs
    loaded = load_items(data)
    for out in (tmp_path / "data", tmp_path / "data" / "out"):
        with pytest.raises(OutputError, match=r"overlaps the input data in .*data"):
            record_pair.record_pair(base, base, loaded, out, data=data, overwrite=True)
    assert all(p.read_bytes() == b for p, b in wavs.items()) and not (tmp_path / "data" / "out").exists()


def test_an_output_folder_above_the_inputs_is_refused_only_where_it_would_write_over_them(tmp_path):
    run = tmp_path / "demo" / "runs" / "seed-0"
    run.mkdir(parents=True)
    check_not_inputs(tmp_path / "demo", [run], writes=["recordings", "eval_*.json"])  # writes beside it: fine
    with pytest.raises(OutputError, match="overlaps the input data"):
        check_not_inputs(tmp_path / "demo", [run], writes=["runs"])
    with pytest.raises(OutputError, match="overlaps the input data"):
        check_not_inputs(run / "out", [run], writes=["recordings"])


def test_record_overwrite_replaces_only_what_it_writes(base, tmp_path, items):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("three years")
    paths = record_pair.record_pair(base, base, items[:2], out, overwrite=True, max_new_tokens=6, batch_size=2)
    assert (out / "thesis.txt").read_text() == "three years"
    assert adt_probe.open(paths["rl"]).sizes["token"] > 0
    again = record_pair.record_pair(base, base, items[:2], out, max_new_tokens=6, batch_size=2)  # its own output now
    assert again["rl"] == paths["rl"]


# --- 3. two writers, one path ---------------------------------------------------------------------------------------

def test_a_second_writer_gets_a_clear_error(tmp_path):
    ds = synthetic_recording()
    target = tmp_path / "r.zarr"
    first = exclusive_lock(tmp_path / ".r.zarr.lock", str(target))  # what a first save holds while it writes
    with first, pytest.raises(OutputBusyError, match=r"r\.zarr is being written by another process right now"):
        adt_probe.save(ds, target)
    adt_probe.save(ds, target)
    assert unique_tmp(target) != unique_tmp(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zarr"]


def test_a_second_writer_in_another_process_is_refused(tmp_path):
    """A real second process tries to save while this one holds the target's lock."""
    target = tmp_path / "r.nc"
    code = ("import adt_probe, sys\nfrom adt_probe.testing import synthetic_recording\n"
            "try:\n    adt_probe.save(synthetic_recording(), sys.argv[1])\n"
            "except adt_probe.OutputBusyError as e:\n    print(e); sys.exit(7)\n")
    with exclusive_lock(tmp_path / ".r.nc.lock", str(target)):
        proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 7, proc.stderr[-2000:]
    assert "being written by another process" in proc.stdout and not target.exists()


def test_two_trainings_into_one_out(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    first = exclusive_lock(out / LOCK, f"the training run in {out}")  # the first run, still going
    with first, pytest.raises(OutputBusyError, match=r"the training run in .*run is being written by another process"):
        grpo.main(["--config", str(ROOT / "rl" / "configs" / "smoke.toml"), "--out", str(out)])
    assert not (out / "log.jsonl").exists() and not (out / "checkpoints").exists()


# --- 6. checksums, storage, preflight -------------------------------------------------------------------------------

def test_open_requires_the_checksum_file(tmp_path):
    ds = synthetic_recording()
    nc = adt_probe.save(ds, tmp_path / "r.nc")
    sidecar = tmp_path / "r.nc.sha256.json"
    sidecar.unlink()
    with pytest.raises(adt_probe.SchemaError, match=r"no checksum file r\.nc\.sha256\.json.*verify=False"):
        adt_probe.open(nc)
    assert adt_probe.open(nc, verify=False).sizes == ds.sizes
    sidecar.write_text("{not json")
    with pytest.raises(adt_probe.SchemaError, match=r"r\.nc\.sha256\.json: the checksum file is not valid JSON"):
        adt_probe.open(nc)
    store = adt_probe.save(ds, tmp_path / "r.zarr")
    (store / "adt_probe_checksums.json").unlink()
    with pytest.raises(adt_probe.SchemaError, match=r"no checksum file adt_probe_checksums\.json"):
        adt_probe.open(store)


def test_lazy_recordings_group_filter_select_and_save(tmp_path):
    ds = synthetic_recording(n_sequences=4, seq_len=8)
    lazy = adt_probe.open(adt_probe.save(ds, tmp_path / "r.zarr"))
    assert lazy.router_logits.chunks is not None and lazy.sequence.chunks is None
    means = lazy.lens_logprob.groupby("segment").mean()
    np.testing.assert_allclose(means.values, ds.lens_logprob.groupby("segment").mean().values, rtol=1e-6)
    assert lazy.where(lazy.sequence == 2, drop=True).sizes["token"] == 8
    assert lazy.sel(layer=1).router_logits.shape == (32, ds.sizes["expert"])
    lazy.load().to_zarr(tmp_path / "copy.zarr")
    adt_probe.open(tmp_path / "r.zarr").to_netcdf(tmp_path / "copy.nc", engine="h5netcdf")


def test_a_half_written_store_is_refused_naming_what_is_missing(tmp_path):
    store = adt_probe.save(synthetic_recording(), tmp_path / "r.zarr")
    (store / "router_logits" / ".zarray").unlink()
    with pytest.raises(adt_probe.SchemaError, match=r"incomplete zarr store: router_logits/ has no \.zarray"):
        adt_probe.open(store, verify=False)
    for f in (".zgroup", ".zmetadata"):
        (store / f).unlink()
    with pytest.raises(adt_probe.SchemaError, match=r"incomplete zarr store: no \.zgroup or zarr\.json"):
        adt_probe.open(store, verify=False)


def test_a_full_disk_while_saving_nc_keeps_the_old_file(tmp_path):
    """The file-size limit makes every write past 200 kB fail as a full disk would (EFBIG instead of ENOSPC)."""
    old = adt_probe.save(synthetic_recording(seed=0), tmp_path / "r.nc")
    before = old.read_bytes()
    code = ("import resource, signal, sys\nimport adt_probe\nfrom adt_probe.testing import synthetic_recording\n"
            "ds = synthetic_recording(n_sequences=64, seq_len=64, seed=1)\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
            "try:\n    adt_probe.save(ds, sys.argv[1])\nexcept OSError as e:\n    print(e); sys.exit(9)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(old)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 9, proc.stderr[-2000:]  # a clean error, not a crash
    assert "r.nc failed (File too large); nothing was changed: the previous r.nc is as it was" in proc.stdout
    assert old.read_bytes() == before and adt_probe.open(old).sizes["token"] == 256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.nc", "r.nc.sha256.json"]


def test_unwritable_output_fails_before_any_work(base, tmp_path, items):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match=r"file/out: cannot write there"):
        record_pair.record_pair(base, base, items[:2], blocker / "out")
    with pytest.raises(OutputError, match=r"cannot write there"):
        eval_main(["--out", str(blocker / "report.json"), "--judge", "none", "--n-per-cell", "1"])


def test_a_clip_past_the_context_is_refused_naming_the_item(tiny_organism, processor, items):
    long = dataclasses.replace(items[0], id="ten-minutes", audio=np.zeros(16_000 * 600, np.float32))
    with pytest.raises(PreflightError, match=r"1 of 2 items do not fit the model's context of 512 tokens with "
                                             rf"{MAX_NEW_TOKENS} new tokens \(ten-minutes: \d+ prompt tokens "
                                             r"\(600 s of audio\)\)"):
        evaluate(tiny_organism, processor, [items[1], long], judge=None)
    check_fits(tiny_organism, processor, items[:3], max_new_tokens=MAX_NEW_TOKENS)  # ordinary clips fit


def test_an_empty_dataset_is_refused(tmp_path, base):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(PreflightError, match=r"empty\.jsonl: no items to evaluate \(an empty dataset\)"):
        eval_main(["--data", str(empty), "--judge", "none"])
    with pytest.raises(PreflightError, match=r"empty\.jsonl: no items"):
        record_pair.heldout(1, 0, str(empty))
    with pytest.raises(PreflightError, match="no items"):
        record_pair.record_pair(base, base, [], tmp_path / "out")
