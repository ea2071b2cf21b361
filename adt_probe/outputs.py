"""Where adt-probe writes: never over a user's files, never two writers at once, never a folder found unwritable late.

* :func:`exclusive_lock` - an ``flock`` on a lock file beside (or inside) the target; a second writer gets
  :class:`OutputBusyError` at once instead of interleaving with the first.
* :func:`output_dir` - claims a command's ``--out`` folder before any expensive work: refuses a folder that holds
  files the command did not write (unless ``overwrite``, which still replaces only the command's own outputs), a
  folder that holds or lies inside the input data, and a folder that cannot be written; it keeps a ledger
  (``.adt-probe-output.json``) so a re-run recognises its own earlier output.
* :func:`unique_tmp` - temporary names that two processes never share.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

LEDGER = ".adt-probe-output.json"
LOCK = ".adt-probe.lock"


class OutputError(FileExistsError):
    """An output path holds files adt-probe did not write, or overlaps the input data; the message says what to do."""


class OutputBusyError(OutputError):
    """Another process is writing the same output right now."""


class DiskSpaceError(OSError):
    """Not enough free space for what is about to be written (checked before writing; nothing was changed)."""


def unique_tmp(path: Path) -> Path:
    """A hidden sibling name for writing ``path`` before it is renamed into place, unique per process and call."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_stale_tmps(path: Path) -> None:
    """Delete temporaries of ``path`` left by a writer that was killed; call it only while holding ``path``'s lock
    (every live writer holds it for as long as its temporary exists, so any one found then is stale)."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


class ExclusiveLock:
    """An exclusive ``flock`` on ``path`` (created, and removed again on release), held until :meth:`release`, the
    end of a ``with`` block, or the object's deletion (so a local variable holds it for a function's duration).

    Raises
    ------
    OutputBusyError : another process holds it; ``what`` names the output in the message.
    """

    def __init__(self, path: str | os.PathLike, what: str):
        self.path = Path(path)
        self.fd: int | None = None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputBusyError(f"{what} is being written by another process right now (it holds "
                                      f"{self.path}); wait for it to finish or choose another output path") from None
            # The holder before us may have removed the file between our open and our lock: then we locked a file
            # nobody else will see; try again on the current one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        os.write(fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # while still held, so no other process can have locked this inode
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> ExclusiveLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def exclusive_lock(lock_path: str | os.PathLike, what: str) -> ExclusiveLock:
    """Take an :class:`ExclusiveLock` on ``lock_path`` (use as ``with exclusive_lock(...):``)."""
    return ExclusiveLock(lock_path, what)


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and write (and remove) a probe file in it: fail now, not after minutes of work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = unique_tmp(folder / "write-probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputError(f"{folder}: cannot write there ({err.strerror or err}); choose another output folder") \
            from None


def check_not_inputs(out: Path, inputs: Iterable[str | os.PathLike], writes: Sequence[str] = ()) -> None:
    """Refuse an output folder that is, or lies inside, the folder of an input (the user's data, a model folder),
    and one above an input where an input sits at a name the tool writes (``writes``: names, glob patterns allowed)."""
    out = out.resolve()
    for inp in inputs:
        inp = Path(inp).resolve()
        folder = inp if inp.is_dir() else inp.parent
        clash = out == folder or folder in out.parents
        if not clash and out in inp.parents:
            first = inp.relative_to(out).parts[0]
            clash = any(fnmatch.fnmatch(first, w) for w in writes)
        if clash:
            raise OutputError(f"--out {out} overlaps the input data in {folder} ({inp.name}): adt-probe never writes "
                              "into the input data's folder, so the data cannot be replaced. Choose an output folder "
                              "outside it.")


def _entries(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name not in (LEDGER, LOCK)) if out.is_dir() else []


def read_ledger(out: Path) -> dict | None:
    """The ledger of an output folder (which tool wrote it, which entries), or None if it has none."""
    try:
        ledger = json.loads((out / LEDGER).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return ledger if isinstance(ledger, dict) else None


def check_target_folder(out: Path, tool: str, writes: Sequence[str], overwrite: bool) -> None:
    """Refuse a non-empty ``out`` that is not ``tool``'s own earlier output, unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file, not a folder; choose a folder for --out")
    ledger = read_ledger(out)
    entries = _entries(out)
    if not entries or overwrite or (ledger is not None and ledger.get("tool") == tool):
        return
    foreign = [e for e in entries if e not in writes] or entries
    shown = ", ".join(foreign[:4]) + (" ..." if len(foreign) > 4 else "")
    whose = f"was written by {ledger['tool']!r}" if ledger else f"was not written by {tool}"
    raise OutputError(f"{out} is not empty and {whose} (it holds {shown}). Choose a new or empty folder, or pass "
                      f"--overwrite to replace only what {tool} writes there ({', '.join(writes)}); other files are "
                      "never touched.")


@contextlib.contextmanager
def output_dir(out: str | os.PathLike, *, tool: str, writes: Sequence[str], overwrite: bool = False,
               inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Claim ``out`` for ``tool`` for the duration of the block: checked, writable, locked, with a ledger.

    Parameters
    ----------
    out : the output folder (created if missing).
    tool : the command's name, e.g. ``"adt-probe record"`` (recorded in the ledger).
    writes : names of the files and folders the tool writes in ``out``; with ``overwrite`` only these are replaced.
    overwrite : accept a folder holding other files (they are left alone).
    inputs : input files or folders; ``out`` must not overlap their folders.

    Raises
    ------
    OutputError : foreign non-empty folder, overlap with the inputs, or not writable.
    OutputBusyError : another process is writing ``out``.
    """
    out = Path(out)
    check_not_inputs(out, inputs, writes)
    check_target_folder(out, tool, writes, overwrite)
    check_writable(out)
    with exclusive_lock(out / LOCK, str(out)):
        remove_stale_tmps(out / LEDGER)
        ledger = read_ledger(out) or {}
        entries = sorted(set(ledger.get("writes", [])) | set(writes)) if ledger.get("tool") == tool else list(writes)
        tmp = unique_tmp(out / LEDGER)
        tmp.write_text(json.dumps({"tool": tool, "writes": entries}, indent=1) + "\n")
        os.replace(tmp, out / LEDGER)
        yield out


def free_space_check(folder: Path, needed: int, what: str) -> None:
    """Raise :class:`DiskSpaceError` (ENOSPC) naming ``what`` if ``folder``'s file system has less than ``needed``
    bytes free."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    if free < needed:
        raise DiskSpaceError(errno.ENOSPC, f"not enough free space to write {what}: about {needed / 2**20:.0f} MiB "
                                           f"needed, {free / 2**20:.0f} MiB free in {folder}. Free space or choose "
                                           "another path; nothing was changed")
