"""The broker side of data transforms: deployments, their worker processes, their status.

Each running deployment has one worker process (:mod:`streamd.transforms.worker`), started by
a :class:`Runner` with two Kafka connections to this broker and a status pipe. The broker's
end of each connection is served like any client connection (same Fetch path, remote reader
and cache, same transaction coordinator), as the internal principal ``Internal:transforms``;
the worker's end is inherited by the process. The event loop never runs transform code and
never reads a transform's output: worker stdout/stderr go straight to ``worker.log``, and the
status pipe carries a few small JSON lines per second.

A worker is watched for three things besides its exit code:

- heartbeats (sent by its watchdog thread every second): none for
  ``record_timeout_ms + HEARTBEAT_GRACE_MS`` means code stuck where no signal reaches it;
- resident memory (``/proc/PID/statm``, every second) above ``memory_limit_bytes``; the worker
  also runs under an address-space limit (``RLIMIT_AS``: twice that, plus 256 MiB for thread
  stacks and malloc arenas) so a runaway allocation fails fast with MemoryError instead of
  growing until the next check;
- its exit: 0 after a requested stop; ``EXIT_FAILED`` (``--on-error stop``) and
  ``EXIT_FATAL`` (the code does not load) mark the transform failed; anything else is a crash.

A crashed, hung or oversized worker is restarted with exponential backoff (1 s doubling to
``restart_backoff_max_ms``); after ``max_restarts`` restarts in a row without any committed
progress it is marked failed instead. Every such event is logged to the broker's log and to the
transform's log, and the last one is shown as ``last_error`` by ``describe``.

Decisions:

- The worker runs at a lower CPU priority (``nice``): the broker's event loop serves live
  producers and consumers first, so a replay from the bucket never slows them down much.
- Workers get only the deployment's ``--env`` variables plus PATH, PYTHONPATH and a UTF-8
  locale, never the broker's environment (which may hold bucket credentials).
- Pause and delete stop the worker with SIGTERM: it commits its open transaction and exits
  (SIGKILL after ``stop_timeout_ms``: its transaction is then aborted by the next incarnation,
  or by the coordinator's timeout). Delete also deletes the group holding its positions, so a
  later deployment of the same name starts from ``--from`` again; a redeploy (deploy to an
  existing name) keeps them and continues with the new code.
- ``failed``, ``paused`` and the counters survive restarts (``deployment.json``); counters are
  saved at every state change, every ``COUNTERS_SAVE_S`` while a worker runs and at shutdown,
  so after a kill -9 of the broker they may lag a little (positions and output never do).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from streamd.transforms import worker as worker_mod
from streamd.transforms.spec import Deployment, parse_on_error
from streamd.transforms.store import LOG_MAX_BYTES, DeploymentStore, Stored

log = logging.getLogger("streamd.transforms")

PRINCIPAL = "Internal:transforms"
HEARTBEAT_GRACE_MS = 5_000
MONITOR_INTERVAL_S = 1.0
COUNTERS_SAVE_S = 10.0
RESTART_BACKOFF_MS = 1000
COUNTERS = ("records_in", "records_out", "records_skipped", "records_dead_lettered")
STREAMD_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass(frozen=True, kw_only=True)
class Settings:
    enabled: bool = False
    memory_limit_bytes: int = 512 << 20
    record_timeout_ms: int = 10_000
    commit_interval_ms: int = 100
    max_restarts: int = 5
    restart_backoff_max_ms: int = 60_000
    stop_timeout_ms: int = 10_000
    nice: int = 10


@dataclass(frozen=True)
class PartitionProgress:
    partition: int
    committed: int | None
    end: int
    """The partition's last stable offset (what the worker can read up to)."""


class Closable(Protocol):
    def close(self) -> None: ...


class BrokerSide(Protocol):
    """What the supervisor needs from the broker (passed in by ``streamd.broker``)."""

    async def connect(self, sock: socket.socket) -> Closable:
        """Serve ``sock`` (which it then owns) as a Kafka connection of :data:`PRINCIPAL`;
        returns what closes that connection."""
        ...

    def progress(self, group_id: str, topic: str) -> list[PartitionProgress]: ...

    async def forget_group(self, group_id: str) -> None:
        """Delete the group that holds a deleted transform's positions."""
        ...


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Outcome:
    kind: str
    """stopped | failed | fatal | crash | memory | hang"""
    error: str = ""
    partition: int | None = None
    offset: int | None = None
    progressed: bool = False


