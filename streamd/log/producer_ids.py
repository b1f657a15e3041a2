"""Producer id allocation for idempotent producers (InitProducerId).

Ids are handed out from blocks reserved on disk (``data_dir/producer-ids``) before any id of a
block is used, so a restart, even after kill -9, never hands out an id twice.
"""

from __future__ import annotations

from pathlib import Path

from streamd.log.files import atomic_write

BLOCK = 1000


class ProducerIdAllocator:
    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / "producer-ids"
        try:
            self._reserved = int(self._path.read_text().strip())
        except (FileNotFoundError, ValueError):
            self._reserved = 0
        self._next = self._reserved

    def allocate(self) -> int:
        if self._next >= self._reserved:
            self._reserved = self._next + BLOCK
            atomic_write(self._path, b"%d\n" % self._reserved)
        pid = self._next
        self._next += 1
        return pid
