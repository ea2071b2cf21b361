"""Save and open recordings and derived Datasets: netCDF (``.nc``, via h5netcdf) or zarr (``.zarr``), by suffix.

``open`` checks the schema (version, dimensions, token coordinates) and names the file and the failed check, so a
truncated or foreign file gives a clear error rather than a traceback from deep inside a reader. zarr stores open
lazily (dask arrays); netCDF files open lazily too and are read on access.

Examples
--------
>>> save(ds, "runs/base.zarr")                 # doctest: +SKIP
>>> ds = open("runs/base.zarr")                # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import xarray as xr

from adt_probe.integrity import ZARR_MANIFEST, ChecksumError, read_json, sidecar, verify_checksums, write_checksums
from adt_probe.outputs import (
    DiskSpaceError,
    OutputError,
    exclusive_lock,
    free_space_check,
    remove_stale_tmps,
    unique_tmp,
)

SCHEMA_VERSION = "1"
#: zarr v2 on disk: v3 has no specified fixed-length string type yet (the segment labels), so v2 stores stay readable
#: by every zarr implementation.
ZARR_FORMAT = 2

SUFFIXES = {".nc": "netcdf", ".zarr": "zarr"}
TOKEN_COORDS = ("sequence", "position", "token_id", "segment")
#: netCDF files up to this size are serialised in memory first, so a full disk fails in a plain write (a clean
#: OSError) rather than inside the HDF5 library's close, which was seen to crash the process.
IN_MEMORY_NC = 1 << 30
#: encoding keys that belong to the zarr store a variable was read from; kept, they break writing it elsewhere.
_STORE_ENCODING = ("chunks", "preferred_chunks", "compressor", "compressors", "filters", "shards", "serializer",
                   "object_codec")
#: files a zarr store is made of: metadata, and chunk keys ("0.1", "c/0/1"), at any depth.
_ZARR_META = {".zgroup", ".zarray", ".zattrs", ".zmetadata", "zarr.json", ZARR_MANIFEST}
_CHUNK_KEY = re.compile(r"^(c|\d+)([./]\d+)*$")


class SchemaError(ValueError):
    """A file is not a readable adt-probe Dataset; the message names the file and the check that failed."""


def _kind(path: Path) -> str:
    try:
        return SUFFIXES[path.suffix]
    except KeyError:
        raise ValueError(f"{path}: unknown suffix {path.suffix!r}; use .nc (netCDF) or .zarr") from None


def _is_zarr_file(store: Path, p: Path) -> bool:
    rel = p.relative_to(store).as_posix()
    return p.name in _ZARR_META or bool(_CHUNK_KEY.match(rel.split("/", 1)[-1] if "/" in rel else rel))


def _replaceable(path: Path, kind: str, overwrite: bool) -> None:
    """Refuse to replace ``path`` unless it is this library's own earlier output, or ``overwrite`` and nothing but
    data adt-probe would write is lost. Raises :class:`OutputError` saying what is there and what to do."""
    if not path.exists() and not path.is_symlink():
        return
    if kind == "netcdf":
        if path.is_dir():
            raise OutputError(f"{path} is a folder; adt_probe.save writes a .nc file there only in place of a file")
        own = sidecar(path).is_file() and _json_or_none(sidecar(path)).get("file") == path.name
        if own or overwrite:
            return
        raise OutputError(f"{path} exists and was not written by adt_probe.save (no {sidecar(path).name} beside it); "
                          "choose another path, or pass overwrite=True (--overwrite) to replace that file")
    if not path.is_dir():
        raise OutputError(f"{path} is a file; adt_probe.save writes a zarr store (a folder) there only in place of "
                          "a zarr store")
    files = [p for p in sorted(path.rglob("*")) if p.is_file()]
    listed = _json_or_none(path / ZARR_MANIFEST).get("files", {})
    foreign = [p.relative_to(path).as_posix() for p in files
               if p.name != ZARR_MANIFEST and p.relative_to(path).as_posix() not in listed]
    if listed and not foreign:
        return  # our own earlier store, unchanged in its file list
    if overwrite and all(_is_zarr_file(path, p) for p in files):
        return  # a zarr store from elsewhere: nothing but zarr's own files goes
    not_zarr = [f for f in foreign if not _is_zarr_file(path, path / f)]
    shown = ", ".join((not_zarr or foreign)[:4]) or "no checksum file"
    hint = ("it holds files that are not part of a zarr store, which adt_probe.save never deletes: move them or "
            "choose another path" if not_zarr else "choose another path, or pass overwrite=True (--overwrite)")
    raise OutputError(f"{path} exists and was not written by adt_probe.save ({shown}); {hint}")


def _json_or_none(path: Path) -> dict:
    try:
        return read_json(path)
    except (ChecksumError, OSError):
        return {}


def save(ds: xr.Dataset, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``ds`` to ``path`` (``.nc`` or ``.zarr``) atomically, with checksums, under an exclusive lock.

    The Dataset goes to a hidden temporary sibling unique to this call and is renamed into place once complete, so
    a crash or a full disk leaves the old file (if any) as it was and no temporary behind. An existing ``path`` is
    replaced only if ``save`` wrote it (its checksum file says so) or ``overwrite`` is True; a folder holding files
    that are not part of a zarr store is never replaced.

    Raises
    ------
    OutputError : ``path`` holds something this call may not replace (the message says what).
    OutputBusyError : another process is saving to ``path`` right now.
    OSError : the disk is full (checked before writing a netCDF file) or not writable; nothing was changed.
    """
    path = Path(path)
    kind = _kind(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path.with_name(f".{path.name}.lock"), str(path)):
        remove_stale_tmps(path)
        _replaceable(path, kind, overwrite)
        tmp = unique_tmp(path)
        try:
            if kind == "netcdf":
                _write_netcdf(ds, tmp, path)
            else:
                _write_zarr(ds, tmp, path)
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            if isinstance(err, OSError) and not isinstance(err, DiskSpaceError):
                kept = f"the previous {path.name} is as it was and " if path.exists() else ""
                raise OSError(err.errno, f"writing {path} failed ({err.strerror or err}); nothing was changed: "
                                         f"{kept}no temporary file is left. Free space or choose another path") from err
            raise
    return path


