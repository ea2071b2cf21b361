"""Checksums of saved Datasets: a bit flipped or a chunk truncated on disk is an error naming the file, not data.

A netCDF file ``x.nc`` gets a sidecar ``x.nc.sha256.json``; a zarr store gets ``adt_probe_checksums.json`` inside it
(sha256 of every other file of the store). ``adt_probe.open`` verifies them when present (files from elsewhere have
none and are only schema-checked).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

ZARR_MANIFEST = "adt_probe_checksums.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def _files(store: Path) -> dict[str, str]:
    return {p.relative_to(store).as_posix(): sha256(p) for p in sorted(store.rglob("*"))
            if p.is_file() and p.name != ZARR_MANIFEST}


def write_checksums(path: str | os.PathLike, *, target: str | os.PathLike | None = None) -> None:
    """Record the checksums of the Dataset at ``path`` (``target``: the final name of a netCDF file written to a
    temporary ``path`` and renamed afterwards)."""
    path = Path(path)
    if path.is_dir():
        manifest = {"format": 1, "files": _files(path)}
        (path / ZARR_MANIFEST).write_text(json.dumps(manifest, indent=0) + "\n")
    else:
        final = Path(target) if target is not None else path
        _sidecar(final).write_text(json.dumps({"format": 1, "file": final.name, "sha256": sha256(path)}) + "\n")


def verify_checksums(path: str | os.PathLike) -> str | None:
    """None when ``path`` matches its recorded checksums (or has none); else what failed, naming the file."""
    path = Path(path)
    if path.is_dir():
        manifest = path / ZARR_MANIFEST
        if not manifest.exists():
            return None
        expected = json.loads(manifest.read_text())["files"]
        found = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and p.name != ZARR_MANIFEST}
        for rel in sorted(set(expected) - found):
            return f"checksum check failed: {rel} is missing"
        for rel, digest in expected.items():
            if sha256(path / rel) != digest:
                return f"checksum check failed: {rel} differs from what was written"
        return None
    sidecar = _sidecar(path)
    if not sidecar.exists():
        return None
    if sha256(path) != json.loads(sidecar.read_text())["sha256"]:
        return f"checksum check failed: {path.name} differs from what was written (sha256 in {sidecar.name})"
    return None
