from __future__ import annotations

import pytest

from streamd.errors import RemoteStorageError
from streamd.tiering.checksum import crc32c, crc32c_hex, is_checksum, verify


def test_known_vector_and_incremental() -> None:
    assert crc32c_hex(b"123456789") == "e3069283"
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283
    assert crc32c_hex(b"") == "00000000"


def test_verify() -> None:
    verify(b"123456789", "E3069283", what="x")
    with pytest.raises(RemoteStorageError, match="checksum mismatch for seg 7"):
        verify(b"123456780", "e3069283", what="seg 7")


def test_is_checksum() -> None:
    assert is_checksum("e3069283")
    assert not is_checksum("E3069283")
    assert not is_checksum("e306928")
    assert not is_checksum(0xE3069283)
