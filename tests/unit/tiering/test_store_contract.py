"""The object-store contract, written once and run against every backend (local dir, moto S3)."""

from __future__ import annotations

import asyncio
import os

import pytest

from streamd.errors import RemoteStorageError
from streamd.tiering.checksum import crc32c_hex
from streamd.tiering.store import (
    CHECKSUM_METADATA_KEY,
    InvalidKey,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    RangeNotSatisfiable,
)

from .conftest import StoreUnderTest

DATA = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable


async def listed(store: ObjectStore, prefix: str = "") -> list[ObjectInfo]:
    return [info async for info in store.list(prefix)]


def test_backends_satisfy_protocol(backend: StoreUnderTest) -> None:
    assert isinstance(backend.store, ObjectStore)


async def test_put_get_round_trip_and_overwrite(backend: StoreUnderTest) -> None:
    store = backend.store
    await store.put("a1b2c3d4/topic/id/0/seg.log", DATA)
    assert await store.get("a1b2c3d4/topic/id/0/seg.log") == DATA
    await store.put("a1b2c3d4/topic/id/0/seg.log", b"replaced")
    assert await store.get("a1b2c3d4/topic/id/0/seg.log") == b"replaced"
    await store.put("empty", b"")
    assert await store.get("empty") == b""


async def test_large_object_round_trip(backend: StoreUnderTest) -> None:
    blob = os.urandom(3 * 1024 * 1024 + 17)
    await backend.store.put("big/object.log", blob)
    assert await backend.store.get("big/object.log") == blob
    assert (
        await backend.store.get("big/object.log", byte_range=(1 << 20, (2 << 20) + 5))
        == blob[1 << 20 : (2 << 20) + 5]
    )


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, 1), (0, 10240), (3, 10), (10239, 10240), (100, 20000), (0, 1 << 30), (5, 5)],
)
async def test_ranged_get_is_half_open(backend: StoreUnderTest, start: int, end: int) -> None:
    await backend.store.put("r/obj", DATA)
    assert await backend.store.get("r/obj", byte_range=(start, end)) == DATA[start:end]


async def test_range_starting_past_the_end_is_an_error(backend: StoreUnderTest) -> None:
    await backend.store.put("r/obj", DATA)
    with pytest.raises(RangeNotSatisfiable):
        await backend.store.get("r/obj", byte_range=(len(DATA), len(DATA) + 10))
    with pytest.raises(ValueError):
        await backend.store.get("r/obj", byte_range=(10, 5))


async def test_head(backend: StoreUnderTest) -> None:
    store = backend.store
    assert await store.head("h/missing") is None
    await store.put("h/obj", DATA, metadata={"Streamd-Kind": "segment"})
    info = await store.head("h/obj")
    assert info is not None
    assert (info.key, info.size) == ("h/obj", len(DATA))
    assert info.crc32c == crc32c_hex(DATA)
    assert info.metadata["streamd-kind"] == "segment"
    assert info.etag


async def test_missing_key(backend: StoreUnderTest) -> None:
    with pytest.raises(ObjectNotFound):
        await backend.store.get("nope/never.log")
    with pytest.raises(ObjectNotFound):
        await backend.store.get("nope/never.log", byte_range=(0, 10))


async def test_list_is_string_prefix_in_key_order(backend: StoreUnderTest) -> None:
    store = backend.store
    keys = ["a/b/2", "a/b/1", "a/c/1", "ab/1", "b", "a/bc"]
    await asyncio.gather(*(store.put(k, k.encode()) for k in keys))
    assert [i.key for i in await listed(store)] == sorted(keys)
    assert [i.key for i in await listed(store, "a/")] == ["a/b/1", "a/b/2", "a/bc", "a/c/1"]
    assert [i.key for i in await listed(store, "a")] == ["a/b/1", "a/b/2", "a/bc", "a/c/1", "ab/1"]
    assert [i.key for i in await listed(store, "a/b")] == ["a/b/1", "a/b/2", "a/bc"]
    assert [i.key for i in await listed(store, "a/b/")] == ["a/b/1", "a/b/2"]
    assert await listed(store, "zz") == []
    sizes = {i.key: i.size for i in await listed(store)}
    assert sizes == {k: len(k) for k in keys}


