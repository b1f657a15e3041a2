"""Burrow (LinkedIn's lag monitor, Debian's ``burrow`` 1.2) and the ZooKeeper it needs.

Burrow 1.2 keeps its own coordination state in ZooKeeper, so a single-node ZooKeeper (Debian's
``zookeeper`` package, started in the foreground with a throwaway data directory) runs beside
it on loopback. Burrow is configured as its packagers ship it for a Kafka cluster, with its
default client profile: sarama speaking Kafka 0.8's versions (Metadata v0, ListOffsets v0,
Fetch v0 with message format v0), and reading committed offsets from ``__consumer_offsets``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.broker import free_port

ZK_SERVER = Path("/usr/share/zookeeper/bin/zkServer.sh")


def available() -> str | None:
    """None when Burrow and ZooKeeper can run here, else what is missing."""
    missing = [n for n, ok in (("burrow", shutil.which("Burrow")), ("zookeeper",
               ZK_SERVER.exists()), ("java", shutil.which("java"))) if not ok]
    return f"not installed: {', '.join(missing)} (apt-get install burrow zookeeper)" if missing \
        else None


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float,
               probe: bytes = b"", expect: bytes = b"") -> None:
    """Wait until ``port`` accepts connections (and answers ``probe`` with ``expect``: a
    ZooKeeper that listens may not serve sessions yet; ``srvr`` says when it does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                if not probe:
                    return
                sock.sendall(probe)
                sock.settimeout(2)
                if sock.recv(64).startswith(expect):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"port {port} not open after {timeout}s:\n{log.read_text()[-3000:]}")


class Burrow:
    def __init__(self, workdir: Path, bootstrap: str) -> None:
        self.dir = workdir
        self.bootstrap = bootstrap
        self.zk_port = free_port()
        self.http_port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, args: list[str], log: Path, env: dict[str, str] | None = None
               ) -> subprocess.Popen[bytes]:
        out = log.open("wb")
        proc = subprocess.Popen(args, cwd=self.dir, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> Burrow:
        d = self.dir
        (d / "zk").mkdir(parents=True)
        (d / "zoo.cfg").write_text(
            f"tickTime=2000\ndataDir={d / 'zk'}\nclientPort={self.zk_port}\n"
            "clientPortAddress=127.0.0.1\nadmin.enableServer=false\n"
            "4lw.commands.whitelist=srvr\n"
        )
        zk_log = d / "zookeeper.log"
        zk = self._spawn([str(ZK_SERVER), "start-foreground", str(d / "zoo.cfg")], zk_log,
                         {"ZOO_LOG_DIR": str(d), "ZOO_LOG4J_PROP": "INFO,CONSOLE"})
        _wait_port(self.zk_port, zk, zk_log, 60, probe=b"srvr", expect=b"Zookeeper")
        servers = json.dumps([self.bootstrap])
        (d / "burrow.toml").write_text(f"""
[general]
pidfile="{d / 'burrow.pid'}"
[logging]
level="debug"
[zookeeper]
servers=["127.0.0.1:{self.zk_port}"]
timeout=6
root-path="/burrow"
[client-profile.packaged]
client-id="burrow-test"
[cluster.streamd]
class-name="kafka"
servers={servers}
client-profile="packaged"
topic-refresh=2
offset-refresh=1
[consumer.streamd]
class-name="kafka"
cluster="streamd"
servers={servers}
client-profile="packaged"
offsets-topic="__consumer_offsets"
[httpserver.default]
address="127.0.0.1:{self.http_port}"
[storage.default]
class-name="inmemory"
workers=4
intervals=10
min-distance=1
""")
        burrow_log = d / "burrow.log"
        burrow = self._spawn([str(shutil.which("Burrow")), "--config-dir", str(d)], burrow_log)
        _wait_port(self.http_port, burrow, burrow_log, 60)
        return self

    def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read() or b"{}")

    def log_tail(self, lines: int = 60) -> str:
        path = self.dir / "burrow.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if \
            path.exists() else ""

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
