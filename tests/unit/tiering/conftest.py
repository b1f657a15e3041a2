"""Fixtures for the tiering tests: a real moto S3 server (HTTP, never patched) and stores.

The moto server runs once per test session as a subprocess on a free loopback port; each test
that needs S3 gets a fresh bucket, so tests never see each other's objects.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from streamd.tiering.local_store import LocalStore
from streamd.tiering.s3_store import S3Options, S3Store
from streamd.tiering.store import ObjectStore

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class MotoServer:
    endpoint_url: str
    admin: Any  # a plain boto3 S3 client for setting up and tampering

    def new_bucket(self) -> str:
        bucket = f"streamd-test-{uuid.uuid4().hex[:16]}"
        self.admin.create_bucket(Bucket=bucket)
        return bucket

    def options(self, **overrides: Any) -> S3Options:
        settings: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "region": REGION,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "max_attempts": 3,
            "base_delay_s": 0.01,
            "max_delay_s": 0.05,
            "connect_timeout_s": 2.0,
            "read_timeout_s": 10.0,
        }
        settings.update(overrides)
        return S3Options(**settings)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto_server exited with {proc.returncode}: {log_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not listen on port {port} within 30s")
                time.sleep(0.05)
        endpoint = f"http://127.0.0.1:{port}"
        admin = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )
        yield MotoServer(endpoint_url=endpoint, admin=admin)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class StoreUnderTest:
    """A store plus backend-specific helpers the contract tests need."""

    kind: str
    store: ObjectStore
    raw_path: Any  # key -> where the raw bytes live (Path for local, (bucket, key) for S3)
    moto: MotoServer | None = None


@pytest.fixture(params=["local", "s3", "s3-prefixed"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreUnderTest]:
    kind = request.param
    if kind == "local":
        root = tmp_path / "objects"
        store: ObjectStore = LocalStore(root)
        sut = StoreUnderTest(kind, store, lambda key: root / key)
    else:
        moto: MotoServer = request.getfixturevalue("moto_server")
        bucket = moto.new_bucket()
        prefix = "cluster-a/streamd" if kind == "s3-prefixed" else ""
        store = S3Store(bucket, prefix=prefix, options=moto.options())
        full = (lambda key: (bucket, f"{prefix}/{key}")) if prefix else (lambda key: (bucket, key))
        sut = StoreUnderTest(kind, store, full, moto)
    try:
        yield sut
    finally:
        await store.close()
