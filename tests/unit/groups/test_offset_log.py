"""The committed-offsets file: reopen, torn tail, compaction, and the asyncio service."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from streamd.groups.coordinator import CommitOffset
from streamd.groups.model import OffsetInfo, OffsetRecord
from streamd.groups.offset_log import OffsetLog
from streamd.groups.service import GroupService, group_config


def rec(group: str, p: int, offset: int | None) -> OffsetRecord:
    info = None if offset is None else OffsetInfo(offset, 2, "mé", 1234)
    return OffsetRecord(group, "topic", p, info)


def test_reopen_restores_offsets_and_tombstones(tmp_path: Path) -> None:
    log = OffsetLog(tmp_path)
    assert log.load() == {}
    log.append([rec("g", 0, 5), rec("g", 1, 6), rec("h", 0, 1)])
    log.append([rec("g", 0, 9), rec("h", 0, None)])
    log.close()
    again = OffsetLog(tmp_path)
    assert again.load() == {
        "g": {
            ("topic", 0): OffsetInfo(9, 2, "mé", 1234),
            ("topic", 1): OffsetInfo(6, 2, "mé", 1234),
        }
    }
    assert again.records == 5


def test_torn_last_record_is_ignored_and_truncated(tmp_path: Path) -> None:
    log = OffsetLog(tmp_path)
    log.load()
    log.append([rec("g", 0, 5)])
    log.append([rec("g", 0, 6)])
    log.close()
    path = tmp_path / OffsetLog.FILE
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    again = OffsetLog(tmp_path)
    assert again.load() == {"g": {("topic", 0): OffsetInfo(5, 2, "mé", 1234)}}
    again.append([rec("g", 1, 1)])
    again.close()
    third = OffsetLog(tmp_path)
    assert set(third.load()["g"]) == {("topic", 0), ("topic", 1)}


def test_corrupt_record_stops_loading(tmp_path: Path) -> None:
    log = OffsetLog(tmp_path)
    log.load()
    log.append([rec("g", 0, 5), rec("g", 0, 6)])
    log.close()
    path = tmp_path / OffsetLog.FILE
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert OffsetLog(tmp_path).load()["g"][("topic", 0)].offset == 5


def test_rewrite_keeps_only_live_offsets(tmp_path: Path) -> None:
    log = OffsetLog(tmp_path)
    log.load()
    for i in range(50):
        log.append([rec("g", 0, i)])
    snapshot = {"g": {("topic", 0): OffsetInfo(49, 2, "mé", 1234)}}
    log.rewrite(snapshot)
    log.append([rec("g", 1, 1)])
    log.close()
    again = OffsetLog(tmp_path)
    loaded = again.load()
    assert loaded["g"][("topic", 0)].offset == 49 and again.records == 2


async def test_service_persists_batched_commits_across_restart(tmp_path: Path) -> None:
    svc = GroupService(tmp_path, group_config({"group.initial.rebalance.delay.ms": 0}))
    await svc.open()
    svc.start()
    appends: list[int] = []
    original = svc.log.append

    def counting(records: list[OffsetRecord]) -> None:
        appends.append(len(records))
        original(records)

    svc.log.append = counting  # type: ignore[method-assign]
    results = await asyncio.gather(
        *(svc.commit(f"g{i % 3}", -1, "", None, [CommitOffset("t", i, i * 10)]) for i in range(30))
    )
    assert all(codes == [0] for codes in results)
    assert sum(appends) == 30 and len(appends) < 30, appends
    assert await svc.delete_groups(["g2"]) == [0]
    await svc.close()

    reopened = GroupService(tmp_path)
    await reopened.open()
    offsets = reopened.all_committed_offsets()
    assert set(offsets) == {"g0", "g1"}
    assert offsets["g1"][("t", 4)].offset == 40
    assert reopened.fetch("g0", [("t", 3)])[("t", 3)] == OffsetInfo(
        30, -1, "", offsets["g0"][("t", 3)].commit_ts
    )
    assert not (tmp_path / "groups" / "offsets.log.tmp").exists()
    await reopened.close()


async def test_service_join_waits_on_future(tmp_path: Path) -> None:
    from streamd.groups.model import JoinRequest

    svc = GroupService(tmp_path, group_config({"group.initial.rebalance.delay.ms": 0}))
    await svc.open()
    svc.start()
    req = JoinRequest("g", "", None, "consumer", (("range", b""),), 6000, 6000, "c", "/h", True)
    first = await svc.join(req)
    assert first.error == 79
    joined = await svc.join(replace(req, member_id=first.member_id))
    assert joined.error == 0 and joined.generation_id == 1
    sync = await svc.sync("g", 1, joined.member_id, None, {joined.member_id: b"x"})
    assert sync.assignment == b"x"
    assert svc.heartbeat("g", 1, joined.member_id, None) == 0
    await svc.close()
