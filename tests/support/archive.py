"""Helpers for tests that damage an archive on purpose and check what the broker and
``streamd restore`` make of it: faults are injected by editing objects in the bucket (through
moto's own S3 API, never by patching boto).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.broker import REPO_ROOT
from tests.support.moto import MotoS3


def health(admin_port: int) -> tuple[int, dict[str, Any]]:
    """``GET /v1/health``: (HTTP status, document); a 503 carries the document too."""
    url = f"http://127.0.0.1:{admin_port}/v1/health"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def flip_bit(moto: MotoS3, bucket: str, key: str, position: int, bit: int = 0) -> bytes:
    """Flip one bit of an object's body in place, keeping its user metadata (and so its
    streamd-crc32c stamp) as it was: bit rot the object store did not notice. Returns the
    original body."""
    body, meta = moto.get(bucket, key)
    rotten = bytearray(body)
    rotten[position] ^= 1 << bit
    moto.admin.put_object(Bucket=bucket, Key=key, Body=bytes(rotten), Metadata=meta)
    return body


def batches(body: bytes) -> list[tuple[int, int, int]]:
    """``(position, base offset, last offset)`` of every batch in segment bytes."""
    out = []
    pos = 0
    while pos + 61 <= len(body):
        base = int.from_bytes(body[pos : pos + 8], "big")
        length = int.from_bytes(body[pos + 8 : pos + 12], "big")
        delta = int.from_bytes(body[pos + 23 : pos + 27], "big")
        out.append((pos, base, base + delta))
        pos += 12 + length
    return out


def partition_manifest(moto: MotoS3, bucket: str, topic: str) -> tuple[str, Any]:
    """The (key, parsed manifest) of partition 0 of ``topic``."""
    from streamd.tiering.manifest import load_partition_manifest

    (key,) = [
        k for k in moto.objects(bucket) if f"/{topic}/" in k and k.endswith("/0/manifest.json")
    ]
    return key, load_partition_manifest(moto.get(bucket, key)[0])


def run_restore(
    settings: Mapping[str, str], data_dir: Path, *extra: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``streamd restore`` as an operator runs it (a subprocess), with the broker's settings."""
    cmd = [sys.executable, "-m", "streamd", "restore", "--no-progress",
           "--set", f"data_dir={data_dir}"]
    for key, value in settings.items():
        cmd += ["--set", f"{key}={value}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMD_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [*cmd, *extra], cwd=cwd or data_dir.parent, env=env, capture_output=True, text=True,
        timeout=60,
    )
