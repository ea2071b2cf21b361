"""Checksums and version stamps: the one place the repository hashes files and names its library versions.

A netCDF file ``x.nc`` gets a sidecar ``x.nc.sha256.json``; a zarr store gets ``adt_probe_checksums.json`` inside it
(sha256 of every other file of the store). ``adt_probe.open`` requires and verifies them (``verify=False`` opens a
file from elsewhere, which has none). Checkpoint manifests (``rl.train.checkpoint``) and the organism's manifest use
:func:`file_manifest` and :func:`check_manifest` from here too, so there is one hashing rule.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
from pathlib import Path

ZARR_MANIFEST = "adt_probe_checksums.json"


class ChecksumError(ValueError):
    """A checksum file is missing, unreadable, or does not match the data; the message names the file."""


def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_manifest(folder: str | os.PathLike, *, exclude: tuple[str, ...] = ()) -> dict[str, dict]:
    """``{relative POSIX path: {"sha256": hex, "bytes": size}}`` of every file below ``folder``, sorted by path.

    ``exclude``: file names (at any depth) left out, such as the manifest itself.
    """
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): {"sha256": sha256(p), "bytes": p.stat().st_size}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in exclude}


def check_manifest(folder: str | os.PathLike, files: dict[str, dict | str]) -> str | None:
    """None if every file listed in ``files`` (as :func:`file_manifest` writes it, or ``{path: hex}``) is in
    ``folder`` with that size and sha256; else what failed, naming the file."""
    folder = Path(folder)
    for rel, meta in files.items():
        meta = meta if isinstance(meta, dict) else {"sha256": meta}
        p = folder / rel
        if not p.is_file():
            return f"{rel} is missing"
        if "bytes" in meta and p.stat().st_size != meta["bytes"]:
            return f"{rel} has {p.stat().st_size} bytes, the manifest says {meta['bytes']} (truncated or altered)"
        if sha256(p) != meta["sha256"]:
            return f"{rel} differs from what was written (sha256 mismatch)"
    return None


def read_json(path: str | os.PathLike, what: str = "checksum file") -> dict:
    """A JSON object from ``path``; :class:`ChecksumError` naming the file if it is not one."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ChecksumError(f"{path}: the {what} is not valid JSON ({err}); it was damaged or replaced. Write the "
                            "data again, or open it without verification (verify=False).") from None
    if not isinstance(obj, dict):
        raise ChecksumError(f"{path}: the {what} holds {type(obj).__name__}, not a JSON object")
    return obj


def versions() -> dict[str, str]:
    """The version stamp written into recordings, reports and manifests: python, platform and library versions."""
    return dict(_versions())


@functools.lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str], ...]:
    # read once per process: package metadata lookups cost 8 ms, a tenth of a small model's recording
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return (("python", platform.python_version()), ("platform", platform.platform()),
            *((name.replace("-", "_"), version(name)) for name in ("adt-probe", "torch", "transformers", "xarray")))


def sidecar(path: str | os.PathLike) -> Path:
    """The checksum file of a netCDF file: ``x.nc`` -> ``x.nc.sha256.json``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256.json")


def write_checksums(path: str | os.PathLike, *, target: str | os.PathLike | None = None) -> None:
    """Record the checksums of the Dataset at ``path`` (``target``: the final name of a netCDF file written to a
    temporary ``path`` and renamed afterwards; its sidecar is written under the final name)."""
    path = Path(path)
    if path.is_dir():
        manifest = {"format": 1, "files": file_manifest(path, exclude=(ZARR_MANIFEST,))}
        (path / ZARR_MANIFEST).write_text(json.dumps(manifest, indent=0) + "\n")
    else:
        final = Path(target) if target is not None else path
        sidecar(final).write_text(json.dumps({"format": 1, "file": final.name, "sha256": sha256(path),
                                              "bytes": path.stat().st_size}) + "\n")


def checksum_file(path: str | os.PathLike) -> Path:
    """Where the checksums of the Dataset at ``path`` are kept (inside a zarr store, beside a netCDF file)."""
    path = Path(path)
    return path / ZARR_MANIFEST if path.is_dir() else sidecar(path)


def verify_checksums(path: str | os.PathLike, *, required: bool = True) -> str | None:
    """None when ``path`` matches its recorded checksums; else what failed, naming the file.

    ``required``: a missing checksum file is a failure (a store whose writer was interrupted, or a file from
    elsewhere); with False it passes. A checksum file that is not JSON raises :class:`ChecksumError`.
    """
    path = Path(path)
    manifest = checksum_file(path)
    if not manifest.exists():
        if not required:
            return None
        return (f"no checksum file {manifest.name}: the data was not completely written (an interrupted record or "
                "save) or comes from another program. Record or save it again, or open it with verify=False")
    meta = read_json(manifest)
    if path.is_dir():
        expected = meta.get("files")
        if not isinstance(expected, dict):
            raise ChecksumError(f"{manifest}: no 'files' table; not an adt-probe checksum file")
        found = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and p.name != ZARR_MANIFEST}
        extra = sorted(found - set(expected))
        problem = check_manifest(path, expected)
        if problem is None and extra:
            problem = f"{extra[0]} was added after the store was written"
        return None if problem is None else f"checksum check failed: {problem}"
    if "sha256" not in meta:
        raise ChecksumError(f"{manifest}: no 'sha256' entry; not an adt-probe checksum file")
    if sha256(path) != meta["sha256"]:
        return f"checksum check failed: {path.name} differs from what was written (sha256 in {manifest.name})"
    return None