async def test_list_pages_through_everything(backend: StoreUnderTest) -> None:
    if backend.kind != "local":
        backend.store._list_page_size = 2  # type: ignore[attr-defined]
    keys = [f"p/{i:03d}" for i in range(7)]
    for k in keys:
        await backend.store.put(k, b"x")
    assert [i.key for i in await listed(backend.store, "p/")] == keys


async def test_delete_and_delete_many(backend: StoreUnderTest) -> None:
    store = backend.store
    for k in ("d/1", "d/2", "d/3", "d/sub/4"):
        await store.put(k, b"x")
    await store.delete("d/1")
    await store.delete("d/1")  # idempotent
    assert await store.head("d/1") is None
    with pytest.raises(ObjectNotFound):
        await store.get("d/1")
    await store.delete_many(["d/2", "d/sub/4", "d/missing"])
    await store.delete_many([])
    assert [i.key for i in await listed(store)] == ["d/3"]
    await store.put("d/sub/4", b"again")  # pruned directories come back on demand
    assert await store.get("d/sub/4") == b"again"


async def test_put_if_absent(backend: StoreUnderTest) -> None:
    store = backend.store
    await store.put("m/manifest.json", b"first", if_absent=True)
    with pytest.raises(ObjectExists):
        await store.put("m/manifest.json", b"second", if_absent=True)
    assert await store.get("m/manifest.json") == b"first"
    await store.put("m/manifest.json", b"third")
    assert await store.get("m/manifest.json") == b"third"


async def test_put_if_absent_races_have_one_winner(backend: StoreUnderTest) -> None:
    results = await asyncio.gather(
        *(backend.store.put("race/key", f"w{i}".encode(), if_absent=True) for i in range(8)),
        return_exceptions=True,
    )
    winners = [i for i, r in enumerate(results) if r is None]
    assert len(winners) == 1
    assert all(isinstance(r, ObjectExists) for r in results if r is not None)
    assert await backend.store.get("race/key") == f"w{winners[0]}".encode()


@pytest.mark.parametrize(
    "key", ["", "/abs/key", "../escape", "a/../../b", "a//b", "a/./b", "a/", "a\\b"]
)
async def test_unsafe_keys_are_rejected(backend: StoreUnderTest, key: str) -> None:
    with pytest.raises(InvalidKey):
        await backend.store.put(key, b"x")
    with pytest.raises(InvalidKey):
        await backend.store.get(key)


async def test_corrupted_object_is_never_returned(backend: StoreUnderTest) -> None:
    store = backend.store
    await store.put("c/seg.log", DATA)
    if backend.kind == "local":
        path = backend.raw_path("c/seg.log")
        raw = bytearray(path.read_bytes())
        raw[-1] ^= 0xFF
        path.write_bytes(bytes(raw))
    else:
        assert backend.moto is not None
        bucket, full_key = backend.raw_path("c/seg.log")
        backend.moto.admin.put_object(
            Bucket=bucket,
            Key=full_key,
            Body=DATA[:-1] + b"?",
            Metadata={CHECKSUM_METADATA_KEY: crc32c_hex(DATA)},
        )
    with pytest.raises(RemoteStorageError, match="checksum mismatch"):
        await store.get("c/seg.log")


async def test_check_accepts_a_usable_store(backend: StoreUnderTest) -> None:
    await backend.store.check()


