"""The nouns of the classic group protocol: groups, members, committed offsets, results.

A group's generation, leader and selected protocol change only when a join phase completes
(see :mod:`streamd.groups.coordinator`). ``Member.join_waiter`` / ``sync_waiter`` are opaque
tokens of requests the coordinator has not answered yet; the asyncio adapter maps them to
futures, so nothing here knows about the event loop.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from streamd.errors import ErrorCode

OFFSET_METADATA_TOO_LARGE = ErrorCode.OFFSET_METADATA_TOO_LARGE


class GroupState(Enum):
    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


@dataclass(frozen=True, slots=True)
class OffsetInfo:
    offset: int
    leader_epoch: int = -1
    metadata: str = ""
    commit_ts: int = 0
    expire_ts: int = -1
    """Set by OffsetCommit v2-v4's retention time (commit time + retention); -1 = the broker's
    ``offsets.retention.minutes`` applies."""


TopicPartition = tuple[str, int]
Protocols = tuple[tuple[str, bytes], ...]


@dataclass(slots=True)
class Member:
    member_id: str
    instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocol_type: str
    protocols: Protocols
    assignment: bytes = b""
    join_waiter: Any = None
    sync_waiter: Any = None
    last_heartbeat_ms: int = 0

    def protocol_names(self) -> list[str]:
        return [name for name, _ in self.protocols]

    def metadata_for(self, protocol: str | None) -> bytes:
        for name, metadata in self.protocols:
            if name == protocol:
                return metadata
        return b""


@dataclass(slots=True)
class Group:
    group_id: str
    state: GroupState = GroupState.EMPTY
    state_since_ms: int = 0
    generation: int = 0
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader_id: str | None = None
    members: dict[str, Member] = field(default_factory=dict)
    static_members: dict[str, str] = field(default_factory=dict)
    pending_members: dict[str, int] = field(default_factory=dict)
    """KIP-394: member ids handed out with MEMBER_ID_REQUIRED -> expiry time (ms)."""
    join_deadline_ms: int = 0
    initial_join_remaining_ms: int = 0
    """Left of the initial rebalance delay's extensions; > 0 only while the first join
    phase after Empty is being held open for more members to arrive."""
    initial_join: bool = False
    new_member_added: bool = False
    sync_deadline_ms: int = 0

    def transition(self, state: GroupState, now_ms: int) -> None:
        self.state = state
        self.state_since_ms = now_ms

    def rebalance_timeout_ms(self) -> int:
        return max((m.rebalance_timeout_ms for m in self.members.values()), default=0)

    def all_joined(self) -> bool:
        return not self.pending_members and all(
            m.join_waiter is not None for m in self.members.values()
        )

    def candidate_protocols(self) -> set[str]:
        members = list(self.members.values())
        if not members:
            return set()
        common = set(members[0].protocol_names())
        for m in members[1:]:
            common &= set(m.protocol_names())
        return common

    def supports(self, protocol_type: str, protocols: Protocols) -> bool:
        """Would a member with these protocols fit (same type, one protocol in common)?"""
        if not protocols or not protocol_type:
            return False
        if not self.members:
            return True
        if self.protocol_type != protocol_type:
            return False
        return bool(self.candidate_protocols() & {name for name, _ in protocols})

    def select_protocol(self) -> str:
        """Kafka's rule: every member votes for its most preferred protocol among those all
        members support; most votes wins. Ties go to the leader's order of preference."""
        candidates = self.candidate_protocols()
        votes: Counter[str] = Counter()
        leader = self.members.get(self.leader_id or "") or next(iter(self.members.values()))
        for m in self.members.values():
            vote = next((n for n in m.protocol_names() if n in candidates), None)
            if vote is not None:
                votes[vote] += 1
        if not votes:
            return leader.protocol_names()[0]
        order = {name: i for i, name in enumerate(leader.protocol_names())}
        return min(votes, key=lambda name: (-votes[name], order.get(name, len(order))))

    def subscribed_topics(self) -> set[str] | None:
        """Topics the members of a consumer group subscribe to (None: cannot tell)."""
        if self.protocol_type != "consumer" or self.protocol_name is None:
            return None
        topics: set[str] = set()
        for m in self.members.values():
            parsed = parse_subscription(m.metadata_for(self.protocol_name))
            if parsed is None:
                return None
            topics.update(parsed)
        return topics


def parse_subscription(metadata: bytes) -> list[str] | None:
    """The topic list at the head of a ConsumerProtocolSubscription (any version)."""
    try:
        pos = 2
        (count,) = struct.unpack_from(">i", metadata, pos)
        pos += 4
        topics = []
        for _ in range(max(count, 0)):
            (size,) = struct.unpack_from(">h", metadata, pos)
            pos += 2
            topics.append(metadata[pos : pos + size].decode())
            pos += size
        return topics
    except (struct.error, UnicodeDecodeError):
        return None


@dataclass(frozen=True, slots=True)
class JoinRequest:
    group_id: str
    member_id: str
    instance_id: str | None
    protocol_type: str
    protocols: Protocols
    session_timeout_ms: int
    rebalance_timeout_ms: int
    client_id: str = ""
    client_host: str = ""
    require_known_member_id: bool = True
    supports_skip_assignment: bool = False
    """JoinGroup v9+ (KIP-814): a rejoining static leader can be told to skip the assignor."""


@dataclass(frozen=True, slots=True)
class JoinedMember:
    member_id: str
    instance_id: str | None
    metadata: bytes


@dataclass(frozen=True, slots=True)
class JoinResult:
    error: ErrorCode
    member_id: str = ""
    generation_id: int = -1
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader_id: str = ""
    members: tuple[JoinedMember, ...] = ()
    skip_assignment: bool = False


@dataclass(frozen=True, slots=True)
class SyncResult:
    error: ErrorCode
    protocol_type: str | None = None
    protocol_name: str | None = None
    assignment: bytes = b""


@dataclass(frozen=True, slots=True)
class OffsetRecord:
    """One change to the committed offsets; ``info`` None is a tombstone."""

    group_id: str
    topic: str
    partition: int
    info: OffsetInfo | None


@dataclass(frozen=True, slots=True)
class MemberDescription:
    member_id: str
    instance_id: str | None
    client_id: str
    client_host: str
    metadata: bytes
    assignment: bytes


@dataclass(frozen=True, slots=True)
class GroupDescription:
    group_id: str
    state: str
    protocol_type: str
    protocol_name: str
    members: tuple[MemberDescription, ...]
