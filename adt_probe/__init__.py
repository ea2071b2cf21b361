"""adt-probe: measure what RL changes inside Mixture-of-Experts (audio-)language models.

The analysis library: hooks MoE routers and residual streams, records them into xarray Datasets, and derives gating
drift and the layer-wise crystallization of reasoning tokens. It never imports ``rl``: it reads checkpoints.

Examples
--------
>>> import adt_probe
>>> spec = adt_probe.architecture(model)                               # doctest: +SKIP
>>> ds = adt_probe.record(model, batch, tokenizer=processor.tokenizer)  # doctest: +SKIP
>>> adt_probe.save(ds, "base.zarr")                                     # doctest: +SKIP
"""

__version__ = "0.1.0"

from adt_probe.architectures import ArchitectureSpec, UnknownArchitectureError, architecture, get_module
from adt_probe.record import RecordingError, record
from adt_probe.segments import SEGMENTS, segment_tokens
from adt_probe.storage import SchemaError, check_schema, open, save
from adt_probe.tuned_lens import TunedLens, train_tuned_lens

__all__ = ["ArchitectureSpec", "RecordingError", "SEGMENTS", "SchemaError", "TunedLens", "UnknownArchitectureError",
           "architecture", "check_schema", "get_module", "open", "record", "save", "segment_tokens",
           "train_tuned_lens"]
