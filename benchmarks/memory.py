"""Peak memory of this process, read from /proc (Linux).

``resource.getrusage(...).ru_maxrss`` survives ``execve``: a benchmark subprocess started by a parent that once held
4 GB reports 4 GB whatever it does. ``VmHWM`` belongs to the process' own address space, which ``execve`` replaces.
"""

from __future__ import annotations

from pathlib import Path


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MB
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss_mb() -> float:
    """Highest resident set size of this process so far, MB."""
    return _status("VmHWM")


def rss_mb() -> float:
    """Current resident set size, MB."""
    return _status("VmRSS")
