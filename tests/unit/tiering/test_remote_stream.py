"""Remote reads over a store that streams ranged GETs (``read_range``): a read is answered from
the checksum blocks that have arrived and matched, before the rest of the chunk is here; a block
that fails its checksum is never served, nor cached. The store is the local-directory store
behind a wrapper that delivers each range in pieces and can hold or damage them (a slow or
bit-rotting bucket), so the test decides what has arrived."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from streamd.errors import RemoteStorageError
from streamd.log.batch import validate_produce_batches
from streamd.tiering import remote_reader
from streamd.tiering.segment_index import BLOCK_SIZE
from tests.unit.tiering.test_service import Env, fill

PIECE = 16 * 1024
CHUNK = 4 * BLOCK_SIZE
STREAMED = {
    "remote.storage.enable": "true",
    "segment.bytes": str(6 * BLOCK_SIZE),
    "index.interval.bytes": "4096",
    "local.retention.bytes": "5000",
}


class StreamingStore:
    """A store whose ranged reads stream: pieces of ``PIECE`` bytes; once ``hold_at`` (an
    object position) is reached the stream waits for ``gate``; the bit at ``flip`` (an object
    position) of segment objects arrives flipped."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.hold_at: int | None = None
        self.gate = asyncio.Event()
        self.flip: int | None = None
        self.held = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def read_range(
        self, key: str, byte_range: tuple[int, int], consume: Callable[[bytes], None]
    ) -> int:
        lo, _ = byte_range
        data = bytearray(await self.inner.get(key, byte_range=byte_range))
        if self.flip is not None and key.endswith(".log") and lo <= self.flip < lo + len(data):
            data[self.flip - lo] ^= 0x01
        for at in range(0, len(data), PIECE):
            if self.hold_at is not None and lo + at >= self.hold_at and not self.gate.is_set():
                self.held.set()
                await self.gate.wait()
            consume(bytes(data[at : at + PIECE]))
        return len(data)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = Env(tmp_path)
    yield e
    if e.service is not None:
        e.logs.tiering_veto = None
        await e.service.close()
    await e.logs.close()


async def archived(env: Env, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, StreamingStore, int]:
    """A tiered partition whose first object is several blocks long, its local copy deleted;
    returns the service, the store and the size of one batch."""
    monkeypatch.setattr(remote_reader, "READY_MIN_BYTES", PIECE)
    store = StreamingStore(env.bucket)
    env.store = store  # type: ignore[assignment]
    env.logs.create_topic("t", 1, STREAMED)
    batches = await fill(env.logs, "t", 1400)
    service = await env.open_service(chunk=CHUNK, cache_max=1 << 24, read_ahead_chunks=0)
    await env.tick_and_housekeep()
    first = service._states[("t", 0)].manifest.segments[0]
    assert first.size_bytes > 4 * BLOCK_SIZE
    assert env.logs.partition("t", 0).log_start_offset > first.last_offset
    return service, store, len(batches[0])


def offset_at(position: int, batch: int) -> int:
    return position // batch * 5  # fill() writes batches of 5 records, all the same size


async def test_a_read_is_served_from_the_blocks_that_have_arrived(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, store, batch = await archived(env, monkeypatch)
    store.hold_at = 2 * BLOCK_SIZE
    early = await asyncio.wait_for(service.read("t", 0, 0, 8 * PIECE, True), 5)
    assert store.held.is_set() and not store.gate.is_set(), "answered while the GET is held"
    headers = validate_produce_batches(early, 1 << 30)
    assert headers[0].base_offset == 0 and len(early) <= 2 * BLOCK_SIZE
    target = offset_at(3 * BLOCK_SIZE, batch)
    later = asyncio.create_task(service.read("t", 0, target, PIECE, True))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not later.done(), "bytes that have not arrived are waited for"
    store.gate.set()
    data = await later
    first = validate_produce_batches(data, 1 << 30)[0]
    assert first.base_offset <= target <= first.last_offset


async def test_a_block_that_fails_its_checksum_is_never_served(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, store, batch = await archived(env, monkeypatch)
    store.hold_at = 2 * BLOCK_SIZE
    store.flip = 2 * BLOCK_SIZE + 100  # inside block 2: arrives after the hold
    early = await asyncio.wait_for(service.read("t", 0, 0, 8 * PIECE, True), 5)
    assert validate_produce_batches(early, 1 << 30)[0].base_offset == 0
    store.gate.set()
    with pytest.raises(RemoteStorageError, match="checksum"):
        await service.read("t", 0, offset_at(2 * BLOCK_SIZE + 100, batch), PIECE, True)
    assert service.stats.download_errors >= 1
    store.flip = None  # the bucket heals (or was a bad transfer): nothing bad was kept
    healed = await service.read("t", 0, offset_at(2 * BLOCK_SIZE + 100, batch), PIECE, True)
    assert validate_produce_batches(healed, 1 << 30)
