"""Checkpoints of a GRPO run: a Hugging Face model folder plus the trainer state for an exact resume.

Layout (``OUT/checkpoints/step-000012/``)::

    config.json, model.safetensors, generation_config.json   model.save_pretrained: from_pretrained / load_organism
    tokenizer.json, tokenizer_config.json, processor_config.json, chat_template.jinja   processor.save_pretrained
    trainer_state/state.json           step, stage, stage_step, data position, mined item ids, scheduler state,
                                       run config, world size (JSON)
    trainer_state/optimizer.json       optimizer param groups and non-tensor state (JSON)
    trainer_state/optimizer.safetensors  optimizer tensors, keys "state.<param index>.<name>"
    trainer_state/rng-rank<r>.json     python and numpy RNG states of process r
    trainer_state/rng-rank<r>.safetensors  torch CPU (and CUDA) RNG states of process r
    manifest.json                      sha256 and size of every other file; written last

No pickle anywhere: tensors go to safetensors, everything else to JSON. A checkpoint is written into
``checkpoints/.tmp-step-000012`` and renamed into place once complete, so a name ``step-NNNNNN`` always means a whole
checkpoint; :func:`find_latest` additionally verifies the manifest's checksums and skips (with a log line) any
checkpoint that fails, so a corrupted file is never resumed from.

This module is the one checkpoint contract: training resumes through :func:`find_latest`, and every command that
reads a run or a model folder (``adt-probe record``, ``trajectory``, ``reproduce``, ``weights``, ``transplant``,
``decompose``) goes through :func:`complete_checkpoints`, :func:`find_latest` or :func:`check_model_folder` (via
``analyses.checkpoints``), which name the file and the check that failed. File hashing is
``adt_probe.integrity``'s, shared with recordings.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import struct
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from adt_probe.integrity import check_manifest, file_manifest

FORMAT = "adt-probe-grpo-checkpoint/1"
NAME_RE = re.compile(r"^step-(\d{6,})$")
TMP_PREFIX = ".tmp-"
MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint or model folder failed verification; the message names the folder, the file and the check."""


def checkpoint_name(step: int) -> str:
    """``step-000012``: zero-padded so names sort by step."""
    return f"step-{step:06d}"


@dataclass
class TrainerState:
    """Where a run stands: what is needed, with the optimizer, scheduler and RNG states, to continue exactly.

    step : GRPO steps done over the whole run (all stages).
    stage : index of the current stage in ``config.stages``.
    stage_step : steps done within that stage (== its ``steps`` at a stage-end checkpoint).
    data_position : the prompt stream's state (``{"epoch": e, "position": p}``), None before the stage starts.
    mined_item_ids : ids of the items curriculum mining selected for the current stage (None if not mined).
    scheduler : the learning-rate scheduler's ``state_dict()`` (plain numbers).
    config : the run config (for the record; a resume warns if it changed).
    world_size : processes of the run that wrote it.
    """

    step: int = 0
    stage: int = 0
    stage_step: int = 0
    data_position: dict | None = None
    mined_item_ids: list[str] | None = None
    scheduler: dict | None = None
    config: dict = field(default_factory=dict)
    world_size: int = 1


# --- files and checksums -------------------------------------------------------------------------------------------

def replace_dir(tmp: Path, final: Path, old: Path | None = None) -> None:
    """Move a completely written folder ``tmp`` to ``final``; an existing ``final`` is swapped out first (to
    ``old``) and deleted only once the new one is in place, so a crash never leaves neither."""
    if final.exists():
        old = old or final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def write_manifest(folder: Path, step: int) -> None:
    """``folder/manifest.json``: sha256 and size of every file below ``folder`` (relative POSIX paths)."""
    _write_json(folder / MANIFEST, {"format": FORMAT, "step": step,
                                    "files": file_manifest(folder, exclude=(MANIFEST,))})


def verify_files(folder: Path) -> str | None:
    """None if ``folder/manifest.json`` is readable and every file it lists matches; else the reason it does not.

    Serves checkpoints and the organism's folder alike (both list ``files: {path: {sha256, bytes}}``).
    """
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return f"no {MANIFEST} (incomplete, or not written by adt-probe)"
    try:
        files = json.loads(manifest.read_text())["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not a table")
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable {MANIFEST} ({type(exc).__name__}: {exc})"
    return check_manifest(folder, files)


def verify(folder: Path) -> str | None:
    """None if ``folder`` is a complete checkpoint whose files match the manifest; else the reason it is not."""
    if (problem := verify_files(folder)) is not None:
        return problem
    files = json.loads((folder / MANIFEST).read_text())["files"]
    if not (folder / "trainer_state" / "state.json").is_file() or "trainer_state/state.json" not in files:
        return "no trainer_state/state.json"
    return None


