"""An :class:`~streamd.tiering.store.ObjectStore` that times every call for ``/metrics``.

The broker wraps the configured store in this before handing it to the tiering service, so
bucket requests are measured by verb and outcome without the tiering layer knowing about
metrics. Verbs: ``put``, ``put_file`` (segment uploads, also of merged segments),
``get`` (whole objects: manifests,
indexes), ``get_range`` (remote reads of segment chunks), ``head``, ``list``, ``delete``,
``delete_many``. Outcomes: ``ok``, ``not_found``, ``exists`` (a put-if-absent that found the key),
``error``. A call is one logical operation: retries inside the S3 backend are part of its time.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Protocol

from streamd.tiering.store import ObjectExists, ObjectInfo, ObjectNotFound, ObjectStore

RangeReader = Callable[[str, tuple[int, int], Callable[[bytes], None]], Awaitable[int]]


class StoreMeter(Protocol):
    def store_call(self, verb: str, outcome: str, seconds: float) -> None: ...


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, ObjectNotFound):
        return "not_found"
    if isinstance(exc, ObjectExists):
        return "exists"
    return "error"


class _Timed:
    """``with``: one store call, timed and reported with its outcome (exceptions pass on; a
    cancellation or a listing closed early is not an error of the store)."""

    __slots__ = ("_meter", "_verb", "_started")

    def __init__(self, meter: StoreMeter, verb: str) -> None:
        self._meter = meter
        self._verb = verb

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        failure = exc if isinstance(exc, Exception) else None
        self._meter.store_call(self._verb, _outcome(failure), time.perf_counter() - self._started)


class MeteredStore:
    def __init__(self, inner: ObjectStore, meter: StoreMeter) -> None:
        self.inner = inner
        self._meter = meter

    @property
    def description(self) -> str:
        return self.inner.description

    @property
    def requests(self) -> Counter[str]:
        return self.inner.requests

    def _timed(self, verb: str) -> _Timed:
        return _Timed(self._meter, verb)

    async def check(self) -> None:
        await self.inner.check()

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        if_absent: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        with self._timed("put"):
            await self.inner.put(key, data, if_absent=if_absent, metadata=metadata)

    async def put_file(
        self,
        key: str,
        fd: int,
        size: int,
        *,
        checksum: str,
        if_absent: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        with self._timed("put_file"):
            await self.inner.put_file(
                key, fd, size, checksum=checksum, if_absent=if_absent, metadata=metadata
            )

    async def put_files(
        self,
        key: str,
        files: Sequence[tuple[int, int]],
        *,
        checksum: str,
        if_absent: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        with self._timed("put_file"):
            await self.inner.put_files(
                key, files, checksum=checksum, if_absent=if_absent, metadata=metadata
            )

    async def get(self, key: str, *, byte_range: tuple[int, int] | None = None) -> bytes:
        with self._timed("get" if byte_range is None else "get_range"):
            return await self.inner.get(key, byte_range=byte_range)

    @property
    def read_range(self) -> RangeReader:
        """The inner store's streamed ranged read (timed as ``get_range``); AttributeError
        when it has none, as for the inner store (the remote reader then reads ranges whole)."""
        inner = self.inner.read_range  # type: ignore[attr-defined]

        async def read_range(
            key: str, byte_range: tuple[int, int], consume: Callable[[bytes], None]
        ) -> int:
            with self._timed("get_range"):
                return int(await inner(key, byte_range, consume))

        return read_range

    async def head(self, key: str) -> ObjectInfo | None:
        with self._timed("head"):
            info = await self.inner.head(key)
        return info

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        with self._timed("list"):
            async for info in self.inner.list(prefix):
                yield info

    async def delete(self, key: str) -> None:
        with self._timed("delete"):
            await self.inner.delete(key)

    async def delete_many(self, keys: Iterable[str]) -> None:
        with self._timed("delete_many"):
            await self.inner.delete_many(keys)

    async def close(self) -> None:
        await self.inner.close()
