import asyncio
import os
import socket
from pathlib import Path

import pytest

from streamd.kafka.zerocopy import FileBudget, FileRecords, close_files, send_parts
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


def test_descriptor_budget_per_connection_and_broker(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    file = segment_file(tmp_path, data)
    broker = FileBudget(3)
    conn_a, conn_b = FileBudget(2, broker), FileBudget(2, broker)
    piece = FileSlice(file, 0, len(data))
    a1, a2 = FileRecords.pin(piece, conn_a), FileRecords.pin(piece, conn_a)
    assert a1 is not None and a2 is not None
    assert FileRecords.pin(piece, conn_a) is None  # the connection's budget is spent
    b1 = FileRecords.pin(piece, conn_b)
    assert b1 is not None and broker.used == 3
    assert FileRecords.pin(piece, conn_b) is None  # the broker's budget is spent
    assert conn_b.used == 1  # a refused pin takes nothing
    a1.close()
    a1.close()
    assert (conn_a.used, broker.used) == (1, 2)
    b2 = FileRecords.pin(piece, conn_b)
    assert b2 is not None and b2.read() == data
    for r in (a2, b1, b2):
        r.close()
    assert (conn_a.used, conn_b.used, broker.used) == (0, 0, 0)
    file.close()