@pytest.mark.parametrize("size", [0, 1000, 12 * 1024 * 1024 + 5])
async def test_put_file_streams_a_file_in_parts(
    backend: StoreUnderTest, tmp_path, size: int
) -> None:  # noqa: ANN001
    store = backend.store
    if hasattr(store, "part_size"):
        store.part_size = 5 * 1024 * 1024  # S3's smallest part: 12 MiB go up in 3 parts
    blob = os.urandom(size)
    path = tmp_path / "seg.log"
    path.write_bytes(blob + b"tail that is not part of the object")
    fd = os.open(path, os.O_RDONLY)
    try:
        await store.put_file("f/seg.log", fd, size, checksum=crc32c_hex(blob))
        with pytest.raises(RemoteStorageError, match="changed"):
            await store.put_file("f/other.log", fd, size + 1, checksum=crc32c_hex(blob))
    finally:
        os.close(fd)
    assert await store.get("f/seg.log") == blob
    info = await store.head("f/seg.log")
    assert info is not None and info.size == size
    assert info.metadata[CHECKSUM_METADATA_KEY] == crc32c_hex(blob)
    if hasattr(store, "part_size") and size > store.part_size:
        assert (info.etag or "").strip('"').endswith("-3"), "3 parts: a multipart ETag"
    assert await store.head("f/other.log") is None, "a failed upload leaves no object"


@pytest.mark.parametrize("size", [1000, 12 * 1024 * 1024 + 5])
async def test_put_files_if_absent_never_replaces_an_object(
    backend: StoreUnderTest, tmp_path, size: int
) -> None:  # noqa: ANN001
    """Invariant 9: a conditional upload of a file (one PUT, or a multipart upload whose
    completion carries If-None-Match) leaves an existing object exactly as it was."""
    store = backend.store
    if hasattr(store, "part_size"):
        store.part_size = 5 * 1024 * 1024
    first, second = os.urandom(size), os.urandom(size)
    paths = []
    for name, blob in (("a", first), ("b", second)):
        path = tmp_path / name
        path.write_bytes(blob)
        paths.append(path)
    fds = [os.open(p, os.O_RDONLY) for p in paths]
    try:
        await store.put_file("c/seg.log", fds[0], size, checksum=crc32c_hex(first), if_absent=True)
        with pytest.raises(ObjectExists):
            await store.put_file(
                "c/seg.log", fds[1], size, checksum=crc32c_hex(second), if_absent=True
            )
        half = size // 2
        # Two files as one object (adjacent segments merged), also conditional.
        await store.put_files(
            "c/merged.log", [(fds[0], half), (fds[1], size - half)],
            checksum=crc32c_hex(first[:half] + second[: size - half]), if_absent=True,
        )
        with pytest.raises(ObjectExists):
            await store.put_files(
                "c/merged.log", [(fds[1], size)], checksum=crc32c_hex(second), if_absent=True
            )
    finally:
        for fd in fds:
            os.close(fd)
    assert await store.get("c/seg.log") == first
    assert await store.get("c/merged.log") == first[:half] + second[: size - half]


async def test_a_multipart_completion_is_conditional_itself(moto_server, tmp_path) -> None:  # noqa: ANN001
    """S3 only (the local store publishes with link(2), atomic by itself): the object may
    appear while the parts upload, after the HEAD that found none; the completion's own
    If-None-Match must refuse it then (moto 5.2 honours it there, as S3 and MinIO do)."""
    from streamd.tiering.s3_store import S3Store

    store = S3Store(moto_server.new_bucket(), options=moto_server.options())
    store.part_size = 5 * 1024 * 1024
    blob = os.urandom(11 * 1024 * 1024)
    path = tmp_path / "big"
    path.write_bytes(blob)
    real_head = store.head

    async def head_then_someone_writes(key: str):  # noqa: ANN202
        found = await real_head(key)
        await store.put(key, b"written meanwhile")
        return found

    store.head = head_then_someone_writes  # type: ignore[method-assign]
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(ObjectExists):
            await store.put_file("d/seg.log", fd, len(blob), checksum=crc32c_hex(blob),
                                 if_absent=True)
        assert await store.get("d/seg.log") == b"written meanwhile"
    finally:
        os.close(fd)
        await store.close()
