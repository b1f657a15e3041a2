"""Total retention planned against the manifest."""

from __future__ import annotations

from streamd.tiering.manifest import SegmentMeta, add_segment, empty_manifest
from streamd.tiering.retention import plan_remote_start

TOPIC_ID = "0123456789abcdef0123456789abcdef"


def manifest(*segments: tuple[int, int, int, int]):  # noqa: ANN201
    m = empty_manifest("t", TOPIC_ID, 0)
    for base, last, size, max_ts in segments:
        m = add_segment(
            m,
            SegmentMeta(
                base_offset=base, last_offset=last, size_bytes=size, first_timestamp=0,
                max_timestamp=max_ts, record_count=last - base + 1, checksum="00000000",
                key=f"{base}.log", index_key=f"{base}.index", index_checksum="00000000",
                uploaded_at_ms=0,
            ),
        )
    return m


M = manifest((0, 9, 100, 1000), (10, 19, 100, 2000), (20, 29, 100, 3000))


def test_nothing_expires_without_limits() -> None:
    assert plan_remote_start(M, now_ms=10**9, retention_ms=-1, retention_bytes=-1) is None


def test_time_retention_stops_at_the_first_kept_segment() -> None:
    assert plan_remote_start(M, now_ms=2500, retention_ms=1000, retention_bytes=-1) == 10
    assert plan_remote_start(M, now_ms=3500, retention_ms=1000, retention_bytes=-1) == 20
    assert plan_remote_start(M, now_ms=1500, retention_ms=1000, retention_bytes=-1) is None


def test_size_retention_counts_local_bytes_not_yet_archived() -> None:
    assert plan_remote_start(M, now_ms=0, retention_ms=-1, retention_bytes=200) == 10
    assert (
        plan_remote_start(
            M, now_ms=0, retention_ms=-1, retention_bytes=200, local_bytes_not_archived=100
        )
        == 20
    )
    assert plan_remote_start(M, now_ms=0, retention_ms=-1, retention_bytes=10**6) is None
