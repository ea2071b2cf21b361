"""adt-probe: measure what RL changes inside Mixture-of-Experts (audio-)language models.

The analysis library: hooks MoE routers and residual streams, records them into xarray Datasets, and derives gating
drift and the layer-wise crystallization of reasoning tokens. It never imports ``rl``: it reads checkpoints.

Examples
--------
>>> import adt_probe
>>> spec = adt_probe.architecture(model)                               # doctest: +SKIP
>>> batch = adt_probe.teacher_force(processor, prompts, completions)   # doctest: +SKIP
>>> ds = adt_probe.record(model, batch, tokenizer=processor.tokenizer)  # doctest: +SKIP
>>> adt_probe.save(ds, "base.zarr")                                     # doctest: +SKIP
"""

__version__ = "0.1.0"

# The modules that need torch, transformers or matplotlib are imported on first use (PEP 562): ``import adt_probe``
# for ``open`` and ``gating_drift`` loads none of them (about 220 MB of resident memory and seconds of start-up).
# ``save`` and the other light names are bound at once (nnsight gives every object a ``save`` attribute, which would
# shadow a lazy one).
from adt_probe import testing
from adt_probe.drift import DriftInputError, band_contrast, gating_drift
from adt_probe.outputs import OutputBusyError, OutputError
from adt_probe.segments import SEGMENTS, segment_tokens
from adt_probe.storage import SchemaError, check_schema, open, save
from adt_probe.teacher_forcing import teacher_force

_EXPORTS = {
    "plot": None,
    "ArchitectureSpec": "architectures", "UnknownArchitectureError": "architectures", "architecture": "architectures",
    "get_module": "architectures",
    "compare_crystallization": "crystallize", "crystallization": "crystallize", "crystallization_layer": "crystallize",
    "router_decomposition": "decompose",
    "Lens": "lens", "LogitLens": "lens",
    "LoadError": "loading", "load_model": "loading",
    "RecordingError": "recording", "RecordOptions": "recording", "record": "recording",
    "drift_trajectory": "trajectory",
    "TunedLens": "tuned_lens", "train_tuned_lens": "tuned_lens",
    "router_weight_drift": "weights", "transplant": "weights",
}


def __getattr__(name: str):
    import importlib
    import importlib.util

    if name not in _EXPORTS:  # a submodule (``adt_probe.drift.band_contrast``), as when all were imported eagerly
        if name.startswith("_") or importlib.util.find_spec(f"adt_probe.{name}") is None:
            raise AttributeError(f"module 'adt_probe' has no attribute {name!r}")
        return importlib.import_module(f"adt_probe.{name}")
    module = importlib.import_module(f"adt_probe.{_EXPORTS[name] or name}")
    value = module if _EXPORTS[name] is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = ["ArchitectureSpec", "DriftInputError", "Lens", "LoadError", "LogitLens", "OutputBusyError", "OutputError",
           "RecordOptions", "RecordingError", "SEGMENTS", "SchemaError", "TunedLens", "UnknownArchitectureError",
           "architecture", "band_contrast", "check_schema", "compare_crystallization", "crystallization",
           "crystallization_layer", "drift_trajectory", "gating_drift", "get_module", "load_model", "open", "plot",
           "record", "router_decomposition", "router_weight_drift", "save", "segment_tokens", "teacher_force",
           "testing", "train_tuned_lens", "transplant"]