def checkpoints_dir(run_or_root: Path) -> Path:
    """The folder holding ``step-NNNNNN`` checkpoints: ``RUN/checkpoints`` for a run folder, else the folder itself."""
    run_or_root = Path(run_or_root)
    return run_or_root / "checkpoints" if (run_or_root / "checkpoints").is_dir() else run_or_root


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step-NNNNNN`` folder under ``root`` (a run folder or its ``checkpoints``),
    oldest first (temp folders never listed; nothing verified: see :func:`complete_checkpoints`)."""
    root = checkpoints_dir(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := NAME_RE.match(p.name))]
    return sorted(found)


def complete_checkpoints(root: Path, log: Callable[[str], None] = print) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint under ``root`` that verifies, oldest first; each skipped one is reported
    through ``log`` with the file and the check that failed."""
    good = []
    for step, path in list_checkpoints(root):
        reason = verify(path)
        if reason is None:
            good.append((step, path))
        else:
            log(f"skipping checkpoint {path} (step {step}): {reason}")
    return good


def find_latest(root: Path, log: Callable[[str], None] = print) -> Path | None:
    """The newest checkpoint under ``root`` that verifies; each skipped one is reported through ``log``."""
    for step, path in reversed(list_checkpoints(root)):
        reason = verify(path)
        if reason is None:
            return path
        log(f"skipping checkpoint {path} (step {step}): {reason}")
    return None


