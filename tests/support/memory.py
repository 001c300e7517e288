"""Memory figures of a process, read from /proc (Linux): what the kernel holds for it."""

from __future__ import annotations

from pathlib import Path


def status_bytes(key: str, pid: int | str = "self") -> int:
    """A /proc/<pid>/status field given in kB (VmRSS, VmHWM, ...), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)
