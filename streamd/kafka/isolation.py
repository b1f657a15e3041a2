"""read_committed reads (KIP-98): stop at the last stable offset, list the aborted transactions.

A read_committed Fetch returns whole batches below the partition's LSO and, with them, every
aborted transaction (producer id, first offset) whose data may lie in what it returns; the
client drops those producers' batches until their ABORT marker. Local reads already stop at the
LSO (``PartitionLog.read(upto=...)``); an archived read returns whole batches up to the end of
its remote segment, so :func:`cut_at` trims it with one header peek per batch.

Aborted transactions come from the aborted-transaction indexes of the segments from the one
holding the fetch offset on: archived segments' index objects first (tiering), then, when
those do not settle it, the local segments'.
"""

from __future__ import annotations

import bisect
from typing import Any

from streamd.log.batch import HEADER_SIZE, LOG_OVERHEAD, PREFIX
from streamd.log.txn_index import AbortedTxn


def cut_at(data: bytes | memoryview, limit: int) -> tuple[bytes | memoryview, int]:
    """The whole batches of ``data`` whose base offset is below ``limit``, and the offset after
    the last one kept (-1 when none is)."""
    pos = 0
    end_offset = -1
    size = len(data)
    while pos + HEADER_SIZE <= size:
        base, length = PREFIX.unpack_from(data, pos)
        if base >= limit:
            break
        end_offset = base + int.from_bytes(data[pos + 23 : pos + 27], "big") + 1
        pos += LOG_OVERHEAD + length
    if pos == size:
        return data, end_offset
    return memoryview(data)[:pos], end_offset


async def aborted_transactions(
    tiering: Any, name: str, index: int, plog: Any, offset: int, upper: int
) -> list[dict[str, int]]:
    """The Fetch response's ``aborted_transactions`` for data in ``[offset, upper)``."""
    found: list[AbortedTxn] = []
    complete = False
    if tiering is not None and offset < plog.log_start_offset:
        found, complete = await tiering.aborted_transactions(name, index, offset, upper)
    if not complete:
        found += plog.aborted_transactions(max(offset, plog.log_start_offset), upper)
    seen: set[tuple[int, int]] = set()
    out = []
    for a in found:
        key = (a.producer_id, a.first_offset)
        if key not in seen:  # archived and local segments overlap near the local start
            seen.add(key)
            out.append({"producer_id": a.producer_id, "first_offset": a.first_offset})
    return out


def local_read_end(plog: Any, offset: int, limit: int) -> int:
    """An upper bound of what a local read from ``offset`` returns: it never leaves the
    segment holding ``offset``."""
    segments = plog.segments
    i = max(0, bisect.bisect_right(segments, offset, key=lambda s: s.base_offset) - 1)
    return min(limit, int(segments[i].next_offset))
