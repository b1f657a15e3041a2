"""What a Kafka handler sees: the broker's services and the request being answered.

The broker layer builds one :class:`KafkaContext`, complete and frozen, before the first
listener opens, and hands it to the servers; handlers reach every service through it by the
protocols of :mod:`streamd.kafka.services`, so the Kafka front never imports the broker's wiring
and nothing is attached to the context later. Optional services are None when the broker runs
without them (``authorizer`` when ``security.authorization`` is off).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from streamd.config import BrokerConfig, ListenerSpec
from streamd.kafka.codec import RequestHeader
from streamd.kafka.services import (
    Authorizer,
    Groups,
    Logs,
    Metrics,
    ProducerIds,
    Replicas,
    Security,
    Tiering,
    Transactions,
)
from streamd.kafka.zerocopy import FileBudget
from streamd.security.sasl import SaslSession


class AppendWaiters:
    """Wakes long-polling fetches when a partition's high watermark moves."""

    def __init__(self) -> None:
        self._waiters: dict[tuple[str, int], set[asyncio.Future[None]]] = defaultdict(set)

    def notify(self, topic: str, partition: int) -> None:
        waiters = self._waiters.pop((topic, partition), None)
        if waiters:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    async def wait(self, keys: list[tuple[str, int]], timeout_s: float) -> None:
        if timeout_s <= 0 or not keys:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for key in keys:
            self._waiters[key].add(fut)
        try:
            await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            pass
        finally:
            for key in keys:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    waiters.discard(fut)
                    if not waiters:
                        del self._waiters[key]


@dataclass(frozen=True, kw_only=True)
class KafkaContext:
    logs: Logs
    config: BrokerConfig
    node_id: int
    cluster_id: str
    advertised_host: str
    """The first listener's advertised address (a request answers with its own listener's)."""
    advertised_port: int
    waiters: AppendWaiters = field(default_factory=AppendWaiters)
    groups: Groups
    metrics: Metrics | None = None
    tiering: Tiering | None = None
    replicas: Replicas | None = None
    authorizer: Authorizer | None = None
    security: Security | None = None
    producer_ids: ProducerIds | None = None
    txn: Transactions | None = None
    """The transaction coordinator; None answers transactional requests with
    COORDINATOR_NOT_AVAILABLE."""
    file_budget: FileBudget = field(default_factory=lambda: FileBudget(1024))
    """Descriptors all unsent fetch responses together may hold (see zerocopy)."""
    read_pool: Executor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="streamd-read")
    )
    """Where fetched record sets too large to read on the event loop are read (not the default
    executor, whose fsync jobs acknowledgements wait for)."""


@dataclass(slots=True)
class Request:
    ctx: KafkaContext
    header: RequestHeader
    body: Any
    peer: str
    principal: str = "User:ANONYMOUS"
    session: SaslSession | None = None
    listener: ListenerSpec | None = None
    files: FileBudget | None = None
    """Set when the response may carry segment file ranges
    (``streamd.kafka.zerocopy.FileRecords``) sent with sendfile: the connection's budget of
    descriptors for them."""

    @property
    def version(self) -> int:
        return self.header.api_version
