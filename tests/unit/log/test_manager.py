import json
from pathlib import Path

import pytest

from streamd.errors import (
    ConfigError,
    InvalidConfig,
    InvalidPartitions,
    InvalidTopic,
    TopicAlreadyExists,
    UnknownTopicOrPartition,
)
from streamd.log.fsync import FsyncPolicy
from streamd.log.manager import LogManager

from .batches import simple_batch

DEFAULTS = {"segment.bytes": "2048", "index.interval.bytes": "256"}


def manager(tmp_path: Path, **defaults: str) -> LogManager:
    m = LogManager(tmp_path, defaults=DEFAULTS | defaults, fsync=FsyncPolicy.parse("never"))
    m.load()
    return m


async def test_persistence_across_reopen(tmp_path: Path) -> None:
    m = manager(tmp_path)
    topic = m.create_topic("orders", 3, {"retention.ms": "60000"})
    for _ in range(10):
        await m.partition("orders", 1).append(simple_batch(3), now_ms=1)
    m.partition("orders", 1).delete_records_before(7)
    m.add_partitions("orders", 5)
    m.update_config("orders", {"cleanup.policy": "compact"}, ["retention.ms"])
    await m.close()

    meta = json.loads((tmp_path / "topics" / "orders" / "topic.json").read_text())
    assert meta["format"] == 1 and meta["partitions"] == 5

    m2 = manager(tmp_path)
    again = m2.get("orders")
    assert again is not None
    assert again.topic_id == topic.topic_id
    assert len(again.partitions) == 5
    assert again.overrides == {"cleanup.policy": "compact"}
    assert again.config.cleanup_policy == "compact"
    assert again.config.retention_ms == 7 * 24 * 3600 * 1000
    p1 = m2.partition("orders", 1)
    assert (p1.log_start_offset, p1.log_end_offset) == (7, 30)
    assert m2.partition("orders", 4).log_end_offset == 0
    await m2.close()


