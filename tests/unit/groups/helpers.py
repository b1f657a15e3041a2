"""Drive a GroupCoordinator by hand: requests in, answers out, time passed explicitly."""

from __future__ import annotations

import itertools
import struct
from typing import Any

from streamd.errors import ErrorCode
from streamd.groups.coordinator import GroupConfig, GroupCoordinator
from streamd.groups.model import JoinRequest, JoinResult, SyncResult

SESSION = 10_000
REBALANCE = 30_000


def subscription(*topics: str) -> bytes:
    out = struct.pack(">hi", 0, len(topics))
    for t in topics:
        out += struct.pack(">h", len(t)) + t.encode()
    return out + struct.pack(">i", -1)


RANGE = (("range", subscription("t")),)


class Harness:
    """A coordinator plus the answers it has produced, keyed by waiter token."""

    def __init__(self, **config: Any) -> None:
        config.setdefault("initial_rebalance_delay_ms", 3000)
        self.c = GroupCoordinator(GroupConfig(**config))
        self.now = 1_000_000
        self.answers: dict[Any, JoinResult | SyncResult] = {}
        self._tokens = itertools.count()

    def collect(self) -> None:
        for token, result in self.c.take_outputs():
            self.answers[token] = result

    def advance(self, ms: int) -> None:
        self.now += ms
        self.c.tick(self.now)
        self.collect()

    def join(
        self,
        member_id: str = "",
        *,
        group: str = "g",
        instance: str | None = None,
        protocols: tuple[tuple[str, bytes], ...] = RANGE,
        session: int = SESSION,
        rebalance: int = REBALANCE,
        protocol_type: str = "consumer",
        v4: bool = True,
    ) -> Any:
        """Returns the JoinResult if answered now, else the waiter token."""
        token = ("join", next(self._tokens))
        req = JoinRequest(
            group,
            member_id,
            instance,
            protocol_type,
            protocols,
            session,
            rebalance,
            client_id="c",
            client_host="/127.0.0.1",
            require_known_member_id=v4,
        )
        result = self.c.join(req, token, self.now)
        self.collect()
        return result if result is not None else token

    def new_member(self, **kw: Any) -> Any:
        """KIP-394: the first join gets MEMBER_ID_REQUIRED, the second waits (token)."""
        first = self.join(**kw)
        assert isinstance(first, JoinResult) and first.error == ErrorCode.MEMBER_ID_REQUIRED
        return self.join(first.member_id, **kw)

    def sync(
        self,
        member_id: str,
        generation: int,
        assignments: dict[str, bytes] | None = None,
        *,
        group: str = "g",
        instance: str | None = None,
    ) -> Any:
        token = ("sync", next(self._tokens))
        result = self.c.sync(
            group, generation, member_id, instance, assignments or {}, token, self.now
        )
        self.collect()
        return result if result is not None else token

    def heartbeat(
        self, member_id: str, generation: int, *, group: str = "g", instance: str | None = None
    ) -> ErrorCode:
        return self.c.heartbeat(group, generation, member_id, instance, self.now)

    def answer(self, token: Any) -> Any:
        return self.answers[token]
