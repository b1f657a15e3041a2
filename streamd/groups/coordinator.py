"""The classic consumer-group protocol as a state machine: no sockets, no clock, no codec.

Every call takes ``now_ms``; :meth:`GroupCoordinator.tick` fires the session, join and sync
deadlines, so tests drive time by hand; :meth:`GroupCoordinator.next_deadline_ms` tells the
caller when the next one is due, and every request first fires the passed deadlines of its
group, so no answer depends on how late a timer runs. A JoinGroup or SyncGroup that must wait
returns None and leaves its ``waiter`` token on the member; when the phase completes the
answer appears in :meth:`GroupCoordinator.take_outputs` as ``(waiter, JoinResult |
SyncResult)``.

State machine (Kafka's ``GroupMetadata``):

- Empty --join--> PreparingRebalance. Leaving Empty, the first join phase is held open for
  ``group.initial.rebalance.delay.ms`` (extended while new members keep arriving, capped by the
  rebalance timeout) so a starting fleet lands in one generation.
- PreparingRebalance --all known members rejoined, or the rebalance timeout--> members that did
  not rejoin are removed; generation + 1; a protocol is selected; the leader is kept if it
  rejoined, else the first member. Then CompletingRebalance (or Empty if nobody is left).
- CompletingRebalance --leader's SyncGroup--> Stable; every waiting SyncGroup is answered.
  Members that have not sent SyncGroup within the rebalance timeout are removed (rebalance).
- Any membership change in Stable or CompletingRebalance goes back to PreparingRebalance;
  waiting SyncGroups then get REBALANCE_IN_PROGRESS.
- A member awaiting a join or sync answer is never expired by its session timeout.

Offsets: a commit with generation -1 is accepted only while the group has no members (a
"simple" consumer using assign()). Committed offsets of a group that has been Empty, with no
commit, for ``offsets.retention.minutes`` expire (KIP-211, with the last commit also counting as
activity since group state does not survive a restart). Each mutating call returns the
:class:`OffsetRecord` list the caller must make durable before acknowledging.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from streamd.errors import ErrorCode
from streamd.groups.model import (
    OFFSET_METADATA_TOO_LARGE,
    Group,
    GroupDescription,
    GroupState,
    JoinedMember,
    JoinRequest,
    JoinResult,
    Member,
    MemberDescription,
    OffsetInfo,
    OffsetRecord,
    SyncResult,
    TopicPartition,
)

E = ErrorCode
S = GroupState


@dataclass(frozen=True, slots=True)
class GroupConfig:
    initial_rebalance_delay_ms: int = 3000
    min_session_timeout_ms: int = 6000
    max_session_timeout_ms: int = 1800000
    offsets_retention_ms: int = 10080 * 60_000
    offset_metadata_max_bytes: int = 4096


@dataclass(frozen=True, slots=True)
class CommitOffset:
    topic: str
    partition: int
    offset: int
    leader_epoch: int = -1
    metadata: str | None = ""
    commit_ts: int = -1
    """OffsetCommit v1's per-partition commit timestamp; -1 = now (every later version)."""
    retention_ms: int = -1
    """OffsetCommit v2-v4's retention time; -1 = the broker's offsets.retention.minutes."""


Output = tuple[Any, JoinResult | SyncResult]


