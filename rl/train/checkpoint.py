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
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

FORMAT = "adt-probe-grpo-checkpoint/1"
NAME_RE = re.compile(r"^step-(\d{6,})$")
TMP_PREFIX = ".tmp-"


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


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def write_manifest(folder: Path, step: int) -> None:
    """``folder/manifest.json``: sha256 and size of every file below ``folder`` (relative POSIX paths)."""
    files = {p.relative_to(folder).as_posix(): {"sha256": sha256(p), "bytes": p.stat().st_size}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json"}
    _write_json(folder / "manifest.json", {"format": FORMAT, "step": step, "files": files})


def verify(folder: Path) -> str | None:
    """None if ``folder`` is a complete checkpoint whose files match the manifest; else the reason it is not."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return "no manifest.json (incomplete)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as exc:
        return f"unreadable manifest.json ({exc})"
    for rel, meta in files.items():
        p = folder / rel
        if not p.is_file():
            return f"missing file {rel}"
        if p.stat().st_size != meta["bytes"]:
            return f"size mismatch in {rel}"
        if sha256(p) != meta["sha256"]:
            return f"checksum mismatch in {rel}"
    if not (folder / "trainer_state" / "state.json").is_file() or "trainer_state/state.json" not in files:
        return "no trainer_state/state.json"
    return None


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step-NNNNNN`` folder under ``root``, oldest first (temp folders never listed)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := NAME_RE.match(p.name))]
    return sorted(found)


def find_latest(root: Path, log: Callable[[str], None] = print) -> Path | None:
    """The newest checkpoint under ``root`` that verifies; each skipped one is reported through ``log``."""
    for step, path in reversed(list_checkpoints(root)):
        reason = verify(path)
        if reason is None:
            return path
        log(f"skipping checkpoint {path.name} (step {step}): {reason}")
    return None


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
                    rank: int = 0, is_main: bool = True, barrier: Callable[[], None] = lambda: None) -> Path:
    """Write ``root/step-NNNNNN`` atomically and prune to the newest ``keep_last`` (0: keep all).

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
            for _, path in list_checkpoints(root)[:-keep_last]:
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
