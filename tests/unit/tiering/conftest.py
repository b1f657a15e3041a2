"""Fixtures for the tiering tests: a real moto S3 server (HTTP, never patched) and stores.

The moto server runs once per test session as a subprocess on a free loopback port; each test
that needs S3 gets a fresh bucket, so tests never see each other's objects.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streamd.tiering.local_store import LocalStore
from streamd.tiering.s3_store import S3Options, S3Store
from streamd.tiering.store import ObjectStore
from tests.support.broker import free_port
from tests.support.moto import ACCESS_KEY, REGION, SECRET_KEY, start_moto

__all__ = ["MotoServer", "free_port"]


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
    proc, moto = start_moto(tmp_path_factory.mktemp("moto"))
    try:
        yield MotoServer(endpoint_url=moto.endpoint_url, admin=moto.admin)
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
