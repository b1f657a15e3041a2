"""Read a broker's CPU time and memory from /proc (Linux only).

CPU is utime+stime of the process and of every live descendant (a broker may fork helpers),
in seconds (clock ticks / SC_CLK_TCK). Peak RSS is VmHWM of the main process. The high-water
mark can be reset between measurements by writing "5" to /proc/PID/clear_refs (allowed for
processes we own); `reset_peak_rss` reports whether that worked.
"""

from __future__ import annotations

import contextlib
import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # The command name (field 2) may contain spaces/parens; fields after the last ')'.
    rest = data[data.rindex(b")") + 2 :].split()
    # rest[0] is field 3 (state); utime is field 14, stime field 15.
    return int(rest[11]) + int(rest[12])


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


def descendants(pid: int) -> list[int]:
    seen: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        seen.append(p)
        stack.extend(_children(p))
    return seen


def cpu_seconds(pid: int) -> float:
    """utime+stime of pid and its live descendants, in seconds."""
    total = 0
    for p in descendants(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):  # exited meanwhile
            total += _stat_ticks(p)
    return total / CLK_TCK


def _status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_bytes(pid: int) -> int | None:
    kb = _status_kb(pid, "VmHWM")
    return None if kb is None else kb * 1024


def rss_bytes(pid: int) -> int | None:
    kb = _status_kb(pid, "VmRSS")
    return None if kb is None else kb * 1024


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS. Returns False if the kernel refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
