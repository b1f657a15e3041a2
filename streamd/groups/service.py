"""The asyncio edge of the group coordinator: futures, the clock, the ticker and fsync batching.

:class:`GroupService` owns one :class:`GroupCoordinator` and one :class:`OffsetLog`. A
JoinGroup/SyncGroup that must wait passes its future as the coordinator's waiter token; after
every coordinator call the service hands out the answers the call produced. A waiting request
whose connection went away leaves a cancelled future behind; its answer is simply dropped (the
member stays until its rebalance or session timeout, as in Kafka).

Durability: the records of concurrent commits are queued and written by one flusher task, one
``append`` (write + fsync, in a worker thread) per round, and every commit in the round is
acknowledged after it. A commit is applied in memory when it is validated, so an OffsetFetch
racing it may see the offset a moment before it is durable (never an offset that was refused).
The file is rewritten compactly at startup and when it holds more than twice as many records as
there are live offsets.

An optional :class:`GroupObserver` hears every durable offset change and every group metadata
change, in order; the Kafka front uses it to derive ``__consumer_offsets``. It is told after
the change is durable here, and its failures never fail a commit (the file is the truth).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from streamd.errors import ErrorCode, StreamdError
from streamd.groups.coordinator import CommitOffset, GroupConfig, GroupCoordinator
from streamd.groups.model import (
    Group,
    GroupDescription,
    JoinRequest,
    JoinResult,
    OffsetInfo,
    OffsetRecord,
    SyncResult,
    TopicPartition,
)
from streamd.groups.offset_log import OffsetLog

log = logging.getLogger("streamd.groups")

EXPIRY_INTERVAL_MS = 60_000


class GroupObserver(Protocol):
    def offsets_changed(self, records: list[OffsetRecord]) -> None: ...

    def groups_changed(self, changes: dict[str, Group | None]) -> None: ...


def group_config(values: Mapping[str, Any]) -> GroupConfig:
    """Coordinator settings from broker config values (Kafka's key names)."""
    d = GroupConfig()
    return GroupConfig(
        initial_rebalance_delay_ms=int(
            values.get("group.initial.rebalance.delay.ms", d.initial_rebalance_delay_ms)
        ),
        min_session_timeout_ms=int(
            values.get("group.min.session.timeout.ms", d.min_session_timeout_ms)
        ),
        max_session_timeout_ms=int(
            values.get("group.max.session.timeout.ms", d.max_session_timeout_ms)
        ),
        offsets_retention_ms=int(values.get("offsets.retention.minutes", 10080)) * 60_000,
        offset_metadata_max_bytes=int(
            values.get("offset.metadata.max.bytes", d.offset_metadata_max_bytes)
        ),
    )


def wall_ms() -> int:
    return int(time.time() * 1000)


class GroupService:
    def __init__(
        self,
        data_dir: Path,
        config: GroupConfig | None = None,
        *,
        observer: GroupObserver | None = None,
    ) -> None:
        self.config = config or GroupConfig()
        self.observer = observer
        self.log = OffsetLog(Path(data_dir) / "groups")
        self.coordinator = GroupCoordinator(self.config)
        self._wake = asyncio.Event()
        self._queue: list[OffsetRecord] = []
        self._queue_waiters: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # ---- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        snapshot = await asyncio.to_thread(self.log.load)
        live = sum(len(c) for c in snapshot.values())
        if self.log.records > live:
            try:
                await asyncio.to_thread(self.log.rewrite, snapshot)
            except OSError as exc:  # a full disk must not stop the broker from starting
                log.warning("cannot compact %s at start (appends continue): %s",
                            self.log.path, exc.strerror)
        self.coordinator = GroupCoordinator(self.config, snapshot, wall_ms())
        log.info("loaded committed offsets of %d groups (%d partitions)", len(snapshot), live)

    def start(self) -> asyncio.Task[None]:
        self._ticker = asyncio.create_task(self._tick_loop())
        return self._ticker

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for task in list(self._background):
            with contextlib.suppress(Exception):
                await task
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        self.log.close()

    def reconfigure(self, config: GroupConfig) -> None:
        """New coordinator settings (dynamic broker configs); they apply to the next request
        and deadline."""
        self.config = config
        self.coordinator.config = config

    async def _tick_loop(self) -> None:
        """Sleep until the coordinator's next deadline (or until a request may have moved it),
        then fire what is due: sessions expire at their deadline, not on a polling tick."""
        next_expiry = wall_ms() + EXPIRY_INTERVAL_MS
        while True:
            due = self.coordinator.next_deadline_ms()
            wake_at = next_expiry if due is None else min(due, next_expiry)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0, wake_at - wall_ms()) / 1000)
            self._wake.clear()
            now = wall_ms()
            try:
                self.coordinator.tick(now)
                self._dispatch(wake=False)
                if now >= next_expiry:
                    next_expiry = now + EXPIRY_INTERVAL_MS
                    self._persist_later(self.coordinator.expire_offsets(now))
                    self._publish_groups()
            except Exception:
                log.exception("group coordinator tick failed")

    # ---- membership ------------------------------------------------------------------------

    def _dispatch(self, *, wake: bool = True) -> None:
        """Hand out the answers of the last coordinator call; it may have moved a deadline, so
        the timer looks again (``wake``)."""
        if wake:
            self._wake.set()
        for waiter, result in self.coordinator.take_outputs():
            if isinstance(waiter, asyncio.Future) and not waiter.done():
                waiter.set_result(result)
        self._publish_groups()

    def _publish_groups(self) -> None:
        changes = self.coordinator.take_group_changes()
        if changes and self.observer is not None:
            try:
                self.observer.groups_changed(changes)
            except Exception:
                log.exception("group observer failed")

    async def join(self, req: JoinRequest) -> JoinResult:
        waiter: asyncio.Future[JoinResult] = asyncio.get_running_loop().create_future()
        result = self.coordinator.join(req, waiter, wall_ms())
        self._dispatch()
        return result if result is not None else await waiter

    async def sync(
        self,
        group_id: str,
        generation: int,
        member_id: str,
        instance_id: str | None,
        assignments: dict[str, bytes],
        protocol_type: str | None = None,
        protocol_name: str | None = None,
    ) -> SyncResult:
        waiter: asyncio.Future[SyncResult] = asyncio.get_running_loop().create_future()
        result = self.coordinator.sync(
            group_id,
            generation,
            member_id,
            instance_id,
            assignments,
            waiter,
            wall_ms(),
            protocol_type,
            protocol_name,
        )
        self._dispatch()
        return result if result is not None else await waiter

    def heartbeat(
        self, group_id: str, generation: int, member_id: str, instance_id: str | None
    ) -> ErrorCode:
        error = self.coordinator.heartbeat(group_id, generation, member_id, instance_id, wall_ms())
        self._dispatch()
        return error

    def leave(
        self, group_id: str, members: Iterable[tuple[str, str | None]]
    ) -> tuple[ErrorCode, list[ErrorCode]]:
        result = self.coordinator.leave(group_id, members, wall_ms())
        self._dispatch()
        return result

    def list_groups(self, states: Iterable[str] = ()) -> list[tuple[str, str, str]]:
        groups = self.coordinator.list_groups(states, wall_ms())
        self._dispatch()
        return groups

    def describe(self, group_id: str) -> GroupDescription:
        description = self.coordinator.describe(group_id, wall_ms())
        self._dispatch()
        return description

    # ---- offsets ---------------------------------------------------------------------------

    async def commit(
        self,
        group_id: str,
        generation: int,
        member_id: str,
        instance_id: str | None,
        offsets: list[CommitOffset],
    ) -> list[int]:
        codes, records = self.coordinator.commit(
            group_id, generation, member_id, instance_id, offsets, wall_ms()
        )
        self._dispatch()
        if records:
            try:
                await self._persist(records)
            except StreamdError as exc:
                return [exc.code if c == ErrorCode.NONE else c for c in codes]
        return codes

    def fetch(
        self, group_id: str, partitions: list[TopicPartition] | None
    ) -> dict[TopicPartition, OffsetInfo | None]:
        return self.coordinator.fetch(group_id, partitions)

    def validate_txn_commit(
        self, group_id: str, generation: int, member_id: str, instance_id: str | None
    ) -> ErrorCode:
        return self.coordinator.validate_txn_commit(group_id, generation, member_id, instance_id)

    async def commit_txn_offsets(self, group_id: str, offsets: list[CommitOffset]) -> None:
        """Apply and persist the offsets of a committed transaction (raises StreamdError)."""
        records = self.coordinator.apply_offsets(group_id, offsets, wall_ms())
        if records:
            await self._persist(records)

    async def delete_offsets(
        self, group_id: str, partitions: list[TopicPartition]
    ) -> tuple[ErrorCode, list[ErrorCode]]:
        error, codes, records = self.coordinator.delete_offsets(group_id, partitions, wall_ms())
        self._dispatch()
        if records:
            await self._persist(records)
        return error, codes

    async def delete_groups(self, group_ids: list[str]) -> list[ErrorCode]:
        codes, records = self.coordinator.delete_groups(group_ids, wall_ms())
        self._dispatch()
        if records:
            await self._persist(records)
        return codes

    def on_topic_deleted(self, topic: str) -> None:
        self._persist_later(self.coordinator.on_topic_deleted(topic))

    def all_committed_offsets(self) -> dict[str, dict[TopicPartition, OffsetInfo]]:
        """Every committed offset, by group (a copy; for archiving and restore)."""
        return self.coordinator.all_committed_offsets()

    # ---- durability ------------------------------------------------------------------------

    def _persist_later(self, records: list[OffsetRecord]) -> None:
        if not records:
            return
        task = asyncio.create_task(self._persist(records))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _persist(self, records: list[OffsetRecord]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.extend(records)
        self._queue_waiters.append(done)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await asyncio.shield(done)

    async def _flush(self) -> None:
        while self._queue:
            records, waiters = self._queue, self._queue_waiters
            self._queue, self._queue_waiters = [], []
            error: StreamdError | None = None
            try:
                await asyncio.to_thread(self.log.append, records)
            except OSError as exc:
                log.error("cannot write committed offsets to %s: %s", self.log.path, exc)
                error = StreamdError(str(exc), code=ErrorCode.COORDINATOR_NOT_AVAILABLE)
            if error is None and self.observer is not None:
                try:
                    self.observer.offsets_changed(records)
                except Exception:
                    log.exception("group observer failed")
            for waiter in waiters:
                if waiter.done():
                    continue
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)
            live = sum(len(c) for c in self.coordinator.offsets.values())
            if error is None and self.log.needs_rewrite(live):
                snapshot = self.coordinator.all_committed_offsets()
                try:
                    await asyncio.to_thread(self.log.rewrite, snapshot)
                except OSError as exc:
                    log.error("cannot compact %s (appends continue): %s", self.log.path, exc)
