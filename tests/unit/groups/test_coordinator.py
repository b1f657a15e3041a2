"""The classic group protocol state machine, driven without sockets or clocks."""

from __future__ import annotations

from dataclasses import replace

from streamd.errors import ErrorCode as E
from streamd.groups.model import GroupState, JoinRequest, JoinResult, SyncResult

from .helpers import RANGE, REBALANCE, SESSION, Harness, subscription


def form_group(h: Harness, n: int) -> tuple[list[str], int]:
    """n members join and sync; returns member ids (leader first) and the generation."""
    tokens = [h.new_member() for _ in range(n)]
    if h.c.groups["g"].state is GroupState.PREPARING_REBALANCE:
        h.advance(REBALANCE)
    results = [h.answer(t) for t in tokens]
    assert all(r.error == E.NONE for r in results)
    gen = results[0].generation_id
    leader = results[0].leader_id
    members = [leader] + [r.member_id for r in results if r.member_id != leader]
    syncs = [
        h.sync(m, gen, {m: m.encode() for m in members} if m == leader else None)
        for m in reversed(members)
    ]
    for m, s in zip(reversed(members), syncs, strict=True):
        r = s if isinstance(s, SyncResult) else h.answer(s)
        assert r.error == E.NONE and r.assignment == m.encode()
    assert h.c.groups["g"].state is GroupState.STABLE
    return members, gen


def test_single_member_happy_path() -> None:
    h = Harness()
    first = h.join()
    assert first.error == E.MEMBER_ID_REQUIRED and first.member_id
    token = h.join(first.member_id)
    h.advance(3000)
    joined = h.answer(token)
    assert joined.error == E.NONE
    assert joined.generation_id == 1
    assert joined.leader_id == joined.member_id == first.member_id
    assert joined.protocol_name == "range" and joined.protocol_type == "consumer"
    assert [m.member_id for m in joined.members] == [first.member_id]
    sync = h.answer(h.sync(first.member_id, 1, {first.member_id: b"A"}))
    assert sync == SyncResult(E.NONE, "consumer", "range", b"A")
    assert h.heartbeat(first.member_id, 1) == E.NONE


def test_three_members_one_generation_leader_gets_metadata() -> None:
    h = Harness()
    a = h.new_member()
    h.advance(3000)
    assert h.answer(a).generation_id == 1
    b, c = h.new_member(), h.new_member()
    group = h.c.groups["g"]
    assert group.state is GroupState.PREPARING_REBALANCE
    a2 = h.join(h.answer(a).member_id)
    results = [h.answer(t) for t in (a2, b, c)]
    assert {r.generation_id for r in results} == {2}
    leader = results[0].member_id
    assert all(r.leader_id == leader for r in results)
    assert len(results[0].members) == 3 and results[1].members == results[2].members == ()
    assert group.state is GroupState.COMPLETING_REBALANCE
    follower = h.sync(results[1].member_id, 2)
    assert follower not in h.answers
    assert h.heartbeat(results[2].member_id, 2) == E.NONE
    h.sync(leader, 2, {r.member_id: r.member_id.encode() for r in results})
    assert h.answer(follower).assignment == results[1].member_id.encode()
    late = h.sync(results[2].member_id, 2)
    assert isinstance(late, SyncResult) and late.assignment == results[2].member_id.encode()
    assert group.state is GroupState.STABLE


def test_form_group_helper_three_members() -> None:
    h = Harness()
    members, gen = form_group(h, 3)
    assert len(set(members)) == 3 and gen >= 1


def test_initial_rebalance_delay_collects_members() -> None:
    h = Harness(initial_rebalance_delay_ms=3000)
    a = h.new_member()
    h.advance(2000)
    b = h.new_member()
    h.advance(2000)
    assert a not in h.answers, "a new member arrived: the delay is extended once"
    h.advance(2000)
    assert h.answer(a).generation_id == h.answer(b).generation_id == 1


def test_member_id_required_only_for_v4_and_dynamic_members() -> None:
    h = Harness()
    old = h.join(v4=False)
    h.advance(3000)
    assert h.answer(old).error == E.NONE and h.answer(old).member_id
    static = h.join(group="s", instance="i-1")
    assert static not in (None,) and not isinstance(static, JoinResult)


