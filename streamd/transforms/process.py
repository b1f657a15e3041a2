"""The worker process's own housekeeping: status lines, the watchdog, its log, its limits.

Nothing here touches records or the broker; see :mod:`streamd.transforms.worker`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import threading
import time
from typing import Any

from streamd.transforms.runtime import TransformTimeout

HEARTBEAT_S = 1.0
ADDRESS_SPACE_SLACK = 256 << 20
"""Address space beyond twice the memory limit: thread stacks and malloc arenas reserve
address space they never touch (a worker idles at about 200 MiB of it, 35 MiB resident)."""
EXIT_CRASH = 1


class StatusPipe:
    """JSON lines to the supervisor; one ``os.write`` per line under a lock (two threads)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def send(self, event: str, **fields: Any) -> None:
        line = (json.dumps({"event": event, **fields}, separators=(",", ":")) + "\n").encode()
        with self.lock:
            try:
                view = memoryview(line)
                while view:
                    n = os.write(self.fd, view)
                    view = view[n:]
            except OSError:
                pass  # the supervisor is gone; the broker connection tells us soon enough


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the broker dies, even by kill -9 (PR_SET_PDEATHSIG);
    elsewhere the closed broker connection ends the worker at its next request."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)


class Watchdog(threading.Thread):
    """Heartbeats to the supervisor, and the per-record time limit.

    The main thread counts transform calls (``Applier.calls``); when the count has not moved
    for ``limit_s`` while a batch is being transformed, the current record is hanging, and the
    watchdog sends SIGUSR1 to the main thread, whose handler raises
    :class:`~streamd.transforms.runtime.TransformTimeout` in the transform (also interrupting a
    ``sleep`` or a blocking read). Code that never returns to the interpreter holds the GIL,
    so no heartbeat leaves either: the supervisor kills the worker after its heartbeat timeout.
    A transform that swallows the interrupt and goes on hanging loses its heartbeats too, once
    the call has lasted twice the limit.
    """

    def __init__(self, status: StatusPipe, limit_s: float) -> None:
        super().__init__(name="watchdog", daemon=True)
        self.status = status
        self.limit_s = limit_s
        self.applier: Any = None
        self.fired_for = -1
        self.main_ident = threading.main_thread().ident

    def install(self) -> None:
        limit_ms = int(self.limit_s * 1000)

        def on_signal(signum: int, frame: Any) -> None:
            a = self.applier
            if a is not None and a.in_transform and a.calls == self.fired_for:
                raise TransformTimeout(f"the record took longer than {limit_ms} ms")

        signal.signal(signal.SIGUSR1, on_signal)

    def run(self) -> None:
        tick = min(HEARTBEAT_S, self.limit_s / 4)
        last_calls, since, last_beat = -1, time.monotonic(), 0.0
        while True:
            time.sleep(tick)
            now = time.monotonic()
            a = self.applier
            stuck = False
            if a is not None:
                calls = a.calls
                if not a.in_transform or calls != last_calls:
                    last_calls, since = calls, now
                elif now - since >= self.limit_s and self.fired_for != calls:
                    self.fired_for = calls
                    assert self.main_ident is not None
                    signal.pthread_kill(self.main_ident, signal.SIGUSR1)
                # Still in the same call long after the interrupt (the transform caught it):
                # stop the heartbeats, so the supervisor kills the worker.
                stuck = self.fired_for == calls and now - since >= 2 * self.limit_s
            if now - last_beat >= HEARTBEAT_S and not stuck:
                self.status.send("hb")
                last_beat = now


class LogStream:
    """``sys.stdout``/``sys.stderr`` of the worker: lines go to ``worker.log`` (descriptors 1
    and 2, where the supervisor pointed them) with a UTC time in front; past ``max_bytes`` the
    file is rotated to ``worker.log.1`` and descriptors 1 and 2 are moved to a new one, so a
    chatty transform costs the broker nothing and cannot fill the disk."""

    def __init__(self, path: str, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.at_line_start = True
        try:
            self.size = os.fstat(1).st_size
        except OSError:
            self.size = 0

    def write(self, text: str) -> int:
        if not text:
            return 0
        parts = text.splitlines(keepends=True)
        out = []
        for part in parts:
            if self.at_line_start:
                out.append(time.strftime("%Y-%m-%dT%H:%M:%S ", time.gmtime()))
            out.append(part)
            self.at_line_start = part.endswith("\n")
        data = "".join(out).encode(errors="replace")
        with contextlib.suppress(OSError):
            os.write(1, data)
        self.size += len(data)
        if self.size > self.max_bytes:
            self.rotate()
        return len(text)

    def rotate(self) -> None:
        with contextlib.suppress(OSError):
            os.replace(self.path, self.path + ".1")
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        self.size = 0

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return 1


def confine(extra: dict[str, Any]) -> None:
    """Lower priority, bound the address space, send output to the rotating log."""
    parent = extra.get("parent_pid")
    if parent is not None and os.getppid() != parent:
        raise SystemExit(EXIT_CRASH)  # the broker died before PR_SET_PDEATHSIG was set
    with contextlib.suppress(OSError):
        os.nice(int(extra.get("nice", 0)))
    limit = int(extra.get("memory_limit_bytes", 0))
    if limit > 0:
        import resource

        with contextlib.suppress(ValueError, OSError):
            space = 2 * limit + ADDRESS_SPACE_SLACK
            resource.setrlimit(resource.RLIMIT_AS, (space, space))
    if extra.get("log_path"):
        stream = LogStream(str(extra["log_path"]), int(extra.get("log_max_bytes", 1 << 20)))
        sys.stdout = sys.stderr = stream  # type: ignore[assignment]
