"""What Kafka handlers need from the broker's services, named as protocols.

The handlers depend on these shapes, not on the classes the broker wires in
(:class:`streamd.log.manager.LogManager`, :class:`streamd.groups.service.GroupService`, ...),
so a unit test can hand a handler a small fake and a reader sees at a glance what the Kafka
front may do with each service. A handler that needs more of a service adds the method here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from streamd.errors import ErrorCode
from streamd.groups.coordinator import CommitOffset
from streamd.groups.model import (
    GroupDescription,
    JoinRequest,
    JoinResult,
    OffsetInfo,
    SyncResult,
    TopicPartition,
)
from streamd.log.manager import Topic
from streamd.log.partition import PartitionLog
from streamd.log.topic_config import TopicConfig
from streamd.log.txn_index import AbortedTxn
from streamd.security.acl import Operation, ResourceType
from streamd.security.sasl import SaslSession
from streamd.security.store import AclStore, CredentialStore
from streamd.txn.model import PendingOffset, TxnDescription

T = TypeVar("T")


class Logs(Protocol):
    """The partition logs (:class:`streamd.log.manager.LogManager`)."""

    @property
    def topics_dir(self) -> Path: ...

    def get(self, name: str) -> Topic | None: ...

    def topics(self) -> Mapping[str, Topic]: ...

    def create_topic(
        self, name: str, partitions: int, overrides: Mapping[str, str] | None = None
    ) -> Topic: ...

    async def delete_topic(self, name: str) -> None: ...

    def add_partitions(self, name: str, new_total: int) -> Topic: ...

    def check_new_topic(
        self,
        name: str,
        partitions: int,
        overrides: Mapping[str, str] | None = None,
        *,
        policy: bool = True,
    ) -> TopicConfig:
        """Every limit a creation checks, before anything is written (raises)."""
        ...

    def check_growth(self, name: str, new_total: int, *, policy: bool = True) -> Topic: ...

    async def create_topic_async(
        self, name: str, partitions: int, overrides: Mapping[str, str] | None = None
    ) -> Topic: ...

    async def add_partitions_async(self, name: str, new_total: int) -> Topic: ...

    def alter_config(self, name: str, overrides: Mapping[str, str]) -> Topic: ...


class Groups(Protocol):
    """Group coordination, committed offsets (:class:`streamd.groups.service.GroupService`)."""

    async def join(self, req: JoinRequest) -> JoinResult: ...

    async def sync(
        self,
        group_id: str,
        generation: int,
        member_id: str,
        instance_id: str | None,
        assignments: dict[str, bytes],
        protocol_type: str | None = None,
        protocol_name: str | None = None,
    ) -> SyncResult: ...

    def heartbeat(
        self, group_id: str, generation: int, member_id: str, instance_id: str | None
    ) -> ErrorCode: ...

    def leave(
        self, group_id: str, members: Iterable[tuple[str, str | None]]
    ) -> tuple[ErrorCode, list[ErrorCode]]: ...

    def list_groups(self, states: Iterable[str] = ()) -> list[tuple[str, str, str]]: ...

    def describe(self, group_id: str) -> GroupDescription: ...

    async def commit(
        self,
        group_id: str,
        generation: int,
        member_id: str,
        instance_id: str | None,
        offsets: list[CommitOffset],
    ) -> list[int]: ...

    def fetch(
        self, group_id: str, partitions: list[TopicPartition] | None
    ) -> dict[TopicPartition, OffsetInfo | None]: ...

    async def delete_offsets(
        self, group_id: str, partitions: list[TopicPartition]
    ) -> tuple[ErrorCode, list[ErrorCode]]: ...

    async def delete_groups(self, group_ids: list[str]) -> list[ErrorCode]: ...

    def on_topic_deleted(self, topic: str) -> None: ...


class Tiering(Protocol):
    """Reads below the local log start and the archive's view of offsets
    (:class:`streamd.tiering.service.TieringService`)."""

    def earliest_offset(self, topic: str, partition: int, plog: PartitionLog) -> int: ...

    def latest_tiered_offset(self, topic: str, partition: int) -> int: ...

    async def read(
        self,
        topic: str,
        partition: int,
        offset: int,
        max_bytes: int,
        min_one: bool,
        *,
        ready_bytes: int = 0,
    ) -> bytes | memoryview: ...

    def prefetch(self, topic: str, partition: int, offset: int) -> None: ...

    async def offset_for_timestamp(
        self, topic: str, partition: int, plog: PartitionLog, timestamp: int
    ) -> tuple[int, int] | None: ...

    async def aborted_transactions(
        self, topic: str, partition: int, fetch_offset: int, upper: int
    ) -> tuple[list[AbortedTxn], bool]: ...

    async def delete_records(self, topic: str, partition: int, offset: int) -> None: ...

    async def on_topic_changed(self, topic: Topic | None) -> None: ...

    async def on_topic_deleted(self, topic: Topic) -> None: ...


class Replicas(Protocol):
    """Read replicas: topics served from another broker's archive
    (:class:`streamd.tiering.readreplica.ReadReplicas`)."""

    async def create(
        self,
        name: str,
        partitions: int | None,
        overrides: Mapping[str, str],
        *,
        validate_only: bool = False,
    ) -> tuple[Topic | None, int]: ...

    async def promote(self, name: str) -> dict[int, int]: ...


class Authorizer(Protocol):
    """ACL decisions (:class:`streamd.security.acl.Authorizer`)."""

    def authorize(
        self,
        principal: str,
        host: str,
        operation: Operation,
        resource_type: ResourceType,
        name: str,
    ) -> bool: ...


class Security(Protocol):
    """Logins, users and ACL storage (:class:`streamd.security.service.SecurityService`)."""

    mechanisms: tuple[str, ...]
    failed_auth_delay_s: float
    credentials: CredentialStore
    acls: AclStore

    def session(self, protocol: str, peer_der: bytes | None = None) -> SaslSession: ...

    async def run_auth(self, fn: Callable[..., T], *args: Any) -> T: ...


class Metrics(Protocol):
    """Counters the Kafka front keeps (:class:`streamd.metrics.Metrics`)."""

    connections: int
    produced_bytes: int
    fetched_bytes: int
    sendfile_bytes: int

    def count_request(self, api_key: int, seconds: float = 0.0) -> None:
        """One handled request and its latency (decoded request to encoded response)."""

    def produced(self, topic: str, nbytes: int, records: int) -> None:
        """Batch bytes and records appended to ``topic``."""

    def fetched(self, topic: str, nbytes: int) -> None:
        """Batch bytes of ``topic`` served to consumers."""


class ProducerIds(Protocol):
    """Producer ids for InitProducerId (:class:`streamd.log.producer_ids.ProducerIdAllocator`)."""

    def allocate(self) -> int: ...


class Transactions(Protocol):
    """The transaction coordinator (:class:`streamd.txn.service.TransactionService`)."""

    async def init_producer_id(
        self, transactional_id: str, timeout_ms: int, expected: tuple[int, int] | None
    ) -> tuple[ErrorCode, int, int]: ...

    async def add_partitions(
        self,
        transactional_id: str,
        producer_id: int,
        epoch: int,
        partitions: Iterable[tuple[str, int]],
    ) -> ErrorCode: ...

    async def add_group(
        self, transactional_id: str, producer_id: int, epoch: int, group_id: str
    ) -> ErrorCode: ...

    async def end_txn(
        self, transactional_id: str, producer_id: int, epoch: int, commit: bool
    ) -> ErrorCode: ...

    async def txn_offset_commit(
        self,
        transactional_id: str,
        producer_id: int,
        epoch: int,
        group_id: str,
        member: tuple[int, str, str | None],
        offsets: list[PendingOffset],
    ) -> ErrorCode: ...

    async def durable(self) -> None: ...

    def verify_produce(
        self, transactional_id: str, producer_id: int, epoch: int, topic: str, partition: int
    ) -> ErrorCode: ...

    def has_pending_offset(self, group_id: str, topic: str, partition: int) -> bool: ...

    def describe(self, transactional_id: str) -> TxnDescription | None: ...

    def list_transactions(
        self,
        states: Iterable[str] = (),
        producer_ids: Iterable[int] = (),
        min_duration_ms: int = -1,
        pattern: str | None = None,
    ) -> tuple[list[TxnDescription], list[str]]: ...
