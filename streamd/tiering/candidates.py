"""Stage 1 of the upload pipeline: which local segments of a partition should be archived next.

A segment is a candidate when it is

- sealed (immutable: the active segment is rolled by ``segment.ms`` first, see the uploader),
- non-empty and fully durable: every byte is in the file (``readable_size == size``; with fsync
  "always" bytes past ``readable_size`` are not written),
- stable: ``next_offset <= last_stable_offset`` (below), which implies ``<= high_watermark``,
- not yet archived: it ends after the manifest's ``last_uploaded_offset``.

Candidates are returned in offset order and must continue the manifest without a gap or an
overlap (the manifest only ever grows at its end). When the next local segment cannot do that,
selection stops and says why (``blocked``); the uploader reports it instead of guessing.
The first segment of a partition with an empty, never-used manifest may start anywhere (a log
whose start moved before tiering was enabled).

Transactions. The archive is read by more than this broker's own Fetch path, which could look
at local segments for what the archive lacks: a read replica serves it with its last stable
offset at the archive's end, and ``streamd restore`` rebuilds a partition whose local log
starts at that end, with no producer state and no transaction coordinator state. Both take
every archived record without an archived ABORT for committed. So the archive's end (the
manifest's ``next_offset``, the one offset a reader of the archive alone must be able to trust)
keeps this invariant::

    every transaction with records below the archive's end was decided (committed or aborted)
    when they were archived, and every aborted one has its ABORT marker below that end too

It holds by two rules of selection, for the offset ``end`` that a selection ends at:

1. ``end <= last_stable_offset``: no transaction still open has data in an archived segment
   (the LSO is the first offset of the oldest open transaction, else the high watermark). This
   is Kafka's rule (RemoteLogManager copies only segments below the LSO) and Redpanda's.
2. ``end`` does not fall inside an aborted transaction whose marker is not archived yet
   (``first_offset < end <= marker offset`` for an entry of a local segment's aborted-
   transaction index): its records would otherwise reach the archive without their abort,
   which a replica or a restored broker would serve as committed. Selection ends at the last
   candidate whose end is clean (``Selection.stable_end``); later candidates wait for the
   segment holding the marker, which the uploader's roll of the active segment (by
   ``segment.ms`` or ``tiering.segment_max_upload_interval_ms``) seals in time.

A *committed* transaction may still be cut by the archive's end (its COMMIT marker in the next
upload): a replica then shows its first records before the rest, and a restore whose bucket
ends there keeps only those (the rest is the un-archived tail a restore reports as lost).
Neither shows a record that was not committed. Archives written before this rule existed may
end inside any transaction.

Segments held back by rule 1 or 2 are ``waiting`` (reported as waiting for the LSO, not as
stuck): they stay on local disk (the retention veto only frees what the manifest covers) until
the transactions end, as with an unreachable bucket. A transaction left open is aborted by
the coordinator after its ``transaction.timeout.ms``, so nothing waits forever.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from streamd.log.txn_index import AbortedTxn
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
    waiting: int = 0
    """Sealed, durable segments not archived yet that wait for transactions to end (rules 1
    and 2 of the module docstring): not a failure."""
    aborts: tuple[tuple[int, int], ...] = field(default=(), repr=False)
    """``(first offset, marker offset)`` of aborted transactions whose marker is not archived."""

    def stable_end(self, end: int) -> bool:
        """Whether the archive may end at ``end`` (rule 2; rule 1 holds for every candidate)."""
        return not any(first < end <= marker for first, marker in self.aborts)


def select_candidates(
    segments: Sequence[S],
    manifest: PartitionManifest,
    high_watermark: int,
    *,
    last_stable_offset: int,
    aborted: Iterable[AbortedTxn] = (),
) -> Selection[S]:
    """``aborted``: the aborted-transaction index entries of the local segments (those whose
    marker is archived already are ignored)."""
    expected = manifest.next_offset
    fresh = manifest.last_uploaded_offset == -1 and not manifest.segments
    stable = min(last_stable_offset, high_watermark)
    aborts = tuple((e.first_offset, e.last_offset) for e in aborted if e.last_offset >= expected)
    out: list[S] = []
    held = 0
    for segment in segments:
        if not segment.sealed or segment.size == 0:
            continue
        if segment.next_offset - 1 <= manifest.last_uploaded_offset:
            continue
        if not manifest.segments and segment.next_offset <= manifest.remote_start_offset:
            continue  # every record in it was deleted (DeleteRecords) before it was archived
        if segment.readable_size < segment.size or segment.next_offset > high_watermark:
            break
        if segment.next_offset > stable:
            held += 1
            continue
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
            return Selection(tuple(out), reason, held, aborts)
        out.append(segment)
        expected = segment.next_offset
    selection = Selection(tuple(out), None, held, aborts)
    keep = len(out)
    while keep and not selection.stable_end(out[keep - 1].next_offset):
        keep -= 1
    if keep == len(out):
        return selection
    return Selection(tuple(out[:keep]), None, held + len(out) - keep, aborts)
