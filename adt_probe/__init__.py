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

from adt_probe import plot, testing
from adt_probe.architectures import ArchitectureSpec, UnknownArchitectureError, architecture, get_module
from adt_probe.crystallize import compare_crystallization, crystallization, crystallization_layer
from adt_probe.decompose import router_decomposition
from adt_probe.drift import DriftInputError, band_contrast, gating_drift
from adt_probe.lens import Lens, LogitLens
from adt_probe.loading import LoadError, load_model
from adt_probe.outputs import OutputBusyError, OutputError
from adt_probe.recording import RecordingError, RecordOptions, record
from adt_probe.segments import SEGMENTS, segment_tokens
from adt_probe.storage import SchemaError, check_schema, open, save
from adt_probe.teacher_forcing import teacher_force
from adt_probe.trajectory import drift_trajectory
from adt_probe.tuned_lens import TunedLens, train_tuned_lens
from adt_probe.weights import router_weight_drift, transplant

__all__ = ["ArchitectureSpec", "DriftInputError", "Lens", "LoadError", "LogitLens", "OutputBusyError", "OutputError",
           "RecordOptions", "RecordingError", "SEGMENTS", "SchemaError", "TunedLens", "UnknownArchitectureError",
           "architecture", "band_contrast", "check_schema", "compare_crystallization", "crystallization",
           "crystallization_layer", "drift_trajectory", "gating_drift", "get_module", "load_model", "open", "plot",
           "record", "router_decomposition", "router_weight_drift", "save", "segment_tokens", "teacher_force",
           "testing", "train_tuned_lens", "transplant"]
