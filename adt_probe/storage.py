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
import shutil
from pathlib import Path

import xarray as xr

from adt_probe.integrity import verify_checksums, write_checksums
from adt_probe.recording import SCHEMA_VERSION, ZARR_FORMAT

SUFFIXES = {".nc": "netcdf", ".zarr": "zarr"}
TOKEN_COORDS = ("sequence", "position", "token_id", "segment")


class SchemaError(ValueError):
    """A file is not a readable adt-probe Dataset; the message names the file and the check that failed."""


def _kind(path: Path) -> str:
    try:
        return SUFFIXES[path.suffix]
    except KeyError:
        raise ValueError(f"{path}: unknown suffix {path.suffix!r}; use .nc (netCDF) or .zarr") from None


def save(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` to ``path`` (``.nc`` or ``.zarr``) atomically: a temporary sibling renamed into place.

    An existing file at ``path`` is replaced only once the new one is completely written.
    """
    path = Path(path)
    kind = _kind(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.is_dir():
        shutil.rmtree(tmp)
    elif tmp.exists():
        tmp.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "netcdf":
        ds.to_netcdf(tmp, engine="h5netcdf", invalid_netcdf=True)
        write_checksums(tmp, target=path)
    else:
        ds.to_zarr(tmp, mode="w", consolidated=True, zarr_format=ZARR_FORMAT)
        write_checksums(tmp)
    if path.is_dir():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def open(path: str | os.PathLike, *, check: bool = True) -> xr.Dataset:  # noqa: A001 - mirrors xarray.open_*
    """Open a Dataset written by ``save`` or ``record(out=...)``; lazy for zarr.

    ``check`` verifies the checksums written with the file (it reads every byte once: pass ``check=False`` to skip
    that and the schema check) and the schema.

    Raises
    ------
    FileNotFoundError : nothing at ``path``.
    SchemaError : unreadable, altered since it was written (checksum), or not an adt-probe Dataset of this schema
        version.
    """
    path = Path(path)
    kind = _kind(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or store")
    if check and (problem := verify_checksums(path)):
        raise SchemaError(f"{path}: {problem}; the file was changed or damaged after it was written. Record or save "
                          "it again.")
    try:
        ds = (xr.open_dataset(path, engine="h5netcdf") if kind == "netcdf"
              else xr.open_zarr(path, consolidated=None))
    except Exception as err:  # readers raise many types for a damaged file; name the file and the cause
        raise SchemaError(f"{path}: cannot be read as {kind} ({type(err).__name__}: {err}). The file may be "
                          "truncated or written by another program; record or save it again.") from err
    if check:
        check_schema(ds, path)
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
