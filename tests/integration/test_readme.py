"""Every example in README.md, verbatim and in order, against a broker started as `make serve`
starts it (issue 18 item 1: the first copy-paste used to exit 0 having done nothing).

The README's ``sh`` and ``python`` blocks run in a scratch directory holding a copy of
``config/streamd.toml`` (so ``./data/...`` lands there, not in the repository), with the
venv's ``streamd`` on PATH. Each shell line must exit 0, each Python block too. How lines that
are not client commands are played:

- ``make serve`` runs the Makefile's recipe (``streamd serve --config config/streamd.toml``)
  and ``streamd serve ...`` runs as written, in the background, replacing the broker that ran
  before (as a reader presses Ctrl-C and starts the next one); the next line waits for Kafka.
- ``make test`` is skipped (it would run this suite).
- A block after ``<!-- readme-test: skip (...) -->`` is not run (synopses, production examples).
- ``<!-- readme-test: after uploads of TOPIC, stop the broker -->`` waits until the admin API
  reports the topic's uploads caught up, then stops the broker, as the prose asks the reader to.

The broker listens where ``config/streamd.toml`` says (127.0.0.1:9092 and :9644), as the
examples expect; the test fails at once, naming the port, if something else holds it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.broker import REPO_ROOT

pytestmark = [pytest.mark.streamd_only]

KAFKA = ("127.0.0.1", 9092)
ADMIN_PORT = 9644
MAKE_SERVE = "streamd serve --config config/streamd.toml"


@dataclass
class Block:
    language: str
    code: str
    marker: str


def readme_blocks(text: str) -> list[Block]:
    blocks = []
    marker = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        found = re.fullmatch(r"<!-- readme-test: (.*) -->", line.strip())
        if found:
            marker = found.group(1)
        elif line.startswith("```") and line[3:].strip():
            language = line[3:].strip()
            body = []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append(Block(language, "\n".join(body) + "\n", marker))
            marker = ""
        i += 1
    return blocks


def shell_commands(code: str) -> list[str]:
    """Lines of a shell block, ``\\`` continuations joined, blank and comment lines dropped;
    a here-document (``<<'EOF'`` ... ``EOF``) stays one command with its lines."""
    out, pending = [], ""
    lines = iter(code.splitlines())
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        heredoc = re.search(r"<<-?\s*'?\"?(\w+)'?\"?", full)
        if heredoc:
            body = []
            for more in lines:
                body.append(more)
                if more.strip() == heredoc.group(1):
                    break
            full = "\n".join([full, *body])
        if full and not full.startswith("#"):
            out.append(full)
    return out


class Session:
    def __init__(self, workdir: Path, log: Path) -> None:
        self.workdir = workdir
        self.log = log
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMD_")}
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["PYTHONPATH"] = str(REPO_ROOT)
        self.env["STREAMD_CONFIG_DIR"] = str(workdir / "cli-config")
        self.broker: subprocess.Popen[bytes] | None = None

    def serve(self, command: str) -> None:
        self.stop()
        for port in (KAFKA[1], ADMIN_PORT):
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", port)) != 0, (
                    f"port {port} is in use: the README examples need it (stop `make serve`?)"
                )
        with self.log.open("ab") as out:
            out.write(f"\n=== {command}\n".encode())
            out.flush()
            self.broker = subprocess.Popen(
                ["bash", "-c", f"exec {command}"], cwd=self.workdir, env=self.env,
                stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.broker.poll() is None, "broker exited:\n" + self.log.read_text()[-3000:]
            try:
                socket.create_connection(KAFKA, timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("broker did not listen on 9092:\n" + self.log.read_text()[-3000:])

    def stop(self) -> None:
        if self.broker is not None and self.broker.poll() is None:
            self.broker.send_signal(signal.SIGTERM)
            assert self.broker.wait(60) == 0, self.log.read_text()[-3000:]
        self.broker = None

    def run_shell(self, command: str) -> None:
        bare = re.sub(r"\s+#.*$", "", command)
        if bare == "make test":
            return
        if bare == "make serve":
            self.serve(MAKE_SERVE)
            return
        if bare.startswith("streamd serve "):
            self.serve(bare)
            return
        proc = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command], cwd=self.workdir, env=self.env,
            capture_output=True, text=True, timeout=180,
        )
        assert proc.returncode == 0, (
            f"README command failed ({proc.returncode}): {command}\n"
            f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}"
        )
        assert "Traceback" not in proc.stderr, proc.stderr

    def run_python(self, code: str) -> None:
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=self.workdir, env=self.env,
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, f"README snippet failed:\n{code}\n{proc.stderr[-3000:]}"

    def wait_for_uploads(self, topic: str) -> None:
        def report() -> dict[str, object]:
            url = f"http://127.0.0.1:{ADMIN_PORT}/v1/topics/{topic}/storage"
            with urllib.request.urlopen(url, timeout=10) as resp:
                return json.loads(resp.read())  # type: ignore[no-any-return]

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            parts = report()["partitions"]
            assert isinstance(parts, list)
            if any(p["remote_segments"] for p in parts) and not any(
                p["pending_uploads"] for p in parts
            ):
                return
            time.sleep(0.5)
        raise AssertionError(f"uploads of {topic} did not catch up: {report()}")


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    workdir = tmp_path / "readme"
    (workdir / "config").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "config" / "streamd.toml", workdir / "config" / "streamd.toml")
    s = Session(workdir, tmp_path / "broker.log")
    try:
        yield s
    finally:
        s.stop()


def test_makefile_serve_recipe_is_what_the_test_runs() -> None:
    recipe = (REPO_ROOT / "Makefile").read_text()
    assert "$(BIN)/" + MAKE_SERVE in recipe


def test_every_readme_example_runs_in_order(session: Session) -> None:
    blocks = readme_blocks((REPO_ROOT / "README.md").read_text())
    ran = 0
    for block in blocks:
        if block.marker.startswith("skip"):
            continue
        waiting = re.fullmatch(r"after uploads of (\S+), stop the broker", block.marker)
        if waiting:
            session.wait_for_uploads(waiting.group(1))
            session.stop()
        elif block.marker:
            raise AssertionError(f"unknown readme-test marker {block.marker!r}")
        if block.language == "python":
            session.run_python(block.code)
            ran += 1
        elif block.language == "sh":
            for command in shell_commands(block.code):
                session.run_shell(command)
                ran += 1
    assert ran >= 20, f"only {ran} README examples ran"
    assert session.broker is not None and session.broker.poll() is None