@pytest.mark.parametrize("name", ["", ".", "..", "../evil", "a/b", "x" * 250, "sp ace"])
async def test_invalid_names_touch_nothing(tmp_path: Path, name: str) -> None:
    m = manager(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(InvalidTopic):
        m.create_topic(name, 1)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    await m.close()


async def test_create_errors(tmp_path: Path) -> None:
    m = manager(tmp_path)
    m.create_topic("t", 1)
    with pytest.raises(TopicAlreadyExists):
        m.create_topic("t", 2)
    with pytest.raises(InvalidPartitions):
        m.create_topic("u", 0)
    with pytest.raises(InvalidConfig, match="retention.ms"):
        m.create_topic("v", 1, {"retention.ms": "x"})
    with pytest.raises(InvalidConfig, match="bogus"):
        m.create_topic("w", 1, {"bogus": "1"})
    assert sorted(m.topics()) == ["t"]
    assert sorted(p.name for p in (tmp_path / "topics").iterdir()) == ["t"]
    with pytest.raises(InvalidPartitions):
        m.add_partitions("t", 1)
    with pytest.raises(UnknownTopicOrPartition):
        m.partition("t", 1)
    with pytest.raises(UnknownTopicOrPartition):
        m.partition("nope", 0)
    with pytest.raises(InvalidConfig):
        m.alter_config("t", {"segment.ms": "-3"})
    assert m.get("t").overrides == {}  # type: ignore[union-attr]
    await m.close()


async def test_delete_topic(tmp_path: Path) -> None:
    m = manager(tmp_path)
    m.create_topic("gone", 2)
    await m.partition("gone", 0).append(simple_batch(1), now_ms=1)
    await m.delete_topic("gone")
    assert m.get("gone") is None
    assert not (tmp_path / "topics" / "gone").exists()
    with pytest.raises(UnknownTopicOrPartition):
        await m.delete_topic("gone")
    m.create_topic("gone", 1)
    assert m.partition("gone", 0).log_end_offset == 0
    await m.close()


async def test_alter_config_and_defaults(tmp_path: Path) -> None:
    m = manager(tmp_path)
    m.create_topic("t", 1, {"retention.bytes": "100"})
    m.alter_config("t", {"retention.ms": "5"})
    topic = m.get("t")
    assert topic is not None and topic.overrides == {"retention.ms": "5"}
    assert topic.config.retention_bytes == -1
    m.set_defaults({"retention.bytes": "999"})
    assert topic.config.retention_bytes == 999 and topic.partitions[0].config is topic.config
    with pytest.raises(InvalidConfig):
        m.set_defaults({"nope": "1"})
    await m.close()


async def _plain_and_tiered(m: LogManager) -> None:
    m.create_topic("plain", 1, {"retention.bytes": "2500"})
    m.create_topic("tiered", 1, {"remote.storage.enable": "true", "local.retention.bytes": "2500"})
    for name in ("plain", "tiered"):
        for _ in range(20):
            await m.partition(name, 0).append(simple_batch(3, value_size=100), now_ms=1)


async def test_housekeeping_retention_and_tiering_veto(tmp_path: Path) -> None:
    archived: set[int] = set()
    asked: list[tuple[str, int]] = []

    def veto(topic: str, partition: int, segment) -> bool:  # noqa: ANN001
        asked.append((topic, partition))
        return segment.base_offset in archived

    m = LogManager(
        tmp_path, defaults=DEFAULTS, fsync=FsyncPolicy.parse("never"), tiering_veto=veto
    )
    m.load()
    await _plain_and_tiered(m)
    removed = await m.run_housekeeping(now=2)
    assert "plain-0" in removed and "tiered-0" not in removed
    assert m.partition("plain", 0).size_bytes < 5000
    assert set(asked) == {("tiered", 0)}
    archived.update(s.base_offset for s in m.partition("tiered", 0).segments)
    removed = await m.run_housekeeping(now=3)
    assert "tiered-0" in removed
    assert m.partition("tiered", 0).log_start_offset > 0
    await m.close()


async def test_without_a_tiering_veto_no_tiered_segment_is_deleted(tmp_path: Path) -> None:
    """Fail closed (invariant 4 must not depend on start-up order): a tiered topic's segments
    stay until something can say they are archived; plain topics are not affected."""
    m = manager(tmp_path)
    await _plain_and_tiered(m)
    tiered = m.partition("tiered", 0)
    segments = len(tiered.segments)
    assert segments > 2
    removed = await m.run_housekeeping(now=2)
    assert "plain-0" in removed and "tiered-0" not in removed
    assert len(tiered.segments) == segments and tiered.log_start_offset == 0
    await m.close()


def test_fsync_policy_parse() -> None:
    assert FsyncPolicy.parse("always").always
    assert FsyncPolicy.parse("never").mode == "never"
    assert FsyncPolicy.parse("250") == FsyncPolicy("interval", 250)
    assert FsyncPolicy.parse("interval:100").interval_ms == 100
    for bad in ("sometimes", "0", "-5", ""):
        with pytest.raises(ConfigError):
            FsyncPolicy.parse(bad)


def test_a_failed_creation_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import streamd.log.manager as manager_mod
    from streamd.errors import StorageError

    m = manager(tmp_path)
    real = manager_mod.PartitionLog.open
    opened: list[int] = []

    def failing(directory: Path, *args: object, **kwargs: object) -> object:
        opened.append(1)
        if len(opened) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(directory))
        return real(directory, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(manager_mod.PartitionLog, "open", failing)
    with pytest.raises(StorageError) as info:
        m.create_topic("orders", 5)
    assert str(tmp_path) not in str(info.value) and "No space left" in str(info.value)
    assert m.get("orders") is None and not (tmp_path / "topics" / "orders").exists()
    monkeypatch.undo()
    assert len(m.create_topic("orders", 5).partitions) == 5


def test_loading_removes_unfinished_creations_of_earlier_versions_only(tmp_path: Path) -> None:
    m = manager(tmp_path)
    m.create_topic("kept.tmp", 1)
    m.create_topic("a", 1)
    leftover = tmp_path / "topics" / "b.0123456789abcdef0123456789abcdef.tmp"
    leftover.mkdir()
    (leftover / "topic.json").write_text(
        json.dumps({"format": 1, "topic_id": "00" * 16, "name": "b", "partitions": 1,
                    "overrides": {}})
    )
    m2 = manager(tmp_path)
    assert set(m2.topics()) == {"kept.tmp", "a"}
    assert not leftover.exists()
