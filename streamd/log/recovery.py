"""Startup recovery of one partition directory.

The last (active) segment is always validated batch by batch: framing, magic 2, CRC32C, record
count, and dense offsets (each batch starts at the previous one's last offset + 1). The file is
truncated at the first batch that fails, which removes torn writes after a crash. Older segments
are validated too unless the previous shutdown left the clean-shutdown marker, in which case
they are trusted and only their indexes are sanity-checked. Corruption inside an older segment
truncates it and deletes every later segment, so offsets stay dense: the next offset is always
the last valid batch's last offset + 1.

Indexes are rebuilt from the log whenever they are missing or inconsistent with it (entries past
the end of the log, a size that is not a whole number of entries, non-increasing entries).
"""

from __future__ import annotations

import logging
import mmap
import os
import re
from pathlib import Path

from streamd.errors import CorruptMessage, InvalidRecord
from streamd.log.batch import HEADER_SIZE, check_batch, parse_header
from streamd.log.files import atomic_write, fsync_dir
from streamd.log.index import OffsetIndex, TimeIndex, _SparseIndex
from streamd.log.segment import NO_TIMESTAMP, Segment, SegmentFile, segment_path

log = logging.getLogger("streamd.log")

CLEAN_SHUTDOWN_MARKER = "clean-shutdown"
_SEGMENT_FILE = re.compile(r"(\d{20})\.(log|index|timeindex|txnindex)")


def segment_bases(directory: Path) -> list[int]:
    return sorted(
        int(m.group(1))
        for p in directory.iterdir()
        if (m := _SEGMENT_FILE.fullmatch(p.name)) and m.group(2) == "log"
    )


def remove_strays(directory: Path) -> None:
    """Delete temporary files and indexes whose log file is gone."""
    for p in directory.iterdir():
        m = _SEGMENT_FILE.fullmatch(p.name)
        orphan = m and m.group(2) != "log" and not (directory / f"{m.group(1)}.log").exists()
        if p.name.endswith(".tmp") or orphan:
            p.unlink(missing_ok=True)


def write_clean_marker(directory: Path) -> None:
    atomic_write(directory / CLEAN_SHUTDOWN_MARKER, b"")


def take_clean_marker(directory: Path) -> bool:
    """Consume the marker: from now on a crash must lead to full validation."""
    marker = directory / CLEAN_SHUTDOWN_MARKER
    if not marker.exists():
        return False
    marker.unlink()
    fsync_dir(directory)
    return True


def _persist_index(index: _SparseIndex, kind: str, stale_reason: str | None) -> None:
    """Write a rebuilt index if the file differs. Starting never depends on it: on a full disk
    the stale file is removed instead (see ``_SparseIndex.rewrite``)."""
    try:
        on_disk = index.path.read_bytes()
    except FileNotFoundError:
        on_disk = None
    fresh = index.encode()
    if (on_disk or b"") != fresh:
        if stale_reason or on_disk is None:
            log.warning("rebuilt %s %s (%s)", kind, index.path, stale_reason or "missing")
        index.rewrite()
    index.persist = True


def validate_segment(
    directory: Path, base_offset: int, *, index_interval_bytes: int, now_ms: int, seal: bool
) -> tuple[Segment, int]:
    """Walk every batch of a segment, truncate at the first invalid one, rebuild its indexes.

    Returns the segment and the number of bytes cut. A truncated segment is left unsealed: the
    caller drops everything after it, so it becomes the active segment.
    """
    path = segment_path(directory, base_offset, ".log")
    segment = Segment(
        directory,
        base_offset,
        index_interval_bytes=index_interval_bytes,
        created_ms=now_ms,
        file=SegmentFile(path, create=False),
    )
    segment.offset_index.persist = segment.time_index.persist = False
    fd = os.open(path, os.O_RDWR)
    try:
        pos, reason = _walk(segment, fd)
        cut = os.fstat(fd).st_size - pos
        if cut:
            log.warning(
                "truncating %s at byte %d (next offset %d): cutting %d bytes: %s",
                segment.path,
                pos,
                segment.next_offset,
                cut,
                reason,
            )
            os.ftruncate(fd, pos)
            os.fsync(fd)
    finally:
        os.close(fd)
    existing_ok = (
        (True, True)
        if pos == 0
        else (
            OffsetIndex.load(
                segment.index_path, base_offset, log_size=pos, next_offset=segment.next_offset
            )
            is not None,
            TimeIndex.load(segment.timeindex_path, base_offset, next_offset=segment.next_offset)
            is not None,
        )
    )
    if seal and not cut and segment.size:
        segment.time_index.maybe_append(segment.max_timestamp, segment.last_batch_base)
    _persist_index(
        segment.offset_index,
        "offset index",
        None if existing_ok[0] else "inconsistent with the log",
    )
    _persist_index(
        segment.time_index, "time index", None if existing_ok[1] else "inconsistent with the log"
    )
    if seal and not cut:
        segment.seal()
    return segment, cut