class GroupCoordinator:
    def __init__(
        self,
        config: GroupConfig | None = None,
        offsets: dict[str, dict[TopicPartition, OffsetInfo]] | None = None,
        now_ms: int = 0,
    ) -> None:
        self.config = config or GroupConfig()
        self.groups: dict[str, Group] = {}
        self.offsets: dict[str, dict[TopicPartition, OffsetInfo]] = {}
        self._outputs: list[Output] = []
        self._group_changes: dict[str, Group | None] = {}
        """Groups whose stored metadata changed (None: deleted) since the last take."""
        for group_id, committed in (offsets or {}).items():
            if committed:
                self.offsets[group_id] = dict(committed)
                self.groups[group_id] = Group(group_id, state_since_ms=now_ms)

    # ---- outputs ---------------------------------------------------------------------------

    def take_outputs(self) -> list[Output]:
        out, self._outputs = self._outputs, []
        return out

    def take_group_changes(self) -> dict[str, Group | None]:
        """Groups to publish as Kafka's GroupMetadata records: those whose generation completed
        with an assignment (leader SyncGroup) or with no members (Empty), and deleted ones."""
        out, self._group_changes = self._group_changes, {}
        return out

    def _answer(self, waiter: Any, result: JoinResult | SyncResult) -> None:
        if waiter is not None:
            self._outputs.append((waiter, result))

    # ---- JoinGroup -------------------------------------------------------------------------

    def join(self, req: JoinRequest, waiter: Any, now_ms: int) -> JoinResult | None:
        cfg = self.config
        if not req.group_id:
            return JoinResult(E.INVALID_GROUP_ID, req.member_id)
        if not cfg.min_session_timeout_ms <= req.session_timeout_ms <= cfg.max_session_timeout_ms:
            return JoinResult(E.INVALID_SESSION_TIMEOUT, req.member_id)
        if not req.protocols or not req.protocol_type:
            return JoinResult(E.INCONSISTENT_GROUP_PROTOCOL, req.member_id)
        self._catch_up_id(req.group_id, now_ms)
        group = self.groups.get(req.group_id)
        if group is None:
            if req.member_id:
                return JoinResult(E.UNKNOWN_MEMBER_ID, req.member_id)
            group = self.groups[req.group_id] = Group(req.group_id, state_since_ms=now_ms)
        if not group.supports(req.protocol_type, req.protocols):
            return JoinResult(E.INCONSISTENT_GROUP_PROTOCOL, req.member_id)
        if not req.member_id:
            return self._join_new(group, req, waiter, now_ms)
        return self._join_known(group, req, waiter, now_ms)

    def _join_new(
        self, group: Group, req: JoinRequest, waiter: Any, now_ms: int
    ) -> JoinResult | None:
        member_id = f"{req.client_id or 'member'}-{uuid.uuid4()}"
        if req.instance_id is not None:
            old_id = group.static_members.get(req.instance_id)
            if old_id is not None and old_id in group.members:
                return self._replace_static(group, old_id, member_id, req, waiter, now_ms)
        elif req.require_known_member_id:
            group.pending_members[member_id] = now_ms + req.session_timeout_ms
            return JoinResult(E.MEMBER_ID_REQUIRED, member_id)
        self._add_member(group, member_id, req, waiter, now_ms)
        return None

    def _join_known(
        self, group: Group, req: JoinRequest, waiter: Any, now_ms: int
    ) -> JoinResult | None:
        member_id = req.member_id
        if member_id in group.pending_members:
            del group.pending_members[member_id]
            self._add_member(group, member_id, req, waiter, now_ms)
            return None
        error = self._check_member(group, member_id, req.instance_id)
        if error is not None:
            return JoinResult(error, member_id)
        member = group.members[member_id]
        member.last_heartbeat_ms = now_ms
        changed = member.protocols != req.protocols
        if group.state is S.PREPARING_REBALANCE:
            self._update_member(member, req, waiter)
            self._maybe_complete_join(group, now_ms)
            return None
        if group.state is S.COMPLETING_REBALANCE and not changed:
            return self._join_result(group, member, with_members=member_id == group.leader_id)
        if group.state is S.STABLE and not changed and member_id != group.leader_id:
            return self._join_result(group, member, with_members=False)
        self._update_member(member, req, waiter)
        self._prepare_rebalance(group, now_ms)
        return None

    def _replace_static(
        self, group: Group, old_id: str, new_id: str, req: JoinRequest, waiter: Any, now_ms: int
    ) -> JoinResult | None:
        """A static member came back with no member id: it takes over its old slot and the
        previous incarnation is fenced.

        In a Stable group whose selected protocol stays the same nothing rebalances, leader or
        not (Kafka's ``updateStaticMemberAndRebalance``): the member gets the current generation
        and fetches its stored assignment with SyncGroup. A rejoining leader is answered with
        the *old* leader id below JoinGroup v9, so it acts as a follower and runs no assignor;
        from v9 it learns it leads but is told to skip the assignment (KIP-814)."""
        previous_leader = group.leader_id
        member = group.members.pop(old_id)
        fenced = E.FENCED_INSTANCE_ID
        self._answer(member.join_waiter, JoinResult(fenced, old_id))
        self._answer(member.sync_waiter, SyncResult(fenced))
        member.join_waiter = member.sync_waiter = None
        member.member_id = new_id
        member.last_heartbeat_ms = now_ms
        group.members[new_id] = member
        assert req.instance_id is not None
        group.static_members[req.instance_id] = new_id
        if group.leader_id == old_id:
            group.leader_id = new_id
        if group.state is S.STABLE:
            self._update_member(member, req, None)
            if group.select_protocol() == group.protocol_name:
                leads = group.leader_id == new_id
                if req.supports_skip_assignment:
                    result = self._join_result(group, member, with_members=leads)
                    return replace(result, skip_assignment=leads)
                result = self._join_result(group, member, with_members=False)
                return replace(result, leader_id=previous_leader or "")
            member.join_waiter = waiter
            self._prepare_rebalance(group, now_ms)
            return None
        self._update_member(member, req, waiter)
        if group.state is S.PREPARING_REBALANCE:
            self._maybe_complete_join(group, now_ms)
        else:
            self._prepare_rebalance(group, now_ms)
        return None

    def _add_member(
        self, group: Group, member_id: str, req: JoinRequest, waiter: Any, now_ms: int
    ) -> None:
        member = Member(
            member_id,
            req.instance_id,
            req.client_id,
            req.client_host,
            req.session_timeout_ms,
            req.rebalance_timeout_ms,
            req.protocol_type,
            req.protocols,
            join_waiter=waiter,
            last_heartbeat_ms=now_ms,
        )
        if group.state is S.PREPARING_REBALANCE and group.initial_join:
            group.new_member_added = True
        if not group.members:
            group.protocol_type = req.protocol_type
        group.members[member_id] = member
        if req.instance_id is not None:
            group.static_members[req.instance_id] = member_id
        if group.state is S.PREPARING_REBALANCE:
            self._maybe_complete_join(group, now_ms)
        else:
            self._prepare_rebalance(group, now_ms)

    def _update_member(self, member: Member, req: JoinRequest, waiter: Any) -> None:
        if member.join_waiter is not None and waiter is not None:
            self._answer(member.join_waiter, JoinResult(E.REBALANCE_IN_PROGRESS, member.member_id))
        member.protocols = req.protocols
        member.protocol_type = req.protocol_type
        member.session_timeout_ms = req.session_timeout_ms
        member.rebalance_timeout_ms = req.rebalance_timeout_ms
        member.client_id = req.client_id
        member.client_host = req.client_host
        if waiter is not None:
            member.join_waiter = waiter

    def _join_result(self, group: Group, member: Member, *, with_members: bool) -> JoinResult:
        members: tuple[JoinedMember, ...] = ()
        if with_members:
            members = tuple(
                JoinedMember(m.member_id, m.instance_id, m.metadata_for(group.protocol_name))
                for m in group.members.values()
            )
        return JoinResult(
            E.NONE,
            member.member_id,
            group.generation,
            group.protocol_type,
            group.protocol_name,
            group.leader_id or "",
            members,
        )

    # ---- rebalance -------------------------------------------------------------------------

    def _prepare_rebalance(self, group: Group, now_ms: int) -> None:
        if group.state is S.COMPLETING_REBALANCE:
            for m in group.members.values():
                m.assignment = b""
                self._answer(m.sync_waiter, SyncResult(E.REBALANCE_IN_PROGRESS))
                m.sync_waiter = None
        timeout = group.rebalance_timeout_ms()
        delay = self.config.initial_rebalance_delay_ms
        if group.state is S.EMPTY and delay > 0:
            group.initial_join = True
            group.new_member_added = False
            first = min(delay, timeout)
            group.initial_join_remaining_ms = max(timeout - first, 0)
            group.join_deadline_ms = now_ms + first
        else:
            group.initial_join = False
            group.join_deadline_ms = now_ms + timeout
        group.transition(S.PREPARING_REBALANCE, now_ms)
        self._maybe_complete_join(group, now_ms)

    def _maybe_complete_join(self, group: Group, now_ms: int) -> None:
        if group.state is not S.PREPARING_REBALANCE:
            return
        if group.initial_join:
            return
        if group.all_joined():
            self._complete_join(group, now_ms)

    def _join_deadline(self, group: Group, now_ms: int) -> None:
        if group.initial_join and group.new_member_added and group.initial_join_remaining_ms > 0:
            step = min(self.config.initial_rebalance_delay_ms, group.initial_join_remaining_ms)
            group.initial_join_remaining_ms -= step
            group.new_member_added = False
            group.join_deadline_ms += step
            return
        self._complete_join(group, now_ms)

    def _complete_join(self, group: Group, now_ms: int) -> None:
        group.initial_join = False
        for m in [m for m in group.members.values() if m.join_waiter is None]:
            self._remove(group, m)
        group.generation += 1
        if not group.members:
            group.protocol_name = group.leader_id = None
            group.transition(S.EMPTY, now_ms)
            self._group_changes[group.group_id] = group
            return
        first = next(iter(group.members.values()))
        group.protocol_type = first.protocol_type
        if group.leader_id not in group.members:
            group.leader_id = first.member_id
        group.protocol_name = group.select_protocol()
        group.transition(S.COMPLETING_REBALANCE, now_ms)
        group.sync_deadline_ms = now_ms + group.rebalance_timeout_ms()
        for m in group.members.values():
            m.assignment = b""
            m.last_heartbeat_ms = now_ms
            result = self._join_result(group, m, with_members=m.member_id == group.leader_id)
            self._answer(m.join_waiter, result)
            m.join_waiter = None

    def _remove(self, group: Group, member: Member) -> None:
        del group.members[member.member_id]
        instance = member.instance_id
        if instance is not None and group.static_members.get(instance) == member.member_id:
            del group.static_members[instance]
        self._answer(member.join_waiter, JoinResult(E.UNKNOWN_MEMBER_ID, member.member_id))
        self._answer(member.sync_waiter, SyncResult(E.UNKNOWN_MEMBER_ID))
        member.join_waiter = member.sync_waiter = None
        if group.leader_id == member.member_id:
            group.leader_id = None

    def _member_gone(self, group: Group, now_ms: int) -> None:
        """After removing members: rebalance, or finish a join that was only waiting for them."""
        if group.state in (S.STABLE, S.COMPLETING_REBALANCE):
            self._prepare_rebalance(group, now_ms)
        elif group.state is S.PREPARING_REBALANCE:
            if not group.members and not group.pending_members:
                self._complete_join(group, now_ms)
            else:
                self._maybe_complete_join(group, now_ms)

    def _check_member(
        self, group: Group, member_id: str, instance_id: str | None
    ) -> ErrorCode | None:
        if instance_id is not None:
            current = group.static_members.get(instance_id)
            if current is not None and current != member_id:
                return E.FENCED_INSTANCE_ID
        if member_id not in group.members:
            return E.UNKNOWN_MEMBER_ID
        return None

    # ---- SyncGroup / Heartbeat / LeaveGroup -----------------------------------------------

    def sync(
        self,
        group_id: str,
        generation: int,
        member_id: str,
        instance_id: str | None,
        assignments: dict[str, bytes],
        waiter: Any,
        now_ms: int,
        protocol_type: str | None = None,
        protocol_name: str | None = None,
    ) -> SyncResult | None:
        if not group_id:
            return SyncResult(E.INVALID_GROUP_ID)
        self._catch_up_id(group_id, now_ms)
        group = self.groups.get(group_id)
        if group is None or group.state in (S.EMPTY, S.DEAD):
            return SyncResult(E.UNKNOWN_MEMBER_ID)
        error = self._check_member(group, member_id, instance_id)
        if error is not None:
            return SyncResult(error)
        if generation != group.generation:
            return SyncResult(E.ILLEGAL_GENERATION)
        if (protocol_type is not None and protocol_type != group.protocol_type) or (
            protocol_name is not None and protocol_name != group.protocol_name
        ):
            return SyncResult(E.INCONSISTENT_GROUP_PROTOCOL)
        member = group.members[member_id]
        member.last_heartbeat_ms = now_ms
        if group.state is S.PREPARING_REBALANCE:
            return SyncResult(E.REBALANCE_IN_PROGRESS)
        if group.state is S.STABLE:
            return SyncResult(E.NONE, group.protocol_type, group.protocol_name, member.assignment)
        if member.sync_waiter is not None:
            self._answer(member.sync_waiter, SyncResult(E.REBALANCE_IN_PROGRESS))
        member.sync_waiter = waiter
        if member_id == group.leader_id:
            for m in group.members.values():
                m.assignment = assignments.get(m.member_id, b"")
            group.transition(S.STABLE, now_ms)
            self._group_changes[group.group_id] = group
            for m in group.members.values():
                m.last_heartbeat_ms = now_ms
                result = SyncResult(E.NONE, group.protocol_type, group.protocol_name, m.assignment)
                self._answer(m.sync_waiter, result)
                m.sync_waiter = None
        return None

    def heartbeat(
        self, group_id: str, generation: int, member_id: str, instance_id: str | None, now_ms: int
    ) -> ErrorCode:
        if not group_id:
            return E.INVALID_GROUP_ID
        self._catch_up_id(group_id, now_ms)
        group = self.groups.get(group_id)
        if group is None or group.state in (S.EMPTY, S.DEAD):
            return E.UNKNOWN_MEMBER_ID
        error = self._check_member(group, member_id, instance_id)
        if error is not None:
            return error
        if generation != group.generation:
            return E.ILLEGAL_GENERATION
        group.members[member_id].last_heartbeat_ms = now_ms
        if group.state is S.PREPARING_REBALANCE:
            return E.REBALANCE_IN_PROGRESS
        return E.NONE

    def leave(
        self, group_id: str, members: Iterable[tuple[str, str | None]], now_ms: int
    ) -> tuple[ErrorCode, list[ErrorCode]]:
        """``members``: (member_id, instance_id); member_id "" with an instance id leaves the
        instance whatever its current member id. Returns (group error, per-member errors)."""
        members = list(members)
        if not group_id:
            return E.INVALID_GROUP_ID, [E.INVALID_GROUP_ID] * len(members)
        self._catch_up_id(group_id, now_ms)
        group = self.groups.get(group_id)
        if group is None:
            return E.NONE, [E.UNKNOWN_MEMBER_ID] * len(members)
        errors = []
        removed = False
        for member_id, instance_id in members:
            if instance_id is not None:
                current = group.static_members.get(instance_id)
                if current is None:
                    errors.append(E.UNKNOWN_MEMBER_ID)
                    continue
                if member_id and member_id != current:
                    errors.append(E.FENCED_INSTANCE_ID)
                    continue
                member_id = current
            if member_id in group.pending_members:
                del group.pending_members[member_id]
                removed = True
                errors.append(E.NONE)
                continue
            member = group.members.get(member_id)
            if member is None:
                errors.append(E.UNKNOWN_MEMBER_ID)
                continue
            self._remove(group, member)
            removed = True
            errors.append(E.NONE)
        if removed:
            self._member_gone(group, now_ms)
        return E.NONE, errors

    # ---- time ------------------------------------------------------------------------------

    def tick(self, now_ms: int) -> None:
        """Fire every deadline that has passed: pending member ids, sessions, join, sync."""
        for group in list(self.groups.values()):
            self._catch_up(group, now_ms)

    def next_deadline_ms(self) -> int | None:
        """When :meth:`tick` next has something to do (None: no deadline pending)."""
        return min(
            (d for g in self.groups.values() if (d := self._deadline(g)) is not None),
            default=None,
        )

    def _catch_up_id(self, group_id: str, now_ms: int | None) -> None:
        group = self.groups.get(group_id)
        if group is not None and now_ms is not None:
            self._catch_up(group, now_ms)

    def _catch_up(self, group: Group, now_ms: int) -> None:
        """Fire the group's deadlines that have passed by ``now_ms``. Every request catches
        its group up first, so the answer never depends on how late the timer runs: a
        DeleteGroups issued once the last session deadline has passed finds the group Empty."""
        due = self._deadline(group)
        if due is not None and due <= now_ms:
            self._fire(group, now_ms)

    @staticmethod
    def _deadline(group: Group) -> int | None:
        due = [*group.pending_members.values()]
        due += [
            m.last_heartbeat_ms + m.session_timeout_ms
            for m in group.members.values()
            if m.join_waiter is None and m.sync_waiter is None
        ]
        if group.state is S.PREPARING_REBALANCE:
            due.append(group.join_deadline_ms)
        elif group.state is S.COMPLETING_REBALANCE:
            due.append(group.sync_deadline_ms)
        return min(due, default=None)

    def _fire(self, group: Group, now_ms: int) -> None:
        if group.pending_members:
            for member_id, expiry in list(group.pending_members.items()):
                if expiry <= now_ms:
                    del group.pending_members[member_id]
            self._maybe_complete_join(group, now_ms)
        expired = [
            m
            for m in group.members.values()
            if m.join_waiter is None
            and m.sync_waiter is None
            and m.last_heartbeat_ms + m.session_timeout_ms <= now_ms
        ]
        if expired:
            for m in expired:
                self._remove(group, m)
            self._member_gone(group, now_ms)
        while group.state is S.PREPARING_REBALANCE and group.join_deadline_ms <= now_ms:
            self._join_deadline(group, now_ms)
        if group.state is S.COMPLETING_REBALANCE and group.sync_deadline_ms <= now_ms:
            late = [m for m in group.members.values() if m.sync_waiter is None]
            for m in late:
                self._remove(group, m)
            if late:
                self._member_gone(group, now_ms)
            else:
                group.sync_deadline_ms = now_ms + group.rebalance_timeout_ms()

    # ---- offsets ---------------------------------------------------------------------------

    def commit(
        self,
        group_id: str,
        generation: int,
        member_id: str,
        instance_id: str | None,
        offsets: list[CommitOffset],
        now_ms: int,
    ) -> tuple[list[int], list[OffsetRecord]]:
        """Validate and apply a commit: (error per offset, records to make durable)."""
        error = self._commit_error(group_id, generation, member_id, instance_id, now_ms)
        if error is not E.NONE:
            return [error] * len(offsets), []
        codes: list[int] = []
        records = []
        committed = self.offsets.setdefault(group_id, {})
        for o in offsets:
            metadata = o.metadata or ""
            if len(metadata.encode()) > self.config.offset_metadata_max_bytes:
                codes.append(OFFSET_METADATA_TOO_LARGE)
                continue
            commit_ts = o.commit_ts if o.commit_ts >= 0 else now_ms
            expire_ts = commit_ts + o.retention_ms if o.retention_ms >= 0 else -1
            info = OffsetInfo(o.offset, o.leader_epoch, metadata, commit_ts, expire_ts)
            committed[(o.topic, o.partition)] = info
            records.append(OffsetRecord(group_id, o.topic, o.partition, info))
            codes.append(E.NONE)
        if not committed:
            del self.offsets[group_id]
        return codes, records

    def _commit_error(
        self, group_id: str, generation: int, member_id: str, instance_id: str | None, now_ms: int
    ) -> ErrorCode:
        if not group_id:
            return E.INVALID_GROUP_ID
        self._catch_up_id(group_id, now_ms)
        group = self.groups.get(group_id)
        if group is None:
            if generation >= 0:
                return E.ILLEGAL_GENERATION
            self.groups[group_id] = Group(group_id, state_since_ms=now_ms)
            return E.NONE
        if group.state is S.DEAD:
            return E.COORDINATOR_NOT_AVAILABLE
        if instance_id is not None:
            current = group.static_members.get(instance_id)
            if current is not None and current != member_id:
                return E.FENCED_INSTANCE_ID
        if generation < 0 and group.state is S.EMPTY:
            return E.NONE
        if member_id not in group.members:
            return E.UNKNOWN_MEMBER_ID
        if generation != group.generation:
            return E.ILLEGAL_GENERATION
        if group.state is S.COMPLETING_REBALANCE:
            return E.REBALANCE_IN_PROGRESS
        group.members[member_id].last_heartbeat_ms = now_ms
        return E.NONE

    def validate_txn_commit(
        self, group_id: str, generation: int, member_id: str, instance_id: str | None
    ) -> ErrorCode:
        """KIP-447 checks of a TxnOffsetCommit (Kafka's ``doTxnCommitOffsets``): unlike a plain
        commit, an empty member id with generation -1 is accepted whatever the group's state."""
        if not group_id:
            return E.INVALID_GROUP_ID
        group = self.groups.get(group_id)
        if group is None:
            return E.NONE
        if group.state is S.DEAD:
            return E.COORDINATOR_NOT_AVAILABLE
        if instance_id is not None:
            current = group.static_members.get(instance_id)
            if current is not None and current != member_id:
                return E.FENCED_INSTANCE_ID
        if member_id and member_id not in group.members:
            return E.UNKNOWN_MEMBER_ID
        if generation >= 0 and generation != group.generation:
            return E.ILLEGAL_GENERATION
        return E.NONE

    def apply_offsets(
        self, group_id: str, offsets: list[CommitOffset], now_ms: int
    ) -> list[OffsetRecord]:
        """Offsets of a committed transaction: applied as they are (they were validated when
        committed into the transaction); returns the records to make durable."""
        if group_id not in self.groups:
            self.groups[group_id] = Group(group_id, state_since_ms=now_ms)
        committed = self.offsets.setdefault(group_id, {})
        records = []
        for o in offsets:
            info = OffsetInfo(o.offset, o.leader_epoch, o.metadata or "", now_ms)
            committed[(o.topic, o.partition)] = info
            records.append(OffsetRecord(group_id, o.topic, o.partition, info))
        if not committed:
            del self.offsets[group_id]
        return records

    def fetch(
        self, group_id: str, partitions: list[TopicPartition] | None
    ) -> dict[TopicPartition, OffsetInfo | None]:
        """Committed offsets; ``partitions`` None = every partition the group committed."""
        committed = self.offsets.get(group_id, {})
        if partitions is None:
            return dict(sorted(committed.items()))
        return {tp: committed.get(tp) for tp in partitions}

    def delete_offsets(
        self, group_id: str, partitions: list[TopicPartition], now_ms: int | None = None
    ) -> tuple[ErrorCode, list[ErrorCode], list[OffsetRecord]]:
        self._catch_up_id(group_id, now_ms)
        group = self.groups.get(group_id)
        if not group_id:
            return E.INVALID_GROUP_ID, [], []
        if group is None or group.state is S.DEAD:
            return E.GROUP_ID_NOT_FOUND, [], []
        subscribed: set[str] = set()
        if group.state is not S.EMPTY:
            topics = group.subscribed_topics()
            if topics is None:
                return E.NON_EMPTY_GROUP, [], []
            subscribed = topics
        committed = self.offsets.get(group_id, {})
        codes, records = [], []
        for topic, partition in partitions:
            if topic in subscribed:
                codes.append(E.GROUP_SUBSCRIBED_TO_TOPIC)
                continue
            codes.append(E.NONE)
            if committed.pop((topic, partition), None) is not None:
                records.append(OffsetRecord(group_id, topic, partition, None))
        if not committed:
            self.offsets.pop(group_id, None)
        return E.NONE, codes, records

    def delete_groups(
        self, group_ids: list[str], now_ms: int | None = None
    ) -> tuple[list[ErrorCode], list[OffsetRecord]]:
        codes, records = [], []
        for group_id in group_ids:
            self._catch_up_id(group_id, now_ms)
            group = self.groups.get(group_id)
            if not group_id:
                codes.append(E.INVALID_GROUP_ID)
            elif group is None or group.state is S.DEAD:
                codes.append(E.GROUP_ID_NOT_FOUND)
            elif group.state is not S.EMPTY:
                codes.append(E.NON_EMPTY_GROUP)
            else:
                group.state = S.DEAD
                del self.groups[group_id]
                self._group_changes[group_id] = None
                records += self._drop_offsets(group_id)
                codes.append(E.NONE)
        return codes, records

    def _drop_offsets(self, group_id: str) -> list[OffsetRecord]:
        committed = self.offsets.pop(group_id, {})
        return [OffsetRecord(group_id, t, p, None) for (t, p) in committed]

    def expire_offsets(self, now_ms: int) -> list[OffsetRecord]:
        """Drop the offsets (and the group) of groups Empty and idle for the retention time.

        An offset committed with an explicit retention (OffsetCommit v2-v4) expires at its own
        expire timestamp once its group is Empty, as in Kafka."""
        retention = self.config.offsets_retention_ms
        records: list[OffsetRecord] = []
        for group_id, group in list(self.groups.items()):
            if group.state is not S.EMPTY:
                continue
            committed = self.offsets.get(group_id, {})
            last_commit = max((i.commit_ts for i in committed.values()), default=0)
            idle = max(group.state_since_ms, last_commit) + retention <= now_ms
            expired = [
                tp
                for tp, i in committed.items()
                if (i.expire_ts <= now_ms if i.expire_ts >= 0 else idle)
            ]
            for tp in expired:
                del committed[tp]
                records.append(OffsetRecord(group_id, tp[0], tp[1], None))
            if not committed:
                self.offsets.pop(group_id, None)
                if idle or expired:
                    del self.groups[group_id]
                    self._group_changes[group_id] = None
        return records

    def on_topic_deleted(self, topic: str) -> list[OffsetRecord]:
        records = []
        for group_id, committed in list(self.offsets.items()):
            for tp in [tp for tp in committed if tp[0] == topic]:
                del committed[tp]
                records.append(OffsetRecord(group_id, tp[0], tp[1], None))
            if not committed:
                del self.offsets[group_id]
        return records

    # ---- listing ---------------------------------------------------------------------------

    def list_groups(
        self, states: Iterable[str] = (), now_ms: int | None = None
    ) -> list[tuple[str, str, str]]:
        """(group id, protocol type, state) for every group, optionally filtered by state."""
        if now_ms is not None:
            self.tick(now_ms)
        wanted = {s.lower() for s in states}
        return [
            (g.group_id, g.protocol_type or "", g.state.value)
            for g in self.groups.values()
            if not wanted or g.state.value.lower() in wanted
        ]

    def describe(self, group_id: str, now_ms: int | None = None) -> GroupDescription:
        self._catch_up_id(group_id, now_ms)
        group = self.groups.get(group_id)
        if group is None:
            return GroupDescription(group_id, S.DEAD.value, "", "", ())
        stable = group.state is S.STABLE
        members = tuple(
            MemberDescription(
                m.member_id,
                m.instance_id,
                m.client_id,
                m.client_host,
                m.metadata_for(group.protocol_name) if stable else b"",
                m.assignment if stable else b"",
            )
            for m in group.members.values()
        )
        return GroupDescription(
            group_id,
            group.state.value,
            group.protocol_type or "",
            (group.protocol_name or "") if stable else "",
            members,
        )

    def all_committed_offsets(self) -> dict[str, dict[TopicPartition, OffsetInfo]]:
        return {g: dict(c) for g, c in self.offsets.items()}