def check_safetensors(path: Path) -> str | None:
    """None if the safetensors file ``path`` is as long as its header says; else what is wrong (a truncated or
    foreign file), so a damaged file is named before a loader fails on it with a message that names no path."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size:
                return f"{path.name}: header length {n} exceeds the file ({size} bytes): truncated or not safetensors"
            header = json.loads(f.read(n))
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        return f"{path.name}: unreadable safetensors header ({type(exc).__name__}); truncated or not safetensors"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if size != 8 + n + end:
        return f"{path.name}: {size} bytes, its header describes {8 + n + end} (truncated or altered)"
    return None


def check_model_folder(folder: Path, *, allow_unverified: bool = False,
                       log: Callable[[str], None] = print) -> Path:
    """Check a model folder (a checkpoint, the organism, or a user's own model) before anything loads it.

    With a ``manifest.json`` every file it lists must match (size and sha256). Without one the folder cannot be
    verified: an error, unless ``allow_unverified`` (a user's own model), which logs a warning; either way every
    ``*.safetensors`` file must be as long as its header says.

    Raises
    ------
    FileNotFoundError : no such folder.
    CheckpointError : a file is missing, truncated or altered, or (without ``allow_unverified``) there is no
        manifest; the message names the folder, the file and the check.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    if (folder / MANIFEST).is_file() or not allow_unverified:
        problem = verify_files(folder)
        if problem is not None:
            hint = (" Pass --allow-unverified (allow_unverified=True) to load a model folder of your own that has no "
                    "manifest." if not (folder / MANIFEST).is_file() else " The file was changed or damaged after it "
                    "was written: use another checkpoint, or train or copy it again.")
            raise CheckpointError(f"{folder}: verification failed: {problem}.{hint}")
    else:
        log(f"warning: {folder} has no {MANIFEST}: its files cannot be verified against checksums "
            "(--allow-unverified); only the safetensors files' lengths are checked")
    for st in sorted(folder.glob("*.safetensors")):
        if (problem := check_safetensors(st)) is not None:
            raise CheckpointError(f"{folder}: verification failed: {problem}")
    return folder


def resolve(path: Path, *, allow_unverified: bool = False, log: Callable[[str], None] = print) -> Path:
    """A model folder ready to load: ``path`` itself (checked with :func:`check_model_folder`), or for a run
    folder (one holding ``checkpoints/step-NNNNNN`` or ``step-NNNNNN``) its newest complete checkpoint.

    Raises
    ------
    CheckpointError : a run folder with no checkpoint that verifies, or a model folder that fails its check.
    """
    path = Path(path)
    if list_checkpoints(path):  # a model folder never holds step-NNNNNN folders (a run folder has a config.json too)
        latest = find_latest(path, log)
        if latest is None:
            raise CheckpointError(f"{path}: a run folder with no complete checkpoint (every step-NNNNNN failed "
                                  "verification, see above)")
        return latest
    return check_model_folder(path, allow_unverified=allow_unverified, log=log)


def remove_temp_dirs(root: Path, log: Callable[[str], None] = print) -> None:
    """Delete half-written ``.tmp-*`` folders a crash left behind (they are never loaded)."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX):
                log(f"removing incomplete checkpoint {p.name} (left by an interrupted save)")
                shutil.rmtree(p, ignore_errors=True)


# --- optimizer and RNG state as safetensors + JSON -----------------------------------------------------------------

def optimizer_state_to_files(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer ``state_dict()`` into tensors (for safetensors) and JSON; inverse of the loader."""
    tensors, scalars = {}, {}
    for pid, st in state_dict["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars, "tuple_keys": ["betas"]}


def optimizer_state_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The optimizer ``state_dict()`` back from :func:`optimizer_state_to_files`'s tensors and JSON."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, st in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(st)
    groups = [{k: tuple(v) if k in meta["tuple_keys"] and isinstance(v, list) else v for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """This process's RNG states: torch CPU / CUDA as tensors, python and numpy as JSON."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    return tensors, {"python": [version, list(mt), gauss], "numpy": np_state}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only if CUDA is available)."""
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, mt, gauss = meta["python"]
    random.setstate((version, tuple(mt), gauss))
    np_state = dict(meta["numpy"])
    np_state["state"] = dict(np_state["state"], key=np.array(np_state["state"]["key"], dtype=np.uint32))
    np.random.set_state(np_state)


# --- save and load -------------------------------------------------------------------------------------------------

def save_checkpoint(root: Path, state: TrainerState, model, processor, optimizer, *, keep_last: int = 0,
                    keep: Collection[int] = (), rank: int = 0, is_main: bool = True,
                    barrier: Callable[[], None] = lambda: None) -> Path:
    """Write ``root/step-NNNNNN`` atomically and prune to the newest ``keep_last`` (0: keep all); the steps in
    ``keep`` (e.g. the ends of a training's phases, to branch from) are never pruned.

    Every process calls this (each writes its own RNG state); ``barrier`` synchronises them (accelerator's
    ``wait_for_everyone``). ``model`` is the unwrapped model; ``optimizer`` the torch optimizer.

    Returns
    -------
    pathlib.Path of the checkpoint folder.
    """
    name = checkpoint_name(state.step)
    tmp, final = root / (TMP_PREFIX + name), root / name
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "trainer_state").mkdir(parents=True)
    barrier()
    tensors, meta = rng_state()
    save_file(tensors, str(tmp / "trainer_state" / f"rng-rank{rank}.safetensors"))
    _write_json(tmp / "trainer_state" / f"rng-rank{rank}.json", meta)
    barrier()
    if is_main:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        opt_tensors, opt_meta = optimizer_state_to_files(optimizer.state_dict())
        save_file(opt_tensors, str(tmp / "trainer_state" / "optimizer.safetensors"))
        _write_json(tmp / "trainer_state" / "optimizer.json", opt_meta)
        _write_json(tmp / "trainer_state" / "state.json", asdict(state))
        write_manifest(tmp, state.step)  # last: its presence marks the folder complete
        replace_dir(tmp, final, old=root / (TMP_PREFIX + "old-" + name))
        if keep_last > 0:
            for step, path in list_checkpoints(root)[:-keep_last]:
                if step not in keep:
                    shutil.rmtree(path, ignore_errors=True)
    barrier()
    return final


def load_trainer_state(folder: Path) -> TrainerState:
    """The :class:`TrainerState` of the checkpoint ``folder`` (JSON only; nothing else is touched)."""
    return TrainerState(**json.loads((folder / "trainer_state" / "state.json").read_text()))


def restore(folder: Path, optimizer=None, *, rank: int = 0, log: Callable[[str], None] = print) -> None:
    """Load ``optimizer`` (if given) from ``folder`` and restore this process's RNG states.

    Call it after everything else is set up, right before the next step, so nothing consumes random numbers between
    the restore and the sampling. If the checkpoint has no RNG state for ``rank`` (it was written by fewer
    processes) the RNG is left as it is and a line says the run is not an exact continuation.
    """
    ts = folder / "trainer_state"
    if optimizer is not None:
        meta = json.loads((ts / "optimizer.json").read_text())
        optimizer.load_state_dict(optimizer_state_from_files(load_file(str(ts / "optimizer.safetensors")), meta))
    rng_file = ts / f"rng-rank{rank}.safetensors"
    if rng_file.is_file():
        set_rng_state(load_file(str(rng_file)), json.loads((ts / f"rng-rank{rank}.json").read_text()))
    else:
        log(f"{folder.name}: no RNG state for process {rank}; sampling continues from the current seed, "
            "so the run is not an exact continuation")