def _walk(segment: Segment, fd: int) -> tuple[int, str]:
    """Track every valid batch of the file from its start; returns where the valid part ends
    and why it ends there ("" at the end of the file)."""
    file_size = os.fstat(fd).st_size
    pos = 0
    if not file_size:
        return 0, ""
    with mmap.mmap(fd, file_size, access=mmap.ACCESS_READ) as data:
        while pos < file_size:
            try:
                header = check_batch(data, pos, file_size)  # type: ignore[arg-type]  # mmap is a buffer
            except (CorruptMessage, InvalidRecord) as exc:
                return pos, str(exc)
            if header.base_offset != segment.next_offset:
                return pos, (
                    f"batch at byte {pos} has base offset {header.base_offset}, "
                    f"expected {segment.next_offset}"
                )
            segment.track(header, pos)
            pos += header.size
    return pos, ""


def load_trusted_segment(
    directory: Path, base_offset: int, next_offset: int, *, index_interval_bytes: int, now_ms: int
) -> Segment | None:
    """Open a sealed segment from a clean shutdown without reading it; None if its indexes or
    first batch do not fit (the caller then validates it in full)."""
    path = segment_path(directory, base_offset, ".log")
    size = path.stat().st_size
    offset_index = OffsetIndex.load(
        segment_path(directory, base_offset, ".index"),
        base_offset,
        log_size=size,
        next_offset=next_offset,
    )
    time_index = TimeIndex.load(
        segment_path(directory, base_offset, ".timeindex"), base_offset, next_offset=next_offset
    )
    if offset_index is None or time_index is None or size < HEADER_SIZE or not time_index.keys:
        return None
    file = SegmentFile(path, create=False)
    first = parse_header(file.pread(HEADER_SIZE, 0))
    if first.base_offset != base_offset or first.magic != 2:
        file.close()
        return None
    segment = Segment(
        directory,
        base_offset,
        index_interval_bytes=index_interval_bytes,
        created_ms=now_ms,
        file=file,
        offset_index=offset_index,
        time_index=time_index,
    )
    segment.size = segment.readable_size = size
    segment.next_offset = next_offset
    segment.first_timestamp = first.first_timestamp
    segment.max_timestamp = time_index.last_timestamp or NO_TIMESTAMP
    segment.last_batch_base = time_index.base_offset + time_index.values[-1]
    segment.sealed = True
    return segment


def recover_partition(directory: Path, *, index_interval_bytes: int, now_ms: int) -> list[Segment]:
    """Open every segment of a partition, validating as described in the module docstring."""
    remove_strays(directory)
    clean = take_clean_marker(directory)
    bases = segment_bases(directory)
    segments: list[Segment] = []
    for i, base in enumerate(bases):
        is_last = i == len(bases) - 1
        if segments and base != segments[-1].next_offset:
            _drop_from(
                directory,
                bases[i:],
                f"offset gap: expected a segment at {segments[-1].next_offset}, found {base}",
            )
            segments[-1].sealed = False
            break
        segment = None
        if clean and not is_last:
            segment = load_trusted_segment(
                directory,
                base,
                bases[i + 1],
                index_interval_bytes=index_interval_bytes,
                now_ms=now_ms,
            )
        cut = 0
        if segment is None:
            segment, cut = validate_segment(
                directory,
                base,
                index_interval_bytes=index_interval_bytes,
                now_ms=now_ms,
                seal=not is_last,
            )
        segments.append(segment)
        if cut and not is_last:
            _drop_from(directory, bases[i + 1 :], f"{segment.path} was truncated")
            break
    return segments


def _drop_from(directory: Path, bases: list[int], reason: str) -> None:
    for base in bases:
        log.warning("deleting segment %s: %s", segment_path(directory, base, ".log"), reason)
        for suffix in (".log", ".index", ".timeindex", ".txnindex"):
            segment_path(directory, base, suffix).unlink(missing_ok=True)
