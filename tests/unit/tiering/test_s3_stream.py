"""``S3Store.read_range`` against a real moto server: pieces in order, a broken transfer resumes
where it stopped (one more GET, for the rest only), a consumer's error ends it without retry."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from streamd.broker.metered_store import MeteredStore
from streamd.errors import RemoteStorageError
from streamd.tiering.local_store import LocalStore
from streamd.tiering.s3_store import S3Store

from .conftest import MotoServer


@dataclass
class CuttingProxy:
    """TCP proxy to moto that resets the first connection whose response passes ``cut_after``
    bytes, once that many went through; it records the Range header of every GET."""

    target_port: int
    cut_after: int
    port: int = 0
    cuts: int = 0
    ranges: list[str] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def requests() -> None:
            while data := await reader.read(65536):
                for found in re.findall(rb"(?i)\r\nrange: (bytes=[0-9-]+)", data):
                    self.ranges.append(found.decode())
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def responses() -> None:
            sent = 0
            while data := await up_reader.read(65536):
                if self.cuts == 0 and sent + len(data) > self.cut_after:
                    self.cuts += 1
                    writer.write(data[: self.cut_after - sent])
                    await writer.drain()
                    writer.transport.abort()
                    up_writer.transport.abort()
                    return
                sent += len(data)
                writer.write(data)
                await writer.drain()
            writer.close()

        await asyncio.gather(requests(), responses(), return_exceptions=True)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def cutting(moto_server: MotoServer) -> AsyncIterator[CuttingProxy]:
    port = int(moto_server.endpoint_url.rsplit(":", 1)[1])
    proxy = CuttingProxy(target_port=port, cut_after=1 << 20)
    await proxy.start()
    yield proxy
    await proxy.close()


async def test_a_broken_transfer_resumes_where_it_stopped(
    moto_server: MotoServer, cutting: CuttingProxy
) -> None:
    bucket = moto_server.new_bucket()
    blob = os.urandom(3 << 20)
    moto_server.admin.put_object(Bucket=bucket, Key="seg.log", Body=blob)
    options = moto_server.options(endpoint_url=f"http://127.0.0.1:{cutting.port}")
    store = S3Store(bucket, options=options)
    pieces: list[bytes] = []
    try:
        got = await store.read_range("seg.log", (1000, len(blob) - 7), pieces.append)
    finally:
        await store.close()
    assert cutting.cuts == 1, "the proxy broke the first transfer"
    assert got == len(blob) - 1007
    assert b"".join(pieces) == blob[1000 : len(blob) - 7]
    assert len(pieces) > 2, "delivered piece by piece as the bytes arrive"
    assert store.requests["GET"] == 2
    first, second = cutting.ranges
    assert first == f"bytes=1000-{len(blob) - 8}"
    resumed_at = int(second.removeprefix("bytes=").split("-")[0])
    assert 1000 < resumed_at < len(blob) - 7, "the retry asks only for what did not arrive"


async def test_an_error_of_the_consumer_ends_the_transfer_without_a_retry(
    moto_server: MotoServer,
) -> None:
    bucket = moto_server.new_bucket()
    blob = os.urandom(2 << 20)
    moto_server.admin.put_object(Bucket=bucket, Key="seg.log", Body=blob)
    store = S3Store(bucket, options=moto_server.options())
    seen = 0

    def consume(piece: bytes) -> None:
        nonlocal seen
        seen += len(piece)
        raise RemoteStorageError("block 0 does not match its checksum")

    try:
        with pytest.raises(RemoteStorageError, match="checksum"):
            await store.read_range("seg.log", (0, len(blob)), consume)
        assert await store.read_range("seg.log", (len(blob) - 10, len(blob) + 50), bytes) == 10
    finally:
        await store.close()
    assert 0 < seen < len(blob)
    assert store.requests["GET"] == 2, "no retry after the consumer's error"


class Meter:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def store_call(self, verb: str, outcome: str, seconds: float) -> None:
        self.calls.append((verb, outcome))


async def test_the_brokers_metered_store_streams_when_its_store_can(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    """The broker hands the tiering service a MeteredStore: without ``read_range`` on it every
    remote read would wait for whole chunks."""
    bucket = moto_server.new_bucket()
    blob = os.urandom(300_000)
    moto_server.admin.put_object(Bucket=bucket, Key="seg.log", Body=blob)
    meter = Meter()
    s3 = S3Store(bucket, options=moto_server.options())
    try:
        metered = MeteredStore(s3, meter)
        pieces: list[bytes] = []
        assert await metered.read_range("seg.log", (10, 300_000), pieces.append) == 299_990
        assert b"".join(pieces) == blob[10:]
        assert meter.calls == [("get_range", "ok")]
    finally:
        await s3.close()
    assert getattr(MeteredStore(LocalStore(tmp_path), meter), "read_range", None) is None