def _write_netcdf(ds: xr.Dataset, tmp: Path, path: Path) -> None:
    free_space_check(path.parent, int(ds.nbytes * 1.05) + (1 << 20), str(path))
    if ds.nbytes <= IN_MEMORY_NC:
        data = ds.to_netcdf(engine="h5netcdf", invalid_netcdf=True)
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    else:
        ds.to_netcdf(tmp, engine="h5netcdf", invalid_netcdf=True)
    write_checksums(tmp, target=path)  # the sidecar names the final file
    os.replace(tmp, path)


def _write_zarr(ds: xr.Dataset, tmp: Path, path: Path) -> None:
    ds.to_zarr(tmp, mode="w-", consolidated=True, zarr_format=ZARR_FORMAT)
    write_checksums(tmp)
    if path.exists():  # checked by _replaceable: our own earlier store (or an overwritable one)
        old = unique_tmp(path)  # a stale-temporary name: a crash right here leaves nothing a later save keeps
        path.rename(old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)


def open(path: str | os.PathLike, *, verify: bool = True) -> xr.Dataset:  # noqa: A001 - mirrors xarray.open_*
    """Open a Dataset written by ``save`` or ``record(out=...)``; data lazy (dask for zarr), coordinates in memory.

    Coordinates (``sequence``, ``segment``, ...) are loaded at once, so ``groupby("segment")``,
    ``where(ds.sequence == 2, drop=True)`` and ``sel`` work on the lazy data; the zarr encoding of the source
    store is dropped, so ``.to_zarr`` / ``.to_netcdf`` of the result (loaded or not) work.

    ``verify`` requires the checksum file written with the data and checks every byte against it (it reads the
    data once), then checks the schema. Pass ``verify=False`` for a file written elsewhere (no checksum file); a
    zarr store is still checked to be complete.

    Raises
    ------
    FileNotFoundError : nothing at ``path``.
    SchemaError : unreadable, incomplete (a half-written store), altered since it was written (checksum), no
        checksum file (with ``verify``), or not an adt-probe Dataset of this schema version.
    """
    path = Path(path)
    kind = _kind(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or store")
    if kind == "zarr":
        _check_store_complete(path)
    if verify:
        try:
            problem = verify_checksums(path, required=True)
        except ChecksumError as err:
            raise SchemaError(str(err)) from None
        if problem:
            raise SchemaError(f"{path}: {problem}")
    try:
        ds = (xr.open_dataset(path, engine="h5netcdf") if kind == "netcdf"
              else xr.open_zarr(path, consolidated=None))
    except Exception as err:  # readers raise many types for a damaged file; name the file and the cause
        raise SchemaError(f"{path}: cannot be read as {kind} ({type(err).__name__}: {err}). The file may be "
                          "truncated or written by another program; record or save it again.") from err
    if kind == "zarr" and not ds.data_vars:
        raise SchemaError(f"{path}: the store holds no variables (a half-written store?); record or save it again")
    if verify:
        check_schema(ds, path)
    return _in_memory_coords(ds)


def _check_store_complete(store: Path) -> None:
    """Raise SchemaError naming what is missing if ``store`` lacks its group metadata or an array's metadata."""
    if not store.is_dir():
        raise SchemaError(f"{store}: not a folder; a .zarr store is a folder")
    if not any((store / m).is_file() for m in (".zgroup", "zarr.json")):
        raise SchemaError(f"{store}: incomplete zarr store: no .zgroup or zarr.json (written only partly, or not a "
                          "zarr store); record or save it again")
    for sub in sorted(p for p in store.iterdir() if p.is_dir()):
        if not any((sub / m).is_file() for m in (".zarray", "zarr.json")):
            raise SchemaError(f"{store}: incomplete zarr store: {sub.name}/ has no .zarray or zarr.json (its "
                              "writer was interrupted); record or save it again")


def _in_memory_coords(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.assign_coords({name: c.compute() for name, c in ds.coords.items() if c.chunks is not None})
    for var in ds.variables.values():
        for key in _STORE_ENCODING:
            var.encoding.pop(key, None)
    return ds


def check_schema(ds: xr.Dataset, where: str | os.PathLike = "dataset") -> None:
    """Raise ``SchemaError`` unless ``ds`` carries this schema version and, when it has tokens, their coordinates."""
    version = ds.attrs.get("schema_version")
    if version is None:
        raise SchemaError(f"{where}: no schema_version attribute; not written by adt-probe (or its attributes were "
                          "lost). Record it again with adt_probe.record.")
    if str(version) != SCHEMA_VERSION:
        raise SchemaError(f"{where}: schema_version {version}, this adt-probe reads {SCHEMA_VERSION}")
    if "token" in ds.dims:
        missing = [c for c in TOKEN_COORDS if c not in ds.coords]
        if missing:
            raise SchemaError(f"{where}: token coordinates {missing} are missing")
