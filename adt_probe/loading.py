"""Load a saved transformers model folder with the class its ``config.json`` names, with every weight or an error.

The one model loader of adt-probe (``adt_probe.weights``, ``adt_probe.trajectory`` and the ``adt-probe`` command
line through ``analyses.models`` use it). ``from_pretrained`` quietly initialises at random any weight the checkpoint
lacks; here that is an error naming those weights, so an analysis never measures noise (a Mixtral folder loaded as
another family would otherwise "load" with random weights).

Examples
--------
>>> model = load_model("my_mixtral", dtype="bfloat16")   # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import transformers

__all__ = ["DTYPES", "LoadError", "check_loading_info", "load_model", "model_class"]

log = logging.getLogger(__name__)

#: ``dtype`` names -> torch dtypes ("auto": what the checkpoint's config says).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


class LoadError(ValueError):
    """A model folder that cannot be loaded faithfully (no config, unknown class, weights missing)."""


def model_class(config: transformers.PretrainedConfig) -> type:
    """The transformers class for ``config``: the first of ``config.architectures`` that transformers has, else the
    causal-LM auto class for its ``model_type``.

    Raises
    ------
    LoadError
        Neither names a class this transformers knows (no remote code is ever run).
    """
    for name in getattr(config, "architectures", None) or []:
        if hasattr(transformers, name):
            return getattr(transformers, name)
    mapping = transformers.AutoModelForCausalLM._model_mapping
    if type(config) in mapping:
        return mapping[type(config)]
    raise LoadError(f"config.json names model_type={config.model_type!r} and architectures="
                    f"{getattr(config, 'architectures', None)}, none of which is a transformers causal-LM class "
                    f"(transformers {transformers.__version__}): upgrade transformers or save the model with a "
                    "class it has")


def check_loading_info(path: str | Path, cls: type, info: dict) -> None:
    """Raise :class:`LoadError` when ``from_pretrained`` initialised any weight at random (missing or mis-shaped)."""
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or ())
    if missing or mismatched:
        shown = ", ".join((missing + mismatched)[:8]) + (" ..." if len(missing) + len(mismatched) > 8 else "")
        raise LoadError(f"{path}: {len(missing)} weight(s) missing and {len(mismatched)} of the wrong shape for "
                        f"{cls.__name__} ({shown}); they would be randomly initialised. Is this folder a "
                        f"{cls.__name__} checkpoint, and was it saved completely?")
    if info.get("unexpected_keys"):
        log.warning("%s: %d checkpoint tensor(s) unused by %s (e.g. %s)", path, len(info["unexpected_keys"]),
                    cls.__name__, sorted(info["unexpected_keys"])[0])


def load_model(path: str | Path, dtype: str | torch.dtype = torch.float32, device_map: str | None = None):
    """Load a folder written by ``save_pretrained`` (safetensors only, no remote code), in eval mode.

    Parameters
    ----------
    path : folder with ``config.json`` and safetensors weights.
    dtype : a torch dtype or one of :data:`DTYPES` (``"auto"`` keeps the checkpoint's dtype).
    device_map : passed to ``from_pretrained`` (``"auto"``, ``"cpu"``, ``"cuda:0"``; None: CPU).

    Raises
    ------
    LoadError
        No ``config.json``; no known class; an unknown dtype; weights missing from or mis-shaped in the checkpoint.
    """
    path = Path(path)
    if not (path / "config.json").exists():
        raise LoadError(f"no model in {path}: expected config.json and safetensors weights there (a folder written "
                        "by save_pretrained)")
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise LoadError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    config = transformers.AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    cls = model_class(config)
    log.info("loading %s as %s (%s)", path, cls.__name__, dtype)
    model, info = cls.from_pretrained(str(path), dtype=DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype,
                                      device_map=device_map, use_safetensors=True, output_loading_info=True)
    check_loading_info(path, cls, info)
    return model.eval()
