"""Which part of the gating drift the routers made and which their inputs made (``adt-probe decompose``).

    adt-probe decompose --base rl/assets/organism --rl demo/run/checkpoints/step-000045 \\
        --recordings demo/recordings --out demo/decompose

Uses ``base.zarr`` and ``rl.zarr`` of ``--recordings`` (routing="full") and one extra pass of the RL model per MoE
layer with the base router in that layer (``adt_probe.decompose``). Writes ``decomposition.nc``, the per-layer
views ``rl_streams_base_routers.zarr``, the figure, and the upper-minus-lower band contrast of each effect.
"""

from __future__ import annotations

import json
from pathlib import Path

import adt_probe
from adt_probe import plot
from adt_probe.decompose import base_router_views, effect_pairs, router_decomposition
from adt_probe.drift import band_contrast
from analyses.cli import command_parser
from analyses.findings import halves
from analyses.models import load_pretrained
from analyses.sequences import recorded_inputs


def run(base_path, rl_path, recordings, out: Path, *, n_boot: int = 1000, batch_size: int = 8,
        dtype: str = "float32", device_map: str | None = None) -> dict:
    """Decompose, save and plot; any pair of model folders of one MoE architecture loads (``analyses.models``)."""
    recordings = Path(recordings)
    base, processor = load_pretrained(base_path, dtype=dtype, device_map=device_map)
    rl, _ = load_pretrained(rl_path, dtype=dtype, device_map=device_map)
    inputs = recorded_inputs(recordings, processor)
    base_rec = adt_probe.open(recordings / "base.zarr").load()
    rl_rec = adt_probe.open(recordings / "rl.zarr").load()
    views = base_router_views(rl, base, inputs, rl_recording=rl_rec, tokenizer=processor.tokenizer,
                              batch_size=batch_size)
    adt_probe.save(views, out / "rl_streams_base_routers.zarr")
    dec = router_decomposition(base, rl, inputs, base_recording=base_rec, rl_recording=rl_rec, views=views,
                               n_boot=n_boot, batch_size=batch_size)
    adt_probe.save(dec, out / "decomposition.nc")
    total = dec.sel(effect="total")
    lower, upper = halves(total)
    segment = "think" if int(total.n_tokens.sel(segment="think")) > 0 else "all"
    fig = plot.drift_decomposition(dec, "js", segment)
    plot.save(fig, out / "drift_decomposition")
    plot.plt.close(fig)
    return {"segment": segment, "bands": {"lower": lower, "upper": upper},
            **{f"js_band_contrast_{k}": band_contrast(a, b, lower=lower, upper=upper, segment=segment, n_boot=n_boot)
               for k, (a, b) in effect_pairs(base_rec, rl_rec, views).items()}}


def main(argv=None) -> None:
    args = command_parser("decompose", __doc__).parse_args(argv)
    result = run(args.base, args.rl, args.recordings, Path(args.out), n_boot=args.n_boot,
                 batch_size=args.batch_size, dtype=args.dtype, device_map=args.device_map)
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
