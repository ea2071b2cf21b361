"""Experiment tracking through accelerate's trackers: ``logging.report_to`` in the training config.

``report_to = ["tensorboard"]`` (or ``"wandb"``, ``"trackio"``, ``"mlflow"``, ``"comet_ml"``, ``"aim"``,
``"clearml"``, ``"dvclive"``, ``"swanlab"``: whatever accelerate supports and is installed) sends every step's
numbers of ``log.jsonl`` to those trackers, as TRL's ``report_to`` does, and the run's configuration as its
hyper-parameters. Tensorboard event files go to ``<out>/runs``. ``log.jsonl`` is always written as well.

Examples
--------
.. code-block:: toml

    [logging]
    report_to = ["tensorboard"]    # then: tensorboard --logdir <out>/runs
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from accelerate.tracking import LOGGER_TYPE_TO_CLASS

from rl.train.config import ConfigError

PROJECT = "adt-probe-grpo"


def check(report_to: list[str]) -> list[str]:
    """The tracker names, checked against accelerate's list ("none" and [] mean none; "all": every one installed).

    Raises
    ------
    ConfigError
        An unknown name (the message lists the known ones).
    """
    names = [n for n in report_to if n != "none"]
    unknown = [n for n in names if n not in LOGGER_TYPE_TO_CLASS and n != "all"]
    if unknown:
        raise ConfigError(f"logging.report_to: unknown tracker(s) {unknown}; accelerate knows "
                          f"{sorted(LOGGER_TYPE_TO_CLASS)} (or 'all', or [] for none)")
    return names


def accelerator_kwargs(report_to: list[str], out: str | Path) -> dict[str, Any]:
    """``Accelerator(**...)`` arguments for ``report_to`` (empty when there is none): ``log_with`` and the
    folder the file-based trackers write to (``<out>/runs``)."""
    names = check(report_to)
    if not names:
        return {}
    return {"log_with": "all" if "all" in names else names, "project_dir": str(Path(out) / "runs")}


def _flat(config: Mapping, prefix: str = "") -> dict[str, int | float | str | bool]:
    """Nested config -> ``{"grpo/temperature": 1.0, ...}``; lists and None as JSON text (what hparams accept)."""
    flat: dict[str, int | float | str | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flat(value, name + "/"))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def start(accelerator, config: Mapping) -> None:
    """Open the trackers of ``accelerator`` (if any) with the run's configuration as hyper-parameters."""
    if accelerator.log_with:
        accelerator.init_trackers(PROJECT, config=_flat(config))


def log(accelerator, record: Mapping, step: int) -> None:
    """Send one ``log.jsonl`` record's finite numbers to the trackers (strings such as the stage name are not
    scalars; ``None`` marks a missing value)."""
    if accelerator.log_with:
        values = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                  and math.isfinite(v) and k != "step"}
        accelerator.log(values, step=step)


def end(accelerator) -> None:
    """Flush and close the trackers."""
    if accelerator.log_with:
        accelerator.end_training()
