"""The bridge from runs and model folders to the analyses: every command reads checkpoints through here.

``adt_probe`` takes explicit checkpoint paths and does not know what a complete checkpoint is; the run's own contract
(``rl.train.checkpoint``: list, verify every file against ``manifest.json``, newest complete) decides, here, for
``record``, ``trajectory``, ``reproduce``, ``weights``, ``transplant`` and ``decompose`` alike. A folder without a
manifest (a user's own model) is refused unless ``--allow-unverified``, which warns (the option, with
``--overwrite``, is declared with every command's options in ``analyses.cli``, which must not import torch).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from rl.train import checkpoint as contract

log = logging.getLogger(__name__)


def warn(msg: str) -> None:
    """Tell the user (checkpoints skipped, folders loaded unverified): a warning of the ``analyses.checkpoints``
    logger, on stderr unless logging is configured otherwise."""
    log.warning(f"[adt-probe] {msg}")


def model_folder(path: str | os.PathLike, *, allow_unverified: bool = False) -> Path:
    """A verified model folder to load: ``path`` itself, or for a run folder its newest complete checkpoint.

    Raises
    ------
    FileNotFoundError : no such folder.
    rl.train.checkpoint.CheckpointError : verification failed (the message names the folder, file and check), or
        a run folder without a complete checkpoint.
    """
    return contract.resolve(Path(path), allow_unverified=allow_unverified, log=warn)


def run_checkpoints(run_dir: str | os.PathLike, *, steps: list[int] | None = None) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every checkpoint of a run that verifies (``steps``: only these), oldest first; damaged
    or incomplete ones are skipped with a line naming the file and the check that failed.

    Raises
    ------
    FileNotFoundError : no such run folder, or no complete checkpoint in it.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    found = [(s, p) for s, p in contract.complete_checkpoints(run_dir, warn) if steps is None or s in steps]
    if not found:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint (checkpoints/step-NNNNNN with a manifest.json "
                                "that verifies)" + (f" at steps {steps}" if steps else ""))
    return found


def latest(run_dir: str | os.PathLike) -> Path:
    """The newest checkpoint of a run that verifies (FileNotFoundError if there is none)."""
    return run_checkpoints(run_dir)[-1][1]

