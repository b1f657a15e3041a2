"""CRC32C checksums of remote objects (invariant 6).

Every object streamd writes carries the CRC32C of its bytes twice: in the object's user metadata
(``x-amz-meta-streamd-crc32c``, stamped by the store on ``put``) and in the manifest that names
it. A reader verifies what it got against one of them; a mismatch raises
:class:`streamd.errors.RemoteStorageError` and the bytes are never handed on. The textual form is
8 lower-case hex digits.
"""

from __future__ import annotations

import re

import crc32c as _crc32c

from streamd.errors import RemoteStorageError

_HEX8 = re.compile(r"[0-9a-f]{8}")


class ChecksumMismatch(RemoteStorageError):
    """Bytes read back do not match the checksum recorded when they were written."""


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC32C of ``data``, continuing from ``value`` for incremental use."""
    return _crc32c.crc32c(data, value)


def crc32c_hex(data: bytes | bytearray | memoryview) -> str:
    return format(crc32c(data), "08x")


def is_checksum(text: object) -> bool:
    return isinstance(text, str) and _HEX8.fullmatch(text) is not None


def verify(data: bytes | bytearray | memoryview, expected: str, *, what: str) -> None:
    """Raise :class:`ChecksumMismatch` naming ``what`` unless ``data`` hashes to ``expected``."""
    actual = crc32c_hex(data)
    if actual != expected.lower():
        raise ChecksumMismatch(
            f"checksum mismatch for {what}: expected crc32c {expected}, got {actual} "
            f"({len(data)} bytes)"
        )
