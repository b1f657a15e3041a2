"""Compacted topics on tiered storage: which archived objects the cleaner outdated, and the
manifest change that replaces them (sans-IO)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from streamd.tiering.manifest import ManifestConflict, replace_segments
from streamd.tiering.recompact import may_leave_local_disk, stale_units, units

from .test_manifest import built, seg


@dataclass(eq=False)
class Local:
    base_offset: int
    next_offset: int
    size: int
    readable_size: int = -1
    sealed: bool = True

    def __post_init__(self) -> None:
        if self.readable_size < 0:
            self.readable_size = self.size


def archived_as_is(base: int, last: int) -> Local:
    """A local segment whose bytes are exactly what was archived for ``seg(base, last)``."""
    return Local(base, last + 1, (last - base + 1) * 100)


def test_local_segments_archived_unchanged_are_in_sync() -> None:
    manifest = built((0, 99), (100, 199))
    local = [archived_as_is(0, 99), archived_as_is(100, 199), Local(200, 250, 10, sealed=False)]
    found = units(local, manifest)
    assert [(u.segments[0].base_offset, len(u.entries)) for u in found] == [(0, 1), (100, 1)]
    assert all(u.in_sync for u in found)
    assert stale_units(local, manifest, cleaned_below=250, high_watermark=250) == []


def test_a_cleaned_merge_of_archived_segments_is_stale_once_cleaned() -> None:
    manifest = built((0, 99), (100, 199), (200, 299))
    merged = Local(0, 200, 4_000)
    local = [merged, archived_as_is(200, 299), Local(300, 310, 50, sealed=False)]
    (unit,) = stale_units(local, manifest, cleaned_below=200, high_watermark=310)
    assert unit.segments == (merged,) and [e.base_offset for e in unit.entries] == [0, 100]
    assert stale_units(local, manifest, cleaned_below=150, high_watermark=310) == []
    assert stale_units(local, manifest, cleaned_below=200, high_watermark=150) == []


def test_a_cleaned_segment_past_the_archive_replaces_and_extends_its_tail() -> None:
    manifest = built((0, 99), (100, 199))
    local = [archived_as_is(0, 99), Local(100, 300, 900), Local(300, 320, 10, sealed=False)]
    (unit,) = stale_units(local, manifest, cleaned_below=300, high_watermark=320)
    assert unit.extends and [e.base_offset for e in unit.entries] == [100]
    meta = replace(seg(100, 299), size_bytes=900)
    after = replace_segments(manifest, unit.entries, meta)
    assert [(s.base_offset, s.last_offset) for s in after.segments] == [(0, 99), (100, 299)]
    assert after.last_uploaded_offset == 299


def test_segments_not_aligned_with_entries_form_no_unit() -> None:
    manifest = built((0, 99))
    assert units([Local(50, 100, 10)], manifest) == []


def test_the_local_deletion_veto_waits_for_cleaning_and_the_reupload() -> None:
    manifest = built((0, 99), (100, 199))
    done = archived_as_is(0, 99)
    outdated = Local(100, 200, 300)
    local = [done, outdated, Local(200, 230, 10, sealed=False)]
    assert may_leave_local_disk(done, local, manifest, cleaned_below=200)
    assert not may_leave_local_disk(done, local, manifest, cleaned_below=50), "not cleaned"
    assert not may_leave_local_disk(outdated, local, manifest, cleaned_below=200), "stale"
    fresh = replace_segments(
        manifest, (manifest.segments[1],), replace(seg(100, 199), size_bytes=300)
    )
    assert may_leave_local_disk(outdated, local, fresh, cleaned_below=200)
    assert not may_leave_local_disk(local[2], local, fresh, cleaned_below=300), "not archived"


def test_replacing_archived_segments_keeps_the_manifest_contiguous() -> None:
    manifest = built((0, 99), (100, 199), (200, 299))
    merged = replace(seg(0, 199), checksum="0000abcd")
    after = replace_segments(manifest, manifest.segments[:2], merged)
    assert [(s.base_offset, s.last_offset) for s in after.segments] == [(0, 199), (200, 299)]
    assert after.remote_start_offset == 0 and after.last_uploaded_offset == 299
    assert replace_segments(after, manifest.segments[:2], merged) is after, "a retried admission"
    with pytest.raises(ManifestConflict):  # covers more than the run it replaces
        replace_segments(manifest, manifest.segments[:1], merged)
    with pytest.raises(ManifestConflict):
        replace_segments(manifest, manifest.segments[:2], seg(0, 150))
    with pytest.raises(ManifestConflict):
        replace_segments(manifest, (manifest.segments[0], manifest.segments[2]), seg(0, 299))
    with pytest.raises(ManifestConflict):  # no longer archived
        replace_segments(after, manifest.segments[:1], seg(0, 99))
