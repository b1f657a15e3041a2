import asyncio
import os
import socket
from pathlib import Path

import pytest

from streamd.kafka.zerocopy import FileRecords, close_files, read_files, send_parts
from streamd.log.segment import FileSlice, SegmentFile


def segment_file(tmp_path: Path, data: bytes) -> SegmentFile:
    path = tmp_path / "00000000000000000000.log"
    path.write_bytes(data)
    return SegmentFile(path)


async def test_parts_and_file_ranges_arrive_in_order_through_a_full_socket(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    file = segment_file(tmp_path, data)
    records = FileRecords(FileSlice(file, 1000, len(data) - 2000))
    parts = [b"head", bytearray(b"-"), records, memoryview(b"tail")]
    left, right = socket.socketpair()
    left.setblocking(False)
    right.setblocking(False)
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # forces EAGAIN waits
    loop = asyncio.get_running_loop()
    received = bytearray()
    expected = 4 + 1 + (len(data) - 2000) + 4

    async def reader() -> None:
        while len(received) < expected:
            chunk = await loop.sock_recv(right, 1 << 16)
            assert chunk, "peer closed early"
            received.extend(chunk)
            await asyncio.sleep(0)  # a slow consumer

    task = asyncio.ensure_future(reader())
    sent = await send_parts(loop, left.fileno(), parts)
    await asyncio.wait_for(task, 30)
    assert sent == len(data) - 2000
    assert bytes(received) == b"head-" + data[1000:-1000] + b"tail"
    records.close()
    left.close()
    right.close()
    file.close()


def test_file_records_keep_their_own_descriptor(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    file = segment_file(tmp_path, data)
    records = FileRecords(FileSlice(file, 10, 100_000))
    file.close()  # the segment goes away (retention, topic deletion) ...
    assert records.read() == data[10:100_010]  # ... the response still reads the right bytes
    fd = records.fd
    close_files([b"x", records])
    assert records.fd == -1
    with pytest.raises(OSError):
        os.fstat(fd)


def test_read_files_replaces_ranges_with_bytes(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    file = segment_file(tmp_path, data)
    records = FileRecords(FileSlice(file, 0, len(data)))
    assert read_files([b"a", records, b"b"]) == [b"a", data, b"b"]
    assert records.fd == -1
    file.close()