def test_unknown_member_and_bad_inputs() -> None:
    h = Harness()
    assert h.join("nobody").error == E.UNKNOWN_MEMBER_ID
    assert h.join(group="").error == E.INVALID_GROUP_ID
    assert h.join(session=1000).error == E.INVALID_SESSION_TIMEOUT
    assert h.join(session=1_800_001).error == E.INVALID_SESSION_TIMEOUT
    assert h.join(protocols=()).error == E.INCONSISTENT_GROUP_PROTOCOL
    assert h.heartbeat("nobody", 1, group="none") == E.UNKNOWN_MEMBER_ID
    assert h.sync("nobody", 1, group="none").error == E.UNKNOWN_MEMBER_ID


def test_protocol_selection_votes_and_inconsistent() -> None:
    h = Harness()
    both = (("roundrobin", b"r"), ("range", b"g"))
    rev = (("range", b"g"), ("roundrobin", b"r"))
    t1 = h.new_member(protocols=both)
    t2 = h.new_member(protocols=rev)
    t3 = h.new_member(protocols=rev)
    h.advance(REBALANCE)
    results = [h.answer(t) for t in (t1, t2, t3)]
    assert {r.protocol_name for r in results} == {"range"}
    leader = next(r for r in results if r.members)
    assert {m.metadata for m in leader.members} == {b"g"}
    bad = h.join(protocols=(("sticky", b""),))
    assert bad.error == E.INCONSISTENT_GROUP_PROTOCOL
    assert h.join(protocol_type="connect").error == E.INCONSISTENT_GROUP_PROTOCOL


def test_protocol_tie_goes_to_leader_preference() -> None:
    h = Harness()
    t1 = h.new_member(protocols=(("cooperative-sticky", b""), ("range", b"")))
    h.advance(3000)
    assert h.answer(t1).protocol_name == "cooperative-sticky"
    t2 = h.new_member(protocols=(("range", b""), ("cooperative-sticky", b"")))
    t1b = h.join(h.answer(t1).member_id, protocols=(("cooperative-sticky", b""), ("range", b"")))
    assert h.answer(t2).protocol_name == h.answer(t1b).protocol_name == "cooperative-sticky"