class Runner:
    """One deployment's worker: start, watch, restart with backoff, stop."""

    def __init__(self, sup: Supervisor, stored: Stored) -> None:
        self.sup = sup
        self.stored = stored
        self.task: asyncio.Task[None] | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.state = "stopped"
        self.stopping = False
        self.wake = asyncio.Event()
        self.restarts = 0
        self.consecutive = 0
        self.started_at_ms: int | None = None
        self.running_at_ms: int | None = None
        """When the current worker finished starting (connected, fenced, positions read)."""
        self.last_hb = 0.0
        self.live: dict[str, Any] = {}
        """The running worker's last status line."""
        self.caught_up = False
        self.last_error: dict[str, Any] | None = stored.failed
        self.rss = 0
        self._kill_reason: Outcome | None = None
        self._term_sent: float | None = None

    @property
    def name(self) -> str:
        return self.stored.deployment.name

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self.task is not None and not self.task.done():
            return
        self.stopping = False
        self.caught_up = False
        self.wake.clear()
        self.task = asyncio.create_task(self._supervise(), name=f"transform-{self.name}")

    async def stop(self) -> None:
        """Stop the worker and the loop: SIGTERM (the worker commits its open transaction and
        exits), SIGKILL after ``stop_timeout_ms`` (see :meth:`_monitor`)."""
        self.stopping = True
        self.wake.set()
        self._terminate()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.task = None
        self.state = "stopped"

    def _terminate(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None and self._term_sent is None:
            self._term_sent = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    async def _supervise(self) -> None:
        backoff = RESTART_BACKOFF_MS
        settings = self.sup.settings
        while not self.stopping:
            try:
                outcome = await self._run_once()
            except Exception as exc:  # spawning failed (fds, fork): report, retry like a crash
                log.exception("transform %s: starting the worker failed", self.name)
                outcome = Outcome("crash", f"starting the worker failed: {exc}")
            self.proc = None
            self._fold_counters()
            if self.stopping or outcome.kind == "stopped":
                break
            if outcome.kind in ("failed", "fatal"):
                await self.sup._mark_failed(self, outcome)
                break
            self.restarts += 1
            self.consecutive = 1 if outcome.progressed else self.consecutive + 1
            if outcome.progressed:
                backoff = RESTART_BACKOFF_MS
            self._note(outcome)
            if self.consecutive > settings.max_restarts:
                await self.sup._mark_failed(
                    self,
                    replace(
                        outcome,
                        error=f"{outcome.error}; failed after {settings.max_restarts} "
                        "restart(s) without progress (transforms.max_restarts): fix it, then "
                        "resume",
                    ),
                )
                break
            self.state = "backoff"
            self.sup.event(self.name, f"restarting in {backoff / 1000:g} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), backoff / 1000)
            backoff = min(backoff * 2, settings.restart_backoff_max_ms)
        self.state = "stopped"

    def _note(self, outcome: Outcome) -> None:
        self.last_error = {
            "message": outcome.error,
            "kind": outcome.kind,
            "partition": outcome.partition,
            "offset": outcome.offset,
            "at_ms": now_ms(),
        }
        self.sup.event(self.name, f"worker {outcome.kind}: {outcome.error}", logging.WARNING)

    def _fold_counters(self) -> None:
        """Add the finished worker's counters to the stored totals."""
        live, self.live = self.live, {}
        counters = self.stored.counters
        for key, src in zip(
            COUNTERS, ("records_in", "records_out", "skipped", "dead_lettered"), strict=True
        ):
            counters[key] = counters.get(key, 0) + int(live.get(src, 0))

    def counters(self) -> dict[str, int]:
        out = dict.fromkeys(COUNTERS, 0)
        out.update(self.stored.counters)
        for key, src in zip(
            COUNTERS, ("records_in", "records_out", "skipped", "dead_lettered"), strict=True
        ):
            out[key] += int(self.live.get(src, 0))
        return out

    # ---- one worker process ---------------------------------------------------------------

    async def _run_once(self) -> Outcome:
        sup, dep = self.sup, self.stored.deployment
        self.state = "starting"
        self.caught_up = False
        self.running_at_ms = None
        self._kill_reason = None
        served: list[Closable] = []
        child_fds: list[int] = []
        status_r = -1
        try:
            ends = []
            for _ in range(2):
                ours, theirs = socket.socketpair()
                child_fds.append(theirs.detach())
                ends.append(child_fds[-1])
                try:
                    served.append(await sup.broker.connect(ours))
                except BaseException:
                    ours.close()
                    raise
            status_r, status_w = os.pipe()
            child_fds.append(status_w)
            config_path = await asyncio.to_thread(
                self._write_config, ends[0], ends[1], status_w
            )
            log_fd = os.open(
                sup.store.log_path(dep.name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
            )
            child_fds.append(log_fd)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "streamd.transforms.worker",
                str(config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                pass_fds=tuple(child_fds[:3]),
                env=self._environment(),
                cwd=str(sup.store.dir_of(dep.name)),
                start_new_session=True,
            )
        except BaseException:
            for fd in [*child_fds, status_r]:
                with contextlib.suppress(OSError):
                    os.close(fd)
            for connection in served:
                connection.close()
            raise
        for fd in child_fds:
            os.close(fd)
        self.proc = proc
        self._term_sent = None
        if self.stopping:
            self._terminate()
        self.started_at_ms = now_ms()
        self.last_hb = time.monotonic()
        self.state = "running"
        sup.event(dep.name, f"worker started (pid {proc.pid})")
        started: dict[str, Any] = {}
        outcome: Outcome | None = None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(status_r, "rb", 0)
        )
        monitor = asyncio.create_task(self._monitor(proc))
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                result = self._on_message(msg, started)
                if result is not None:
                    outcome = result
            code = await proc.wait()
        finally:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
            transport.close()
            for connection in served:
                connection.close()  # normally closed already, by the worker's exit
        progressed = self._progressed(started)
        if self._kill_reason is not None:
            return replace(self._kill_reason, progressed=progressed)
        if self.stopping and code in (0, -signal.SIGTERM, -signal.SIGKILL):
            return Outcome("stopped")
        if outcome is not None and code in (worker_mod.EXIT_FAILED, worker_mod.EXIT_FATAL):
            return replace(outcome, progressed=progressed)
        if outcome is not None and outcome.kind in ("crash", "memory"):
            return replace(outcome, progressed=progressed)
        if code == 0:
            return Outcome("crash", "the worker exited unasked", progressed=progressed)
        reason = f"signal {-code}" if code < 0 else f"exit code {code}"
        return Outcome("crash", f"the worker died ({reason})", progressed=progressed)

    def _on_message(self, msg: dict[str, Any], started: dict[str, Any]) -> Outcome | None:
        event = msg.get("event")
        if event == "hb":
            self.last_hb = time.monotonic()
        elif event == "status":
            self.last_hb = time.monotonic()
            self.live = msg
            self.caught_up = bool(msg.get("caught_up"))
        elif event == "started":
            started.update(msg.get("positions") or {})
            self.running_at_ms = now_ms()
            self.sup.event(
                self.name,
                f"worker running as producer {msg.get('producer_id')} epoch "
                f"{msg.get('producer_epoch')} from {msg.get('positions')}",
            )
        elif event == "record_error":
            self.last_error = {
                "message": msg.get("error"),
                "kind": msg.get("action"),
                "partition": msg.get("partition"),
                "offset": msg.get("offset"),
                "at_ms": now_ms(),
            }
        elif event == "failed":
            return Outcome("failed", str(msg.get("error")), msg.get("partition"), msg.get("offset"))
        elif event in ("fatal", "crash", "memory"):
            return Outcome(event, str(msg.get("error")))
        return None

    def _progressed(self, started: dict[str, Any]) -> bool:
        committed = self.live.get("committed") or {}
        return any(int(committed.get(p, -1)) > int(off) for p, off in started.items())

    async def _monitor(self, proc: asyncio.subprocess.Process) -> None:
        settings = self.sup.settings
        hb_limit = (settings.record_timeout_ms + HEARTBEAT_GRACE_MS) / 1000
        page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        saved, last_save = self.counters(), time.monotonic()
        while proc.returncode is None:
            await asyncio.sleep(MONITOR_INTERVAL_S)
            self.rss = _rss(proc.pid, page)
            if time.monotonic() - last_save >= COUNTERS_SAVE_S and self.counters() != saved:
                saved, last_save = self.counters(), time.monotonic()
                await self.sup.save_counters(self, saved)
            if self.stopping:
                self._terminate()
                waited = time.monotonic() - (self._term_sent or time.monotonic())
                if waited > settings.stop_timeout_ms / 1000:
                    log.warning("transform %s: worker ignored SIGTERM; killing it", self.name)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                continue
            silent = time.monotonic() - self.last_hb
            if silent > hb_limit:
                self._kill(
                    proc,
                    Outcome(
                        "hang",
                        f"no heartbeat for {silent:.0f} s: the transform is stuck in code "
                        "that does not return to Python (killed)",
                    ),
                )
            elif self.rss > settings.memory_limit_bytes:
                self._kill(
                    proc,
                    Outcome(
                        "memory",
                        f"the worker used {self.rss >> 20} MiB, above "
                        f"transforms.memory_limit_bytes ({settings.memory_limit_bytes >> 20} "
                        "MiB) (killed)",
                    ),
                )

    def _kill(self, proc: asyncio.subprocess.Process, outcome: Outcome) -> None:
        if self._kill_reason is None:
            self._kill_reason = outcome
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    def _write_config(self, fetch_fd: int, produce_fd: int, status_fd: int) -> Path:
        sup, dep = self.sup, self.stored.deployment
        policy, dlq = parse_on_error(dep.on_error)
        settings = sup.settings
        cfg = worker_mod.WorkerConfig(
            name=dep.name,
            input_topic=dep.input_topic,
            output_topics=list(dep.output_topics),
            on_error=policy,
            dead_letter=dlq,
            start=dep.start,
            code_path=str(sup.store.code_path(self.stored)),
            group_id=dep.group_id,
            transactional_id=dep.transactional_id,
            commit_interval_ms=settings.commit_interval_ms,
            record_timeout_ms=settings.record_timeout_ms,
            fetch_fd=fetch_fd,
            produce_fd=produce_fd,
            status_fd=status_fd,
            extra={
                "parent_pid": os.getpid(),
                "memory_limit_bytes": settings.memory_limit_bytes,
                "nice": settings.nice,
                "log_path": str(sup.store.log_path(dep.name)),
                "log_max_bytes": LOG_MAX_BYTES,
            },
        )
        path = sup.store.dir_of(dep.name) / "worker.json"
        path.write_text(json.dumps(cfg.__dict__, indent=1))
        return path

    def _environment(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": STREAMD_ROOT,
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "MALLOC_ARENA_MAX": "2",
        }
        env.update(self.stored.deployment.env)
        return env

    # ---- status ---------------------------------------------------------------------------

    def status(self, lag: int | None = None) -> str:
        """``catching-up`` until the worker has once read to the end of every input partition
        (or, seen from here, nothing is left to read); ``running`` from then on."""
        if self.stored.failed is not None:
            return "failed"
        if self.stored.paused:
            return "paused"
        return "running" if self.caught_up or lag == 0 else "catching-up"

    def describe(self) -> dict[str, Any]:
        dep = self.stored.deployment
        partitions = []
        total_lag = 0
        unknown = False
        for p in self.sup.broker.progress(dep.group_id, dep.input_topic):
            lag = None if p.committed is None else max(0, p.end - p.committed)
            if lag is not None:
                total_lag += lag
            else:
                unknown = True
            partitions.append(
                {"partition": p.partition, "committed_offset": p.committed,
                 "end_offset": p.end, "lag": lag}
            )
        doc = dep.summary()
        doc.update(
            {
                "dead_letter_topic": dep.dead_letter_topic,
                "from": doc.pop("start"),
                "status": self.status(None if unknown else total_lag),
                "partitions": partitions,
                "lag": total_lag,
                "last_error": self.last_error,
                "worker": {
                    "state": self.state,
                    "pid": self.proc.pid if self.proc is not None else None,
                    "restarts": self.restarts,
                    "started_at_ms": self.started_at_ms,
                    "running_at_ms": self.running_at_ms,
                    "rss_bytes": self.rss if self.proc is not None else None,
                    "seconds": self.live.get("seconds"),
                },
            }
        )
        doc.update(self.counters())
        return doc


def _rss(pid: int, page: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * page
    except (OSError, ValueError, IndexError):
        return 0


class Supervisor:
    """Every deployment of this broker and its :class:`Runner`."""

    def __init__(
        self, directory: Path, settings: Settings, broker: BrokerSide
    ) -> None:
        self.store = DeploymentStore(directory)
        self.settings = settings
        self.broker = broker
        self.runners: dict[str, Runner] = {}
        self._loaded = False
        self.lock = asyncio.Lock()
        self.on_change: list[Callable[[], Awaitable[None] | None]] = []

    async def load(self) -> None:
        """Load the stored deployments without starting anything: the broker does this before
        its admin API and listeners open, so a client never finds a stored deployment missing."""
        if self._loaded:
            return
        stored = await asyncio.to_thread(self.store.load)
        for name, s in stored.items():
            self.runners.setdefault(name, Runner(self, s))
        self._loaded = True

    async def open(self) -> None:
        """Load the stored deployments (unless :meth:`load` did) and, when transforms are
        enabled, start their workers (paused and failed ones stay as they are)."""
        await self.load()
        if self.settings.enabled:
            for runner in self.runners.values():
                if not runner.stored.paused and runner.stored.failed is None:
                    runner.start()
            if self.runners:
                log.info("transforms: %d deployment(s) loaded", len(self.runners))
        elif self.runners:
            log.warning(
                "transforms: %d deployment(s) stored but transforms.enabled is false: none "
                "runs", len(self.runners),
            )

    async def close(self) -> None:
        await asyncio.gather(*(r.stop() for r in self.runners.values()), return_exceptions=True)
        for runner in self.runners.values():
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.store.save, runner.stored)

    def event(self, name: str, message: str, level: int = logging.INFO) -> None:
        log.log(level, "transform %s: %s", name, message)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        self.store.append_log(name, f"{stamp} [streamd] {message}")

    def documents(self) -> list[dict[str, Any]]:
        """The deployments as the cluster metadata archive keeps them."""
        return self.store.documents({n: r.stored for n, r in self.runners.items()})

    # ---- operations -------------------------------------------------------------------------

    def get(self, name: str) -> Runner | None:
        return self.runners.get(name)

    async def deploy(self, dep: Deployment) -> Runner:
        """Create or replace a deployment and (re)start its worker."""
        async with self.lock:
            old = self.runners.get(name := dep.name)
            stored = Stored(dep)
            if old is not None:
                await old.stop()
                old._fold_counters()
                stored.counters = dict(old.stored.counters)
            await asyncio.to_thread(self.store.save, stored)
            runner = Runner(self, stored)
            self.runners[name] = runner
            self.event(name, f"deployed {dep.file_name} (sha256 {dep.code_sha256[:12]})")
            if self.settings.enabled:
                runner.start()
        await self._changed()
        return runner

    async def pause(self, name: str) -> Runner | None:
        async with self.lock:
            runner = self.runners.get(name)
            if runner is None:
                return None
            await runner.stop()
            runner.stored.paused = True
            await asyncio.to_thread(self.store.save, runner.stored)
            self.event(name, "paused")
        await self._changed()
        return runner

    async def resume(self, name: str) -> Runner | None:
        async with self.lock:
            runner = self.runners.get(name)
            if runner is None:
                return None
            runner.stored.paused = False
            runner.stored.failed = None
            runner.consecutive = 0
            await asyncio.to_thread(self.store.save, runner.stored)
            self.event(name, "resumed")
            if self.settings.enabled:
                runner.start()
        await self._changed()
        return runner

    async def delete(self, name: str) -> bool:
        async with self.lock:
            runner = self.runners.pop(name, None)
            if runner is None:
                return False
            await runner.stop()
            await self.broker.forget_group(runner.stored.deployment.group_id)
            await asyncio.to_thread(self.store.remove, name)
            log.info("transform %s: deleted", name)
        await self._changed()
        return True

    async def logs(self, name: str, lines: int) -> list[str] | None:
        if name not in self.runners:
            return None
        return await asyncio.to_thread(self.store.log_tail, name, lines)

    async def save_counters(self, runner: Runner, counters: dict[str, int]) -> None:
        """Store the running worker's counters so far (a kill -9 of the broker loses at most
        ``COUNTERS_SAVE_S`` of them); the stored totals themselves change only when a worker
        ends (:meth:`Runner._fold_counters`)."""
        stored = runner.stored
        snapshot = Stored(stored.deployment, stored.paused, stored.failed, dict(counters))
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self.store.save, snapshot)

    async def _mark_failed(self, runner: Runner, outcome: Outcome) -> None:
        failed = {
            "message": outcome.error,
            "kind": outcome.kind,
            "partition": outcome.partition,
            "offset": outcome.offset,
            "at_ms": now_ms(),
        }
        runner.stored.failed = failed
        runner.last_error = failed
        where = (
            f" at {runner.stored.deployment.input_topic}[{outcome.partition}]@{outcome.offset}"
            if outcome.offset is not None
            else ""
        )
        self.event(runner.name, f"failed{where}: {outcome.error}", logging.ERROR)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self.store.save, runner.stored)
        await self._changed()

    async def _changed(self) -> None:
        for fn in self.on_change:
            result = fn()
            if result is not None:
                await result
