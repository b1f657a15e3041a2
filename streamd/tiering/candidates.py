"""Stage 1 of the upload pipeline: which local segments of a partition should be archived next.

A segment is a candidate when it is

- sealed (immutable: the active segment is rolled by ``segment.ms`` first, see the uploader),
- non-empty and fully durable: ``next_offset <= high_watermark`` and every byte is in the file
  (``readable_size == size``; with fsync "always" bytes past ``readable_size`` are not written),
- not yet archived: it ends after the manifest's ``last_uploaded_offset``.

Candidates are returned in offset order and must continue the manifest without a gap or an
overlap (the manifest only ever grows at its end). When the next local segment cannot do that,
selection stops and says why (``blocked``); the uploader reports it instead of guessing.
The first segment of a partition with an empty, never-used manifest may start anywhere (a log
whose start moved before tiering was enabled).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from streamd.tiering.manifest import PartitionManifest


class SegmentLike(Protocol):
    base_offset: int
    next_offset: int
    size: int
    readable_size: int
    sealed: bool


S = TypeVar("S", bound=SegmentLike)


@dataclass(frozen=True, slots=True)
class Selection(Generic[S]):
    candidates: tuple[S, ...]
    blocked: str | None = None
    """Why the next sealed segment cannot be archived (a gap or overlap), or None."""


def select_candidates(
    segments: Sequence[S], manifest: PartitionManifest, high_watermark: int
) -> Selection[S]:
    expected = manifest.next_offset
    fresh = manifest.last_uploaded_offset == -1 and not manifest.segments
    out: list[S] = []
    for segment in segments:
        if not segment.sealed or segment.size == 0:
            continue
        if segment.next_offset - 1 <= manifest.last_uploaded_offset:
            continue
        if not manifest.segments and segment.next_offset <= manifest.remote_start_offset:
            continue  # every record in it was deleted (DeleteRecords) before it was archived
        if segment.next_offset > high_watermark or segment.readable_size < segment.size:
            break
        after_deleted = (
            not out
            and not manifest.segments
            and segment.base_offset <= manifest.remote_start_offset
        )
        if not (fresh and not out) and not after_deleted and segment.base_offset != expected:
            kind = "gap" if segment.base_offset > expected else "overlap"
            reason = (
                f"local segment {segment.base_offset}-{segment.next_offset - 1} leaves a {kind} "
                f"after archived offset {expected - 1}"
            )
            return Selection(tuple(out), reason)
        out.append(segment)
        expected = segment.next_offset
    return Selection(tuple(out))