def test_session_expiry_removes_member_and_rebalances() -> None:
    h = Harness()
    (a, b), gen = form_group(h, 2)
    for _ in range(3):
        h.advance(SESSION // 4)
        assert h.heartbeat(a, gen) == E.NONE
    h.advance(SESSION // 4)
    group = h.c.groups["g"]
    assert b not in group.members
    assert group.state is GroupState.PREPARING_REBALANCE
    assert h.heartbeat(a, gen) == E.REBALANCE_IN_PROGRESS
    rejoin = h.join(a)
    r = h.answer(rejoin)
    assert r.generation_id == gen + 1 and [m.member_id for m in r.members] == [a]


def test_rebalance_timeout_drops_members_that_do_not_rejoin() -> None:
    h = Harness()
    (a, b, c), gen = form_group(h, 3)
    joiner = h.new_member()
    ta = h.join(a)
    for _ in range(5):
        h.advance(5000)
        assert h.heartbeat(b, gen) == E.REBALANCE_IN_PROGRESS
        h.c.heartbeat("g", gen, c, None, h.now)
    tb = h.join(b)
    assert ta not in h.answers
    h.advance(REBALANCE - 25_000)
    results = [h.answer(t) for t in (ta, tb, joiner)]
    assert {r.generation_id for r in results} == {gen + 1}
    group = h.c.groups["g"]
    assert c not in group.members and len(group.members) == 3
    assert h.heartbeat(c, gen + 1) == E.UNKNOWN_MEMBER_ID


def test_members_awaiting_join_are_not_session_expired() -> None:
    h = Harness()
    (a, b), gen = form_group(h, 2)
    ta = h.join(a)
    h.advance(SESSION + 1)
    assert a in h.c.groups["g"].members and b not in h.c.groups["g"].members
    r = h.answer(ta)
    assert r.generation_id == gen + 1 and [m.member_id for m in r.members] == [a]


def test_leave_triggers_rebalance_and_batched_leave() -> None:
    h = Harness()
    (a, b, c), gen = form_group(h, 3)
    err, per = h.c.leave("g", [(c, None)], h.now)
    assert (err, per) == (E.NONE, [E.NONE])
    assert h.c.groups["g"].state is GroupState.PREPARING_REBALANCE
    err, per = h.c.leave("g", [(a, None), ("ghost", None)], h.now)
    assert per == [E.NONE, E.UNKNOWN_MEMBER_ID]
    tb = h.join(b)
    r = h.answer(tb)
    assert r.leader_id == b and r.generation_id == gen + 1
    err, per = h.c.leave("g", [(b, None)], h.now)
    assert h.c.groups["g"].state is GroupState.EMPTY
    assert h.c.leave("nope", [("x", None)], h.now) == (E.NONE, [E.UNKNOWN_MEMBER_ID])


def test_leave_answers_waiting_syncs_with_rebalance_in_progress() -> None:
    h = Harness()
    ta, tb = h.new_member(), h.new_member()
    h.advance(REBALANCE)
    ra, rb = h.answer(ta), h.answer(tb)
    follower = rb.member_id if rb.member_id != rb.leader_id else ra.member_id
    leader = ra.leader_id
    waiting = h.sync(follower, ra.generation_id)
    h.c.leave("g", [(leader, None)], h.now)
    h.collect()
    assert h.answer(waiting).error == E.REBALANCE_IN_PROGRESS


def test_generation_checks() -> None:
    h = Harness()
    (a, b), gen = form_group(h, 2)
    assert h.heartbeat(a, gen - 1) == E.ILLEGAL_GENERATION
    assert h.sync(a, gen + 5).error == E.ILLEGAL_GENERATION
    assert h.heartbeat("ghost", gen) == E.UNKNOWN_MEMBER_ID
    stable = h.sync(b, gen)
    assert stable.error == E.NONE and stable.assignment == b.encode()


def test_follower_rejoin_in_stable_with_same_metadata_does_not_rebalance() -> None:
    h = Harness()
    (a, b), gen = form_group(h, 2)
    r = h.join(b)
    assert isinstance(r, JoinResult) and r.generation_id == gen and r.members == ()
    assert h.c.groups["g"].state is GroupState.STABLE
    changed = h.join(b, protocols=(("range", subscription("t", "u")),))
    assert not isinstance(changed, JoinResult)
    assert h.c.groups["g"].state is GroupState.PREPARING_REBALANCE


def test_sync_timeout_removes_members_that_never_sync() -> None:
    h = Harness()
    ta, tb = h.new_member(), h.new_member()
    h.advance(REBALANCE)
    ra, rb = h.answer(ta), h.answer(tb)
    leader = ra.leader_id
    follower = ra.member_id if ra.member_id != leader else rb.member_id
    waiting = h.sync(follower, ra.generation_id)
    h.advance(REBALANCE)
    group = h.c.groups["g"]
    assert leader not in group.members
    assert h.answer(waiting).error == E.REBALANCE_IN_PROGRESS


def test_static_member_rejoin_replaces_old_member_id() -> None:
    h = Harness()
    ta = h.join(instance="i-a")
    h.advance(3000)
    tb = h.join(instance="i-b")
    ta2 = h.join(h.answer(ta).member_id, instance="i-a")
    ra, rb = h.answer(ta2), h.answer(tb)
    gen = ra.generation_id
    leader = ra.leader_id
    follower_id, follower_inst = (
        (rb.member_id, "i-b") if leader == ra.member_id else (ra.member_id, "i-a")
    )
    h.sync(follower_id, gen, instance=follower_inst)
    h.sync(leader, gen, {ra.member_id: b"A", rb.member_id: b"B"})
    assert h.c.groups["g"].state is GroupState.STABLE
    again = h.join(instance=follower_inst)
    assert isinstance(again, JoinResult) and again.error == E.NONE
    assert again.member_id != follower_id and again.generation_id == gen
    assert h.c.groups["g"].state is GroupState.STABLE
    assert h.heartbeat(follower_id, gen, instance=follower_inst) == E.FENCED_INSTANCE_ID
    assert h.join(follower_id, instance=follower_inst).error == E.FENCED_INSTANCE_ID
    new_sync = h.sync(again.member_id, gen, instance=follower_inst)
    assert new_sync.assignment in (b"A", b"B")
    codes, _ = h.c.commit("g", gen, follower_id, follower_inst, [], h.now)
    err, per = h.c.leave("g", [(follower_id, follower_inst)], h.now)
    assert per == [E.FENCED_INSTANCE_ID]
    err, per = h.c.leave("g", [("", follower_inst)], h.now)
    assert per == [E.NONE]


def test_static_member_replacement_fences_a_waiting_join() -> None:
    h = Harness()
    (a, b), gen = form_group(h, 2)
    ts = h.join(instance="i-s")
    first_id = next(m for m in h.c.groups["g"].members if m not in (a, b))
    replacement = h.join(instance="i-s")
    assert h.answer(ts) == JoinResult(E.FENCED_INSTANCE_ID, first_id)
    h.join(a)
    h.join(b)
    r = h.answer(replacement)
    assert r.error == E.NONE and r.generation_id == gen + 1


def test_pending_member_id_expires() -> None:
    h = Harness()
    (a,), gen = form_group(h, 1)
    pending = h.join()
    assert pending.error == E.MEMBER_ID_REQUIRED
    ta = h.join(a)
    assert ta not in h.answers
    h.advance(SESSION)
    assert h.answer(ta).generation_id == gen + 1
    assert h.join(pending.member_id).error == E.UNKNOWN_MEMBER_ID


def test_list_describe_and_delete_groups() -> None:
    h = Harness()
    (a, b), gen = form_group(h, 2)
    h.c.commit("simple", -1, "", None, [], h.now)
    listed = {g for g, _, _ in h.c.list_groups()}
    assert listed == {"g", "simple"}
    assert h.c.list_groups(["stable"]) == [("g", "consumer", "Stable")]
    assert h.c.list_groups(["Empty"]) == [("simple", "", "Empty")]
    d = h.c.describe("g")
    assert d.state == "Stable" and d.protocol_name == "range" and len(d.members) == 2
    assert {m.assignment for m in d.members} == {a.encode(), b.encode()}
    assert h.c.describe("nope").state == "Dead"
    codes, _ = h.c.delete_groups(["g", "simple", "nope", ""])
    assert codes == [E.NON_EMPTY_GROUP, E.NONE, E.GROUP_ID_NOT_FOUND, E.INVALID_GROUP_ID]
    assert "simple" not in h.c.groups


def test_empty_group_after_all_members_leave_starts_fresh_generation() -> None:
    h = Harness()
    (a,), gen = form_group(h, 1)
    h.c.leave("g", [(a, None)], h.now)
    group = h.c.groups["g"]
    assert group.state is GroupState.EMPTY and group.generation == gen + 1
    t = h.new_member(protocols=(("roundrobin", b""),))
    h.advance(3000)
    assert h.answer(t).generation_id == gen + 2
    assert h.answer(t).protocol_name == "roundrobin"


def test_join_rejoin_waiting_twice_answers_old_request() -> None:
    h = Harness()
    (a, b), gen = form_group(h, 2)
    t1 = h.join(a)
    t2 = h.join(a)
    assert h.answer(t1).error == E.REBALANCE_IN_PROGRESS
    h.join(b)
    assert h.answer(t2).error == E.NONE


def test_range_metadata_passthrough() -> None:
    assert RANGE[0][0] == "range"


def _static_pair(
    h: Harness, protocols: tuple[tuple[str, bytes], ...] = RANGE
) -> tuple[dict[str, str], int, str]:
    """Two static members i-a (leader) and i-b in a Stable group with assignments A and B:
    (instance -> member id, generation, leader id)."""
    ta = h.join(instance="i-a", protocols=protocols)
    h.advance(3000)
    tb = h.join(instance="i-b", protocols=protocols)
    ta2 = h.join(h.answer(ta).member_id, instance="i-a", protocols=protocols)
    ra, rb = h.answer(ta2), h.answer(tb)
    assert ra.leader_id == ra.member_id
    ids = {"i-a": ra.member_id, "i-b": rb.member_id}
    h.sync(rb.member_id, ra.generation_id, instance="i-b")
    h.sync(ra.member_id, ra.generation_id, {ra.member_id: b"A", rb.member_id: b"B"}, instance="i-a")
    assert h.c.groups["g"].state is GroupState.STABLE
    return ids, ra.generation_id, ra.member_id


def test_rejoining_static_leader_is_told_the_old_leader_id_below_v9() -> None:
    h = Harness()
    ids, gen, old_leader = _static_pair(h)
    again = h.join(instance="i-a")
    assert isinstance(again, JoinResult) and again.error == E.NONE
    assert again.member_id != old_leader and again.generation_id == gen
    assert again.leader_id == old_leader, "the old id: the new incarnation acts as a follower"
    assert again.members == () and not again.skip_assignment
    group = h.c.groups["g"]
    assert group.state is GroupState.STABLE and group.leader_id == again.member_id
    assert h.heartbeat(ids["i-b"], gen, instance="i-b") == E.NONE
    sync = h.sync(again.member_id, gen, instance="i-a")
    assert isinstance(sync, SyncResult) and sync.assignment == b"A"
    assert h.sync(ids["i-b"], gen, instance="i-b").assignment == b"B"


def test_rejoining_static_leader_skips_the_assignment_from_v9() -> None:
    h = Harness()
    ids, gen, _ = _static_pair(h)
    token = ("join", "v9")
    req = JoinRequest(
        "g", "", "i-a", "consumer", RANGE, SESSION, REBALANCE, supports_skip_assignment=True
    )
    again = h.c.join(req, token, h.now)
    assert isinstance(again, JoinResult) and again.error == E.NONE
    assert again.leader_id == again.member_id and again.skip_assignment
    assert {m.member_id for m in again.members} == {again.member_id, ids["i-b"]}
    assert again.generation_id == gen and h.c.groups["g"].state is GroupState.STABLE
    follower = h.c.join(replace(req, instance_id="i-b"), ("join", "f"), h.now)
    assert isinstance(follower, JoinResult)
    assert not follower.skip_assignment and follower.members == ()
    assert follower.leader_id == again.member_id


def test_static_rejoin_that_changes_the_selected_protocol_rebalances() -> None:
    h = Harness()
    both = (("range", subscription("t")), ("roundrobin", subscription("t")))
    ids, gen, _ = _static_pair(h, both)
    assert h.c.groups["g"].protocol_name == "range"
    token = h.join(instance="i-a", protocols=both[::-1])
    assert not isinstance(token, JoinResult)
    assert h.c.groups["g"].state is GroupState.PREPARING_REBALANCE


def test_next_deadline_is_the_earliest_session_end() -> None:
    h = Harness()
    (a, b), gen = form_group(h, 2)
    group = h.c.groups["g"]
    ends = {m.member_id: m.last_heartbeat_ms + SESSION for m in group.members.values()}
    assert h.c.next_deadline_ms() == min(ends.values())
    h.now += 4000
    assert h.heartbeat(a, gen) == E.NONE
    assert h.c.next_deadline_ms() == ends[b]


def test_requests_fire_passed_deadlines_without_a_tick() -> None:
    """No timer ran (no tick): a DeleteGroups at the members' session deadline still finds
    the group Empty, because the request catches its group up first."""
    h = Harness()
    ids, gen, _ = _static_pair(h)
    deadline = h.c.next_deadline_ms()
    assert deadline is not None
    codes, _ = h.c.delete_groups(["g"], deadline - 1)
    assert codes == [E.NON_EMPTY_GROUP]
    h.now += 1000
    h.heartbeat(ids["i-a"], gen, instance="i-a")  # i-a stays, i-b's session ends first
    codes, _ = h.c.delete_groups(["g"], deadline)
    assert codes == [E.NON_EMPTY_GROUP]
    assert ids["i-b"] not in h.c.groups["g"].members
    last = h.c.next_deadline_ms()
    assert last is not None
    assert h.c.describe("g", last).state in ("PreparingRebalance", "Empty")
    codes, _ = h.c.delete_groups(["g"], last + REBALANCE)
    assert codes == [E.NONE]
