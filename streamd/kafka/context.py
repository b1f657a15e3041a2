"""What a Kafka handler sees: the broker's services and the request being answered.

The broker layer builds one :class:`KafkaContext` and hands it to the server; handlers reach
the log manager, the fetch waiters and (as they land) groups, tiering and security through it,
so the Kafka front never imports the broker's wiring.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from streamd.kafka.codec import RequestHeader


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


@dataclass
class KafkaContext:
    logs: Any
    config: Any
    node_id: int
    cluster_id: str
    advertised_host: str
    advertised_port: int
    waiters: AppendWaiters = field(default_factory=AppendWaiters)
    metrics: Any = None
    groups: Any = None
    tiering: Any = None
    replicas: Any = None
    """Read replicas (``streamd.tiering.readreplica.ReadReplicas``): create and promote."""
    authorizer: Any = None
    security: Any = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Request:
    ctx: KafkaContext
    header: RequestHeader
    body: Any
    peer: str
    principal: str = "User:ANONYMOUS"
    session: Any = None
    listener: Any = None
    zero_copy: bool = False
    """The response may carry segment file ranges (``streamd.kafka.zerocopy.FileRecords``)."""

    @property
    def version(self) -> int:
        return self.header.api_version
