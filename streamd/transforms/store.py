"""Deployments on disk: ``data_dir/transforms/NAME/``.

Each transform has a directory holding ``deployment.json`` (the validated
:class:`~streamd.transforms.spec.Deployment`, code included, plus its lasting state: paused,
failed and why, counters) and, written from it, the code file the worker loads and the
worker's log (``worker.log``, rotated by the worker at ``LOG_MAX_BYTES``). ``deployment.json``
is replaced atomically (temp file, fsync, rename, fsync of the directory), so a crash leaves
the old or the new document, never a torn one; it is the only file read back at start-up.

The stored document is also what the cluster metadata archive carries (``streamd restore``
brings deployments back): :meth:`DeploymentStore.documents` / :meth:`DeploymentStore.restore`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamd.transforms.spec import Deployment, SpecError, check_name

log = logging.getLogger("streamd.transforms")

DOC = "deployment.json"
LOG = "worker.log"
LOG_MAX_BYTES = 1 << 20
FORMAT_VERSION = 1


@dataclass
class Stored:
    """A deployment and the state that outlives its worker."""

    deployment: Deployment
    paused: bool = False
    failed: dict[str, Any] | None = None
    """Set when the transform stopped for good (``--on-error stop``, code that does not
    load, or too many restarts without progress): the error, and the offset when known."""
    counters: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "deployment": self.deployment.to_json(),
            "paused": self.paused,
            "failed": self.failed,
            "counters": dict(self.counters),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Stored:
        if doc.get("format_version") != FORMAT_VERSION:
            raise SpecError(f"unknown format_version {doc.get('format_version')!r}")
        failed = doc.get("failed")
        return cls(
            deployment=Deployment.from_json(doc["deployment"]),
            paused=bool(doc.get("paused", False)),
            failed=dict(failed) if isinstance(failed, dict) else None,
            counters={str(k): int(v) for k, v in (doc.get("counters") or {}).items()},
        )


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DeploymentStore:
    """Blocking file operations (the supervisor runs them off the event loop)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def dir_of(self, name: str) -> Path:
        return self.directory / check_name(name)

    def code_path(self, stored: Stored) -> Path:
        return self.dir_of(stored.deployment.name) / "code" / stored.deployment.file_name

    def log_path(self, name: str) -> Path:
        return self.dir_of(name) / LOG

    def load(self) -> dict[str, Stored]:
        out: dict[str, Stored] = {}
        if not self.directory.is_dir():
            return out
        for entry in sorted(self.directory.iterdir()):
            path = entry / DOC
            if not path.is_file():
                continue
            try:
                stored = Stored.from_json(json.loads(path.read_bytes()))
            except (OSError, ValueError, KeyError, SpecError) as exc:
                log.error("transform %s: cannot read %s (%s); it is not started", entry.name,
                          path, exc)
                continue
            out[stored.deployment.name] = stored
        return out

    def save(self, stored: Stored) -> None:
        directory = self.dir_of(stored.deployment.name)
        (directory / "code").mkdir(parents=True, exist_ok=True)
        code = self.code_path(stored)
        if not code.is_file() or code.read_text() != stored.deployment.code:
            for old in (directory / "code").iterdir():
                old.unlink()
            write_atomically(code, stored.deployment.code.encode())
        write_atomically(directory / DOC, json.dumps(stored.to_json(), indent=1).encode())

    def remove(self, name: str) -> None:
        shutil.rmtree(self.dir_of(name), ignore_errors=True)

    def log_tail(self, name: str, lines: int) -> list[str]:
        """The last ``lines`` lines of the worker's log (the rotated file first)."""
        directory = self.dir_of(name)
        text = b""
        for path in (directory / (LOG + ".1"), directory / LOG):
            try:
                text += path.read_bytes()
            except FileNotFoundError:
                continue
        return text.decode(errors="replace").splitlines()[-lines:] if lines > 0 else []

    def append_log(self, name: str, line: str) -> None:
        try:
            with open(self.log_path(name), "a") as f:
                f.write(line.rstrip("\n") + "\n")
        except OSError:
            pass

    # ---- the cluster metadata archive -----------------------------------------------------

    @staticmethod
    def documents(stored: dict[str, Stored]) -> list[dict[str, Any]]:
        """Every deployment as the archive keeps it (sorted by name); counters are left out,
        so the archived document changes only when a deployment does."""
        out = []
        for name in sorted(stored):
            doc = stored[name].to_json()
            doc.pop("counters", None)
            out.append(doc)
        return out

    def restore(self, documents: list[dict[str, Any]]) -> list[str]:
        """Write archived deployments (``streamd restore``); returns their names."""
        names = []
        for doc in documents:
            stored = Stored.from_json(dict(doc, counters={}))
            self.save(stored)
            names.append(stored.deployment.name)
        return names
