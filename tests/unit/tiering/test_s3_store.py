"""S3-only behaviour against a real moto server: fail-fast errors, retries, put-if-absent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from streamd.tiering.s3_store import S3Store
from streamd.tiering.store import StoreAccessError, StoreError

from .conftest import MotoServer, free_port

SLOW_DOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s"
)
SLOW_DOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class FlakyProxy:
    """TCP proxy to moto that answers the first ``failures`` connections with 503 SlowDown."""

    target_port: int
    failures: int
    port: int = 0
    rejected: int = 0
    server: asyncio.Server | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.rejected < self.failures:
            self.rejected += 1
            await reader.readuntil(b"\r\n\r\n")
            writer.write(SLOW_DOWN % (len(SLOW_DOWN_BODY), SLOW_DOWN_BODY))
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def bucket(moto_server: MotoServer) -> str:
    return moto_server.new_bucket()


@pytest.fixture
async def flaky(moto_server: MotoServer) -> AsyncIterator[FlakyProxy]:
    port = int(moto_server.endpoint_url.rsplit(":", 1)[1])
    proxy = FlakyProxy(target_port=port, failures=2)
    await proxy.start()
    yield proxy
    await proxy.close()


async def test_missing_bucket_fails_fast_and_names_it(moto_server: MotoServer) -> None:
    store = S3Store("no-such-bucket-here", options=moto_server.options(max_attempts=5))
    try:
        started = time.monotonic()
        for op in (store.check(), store.put("k", b"x"), store.get("k")):
            with pytest.raises(StoreAccessError, match="no-such-bucket-here") as info:
                await op
            assert moto_server.endpoint_url in str(info.value)
        assert store.retries == 0
        assert time.monotonic() - started < 2
    finally:
        await store.close()


async def test_unreachable_endpoint_is_retried_then_reported(moto_server: MotoServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    store = S3Store(
        "bucket-x",
        options=moto_server.options(
            endpoint_url=dead, max_attempts=2, base_delay_s=0.001, max_delay_s=0.01
        ),
    )
    try:
        started = time.monotonic()
        with pytest.raises(StoreError) as info:
            await store.put("k", b"x")
        assert info.value.retriable
        assert "gave up after 2 attempts" in str(info.value)
        assert dead in str(info.value)
        assert (dict(store.requests), store.retries) == ({"PUT": 2}, 1)
        assert time.monotonic() - started < 5
    finally:
        await store.close()


async def test_throttling_is_retried_until_it_succeeds(
    moto_server: MotoServer, bucket: str, flaky: FlakyProxy
) -> None:
    store = S3Store(
        bucket,
        options=moto_server.options(endpoint_url=f"http://127.0.0.1:{flaky.port}", max_attempts=4),
    )
    try:
        await store.put("seg.log", b"payload")
        assert flaky.rejected == 2
        assert store.retries == 2
        assert await store.get("seg.log") == b"payload"
    finally:
        await store.close()


async def test_persistent_throttling_gives_up_after_max_attempts(
    moto_server: MotoServer, bucket: str, flaky: FlakyProxy
) -> None:
    flaky.failures = 100
    store = S3Store(
        bucket,
        options=moto_server.options(endpoint_url=f"http://127.0.0.1:{flaky.port}", max_attempts=3),
    )
    try:
        with pytest.raises(StoreError, match="SlowDown") as info:
            await store.get("seg.log")
        assert info.value.retriable
        assert flaky.rejected == 3
    finally:
        await store.close()


async def test_objects_carry_crc32c_in_user_metadata(moto_server: MotoServer, bucket: str) -> None:
    store = S3Store(bucket, prefix="pre", options=moto_server.options())
    try:
        await store.put("k/seg.log", b"123456789")
    finally:
        await store.close()
    head = moto_server.admin.head_object(Bucket=bucket, Key="pre/k/seg.log")
    assert head["Metadata"] == {"streamd-crc32c": "e3069283"}


async def test_head_then_put_fallback_when_conditional_writes_are_off(
    moto_server: MotoServer, bucket: str
) -> None:
    store = S3Store(bucket, options=moto_server.options(conditional_writes=False))
    try:
        await store.put("k", b"1", if_absent=True)
        with pytest.raises(StoreError):
            await store.put("k", b"2", if_absent=True)
        assert await store.get("k") == b"1"
    finally:
        await store.close()


async def test_close_is_idempotent_and_client_is_reopened_lazily(
    moto_server: MotoServer, bucket: str
) -> None:
    store = S3Store(bucket, options=moto_server.options())
    await store.put("k", b"v")
    await store.close()
    await store.close()
    assert await store.get("k") == b"v"
    await store.close()
