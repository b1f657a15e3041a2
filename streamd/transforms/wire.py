"""The worker's Kafka client: blocking requests over one socket, encoded with kio.

A transform's worker is a Kafka client of the broker that runs it, nothing more: it reads its
input with Fetch (so replaying history goes through the same remote reader and cache as any
consumer), writes with Produce and commits with the transaction APIs. The broker hands it an
already-connected socket (see :mod:`streamd.transforms.supervisor`), so no listener, TLS or SASL
setup is involved.

Requests may be pipelined: :meth:`Connection.send` queues a request and returns at once,
:meth:`Connection.receive` returns the oldest unanswered response (Kafka answers in request
order on a connection). Only the versions below are spoken; they are ones every streamd
release serves.
"""

from __future__ import annotations

import datetime
import io
import socket
import struct
from collections import deque
from typing import Any

from kio.index import load_request_schema, load_response_schema
from kio.serial import entity_reader, entity_writer

VERSIONS = {
    "Produce": (0, 8),
    "Fetch": (1, 11),
    "ListOffsets": (2, 5),
    "Metadata": (3, 8),
    "OffsetCommit": (8, 7),
    "OffsetFetch": (9, 7),
    "InitProducerId": (22, 4),
    "AddPartitionsToTxn": (24, 3),
    "AddOffsetsToTxn": (25, 3),
    "EndTxn": (26, 3),
    "TxnOffsetCommit": (28, 3),
}
"""API name -> (key, version) spoken by the worker."""

_SIZE = struct.Struct(">i")
_CORRELATION = struct.Struct(">i")


class BrokerGone(ConnectionError):
    """The broker closed the connection (it stopped, or stopped this worker)."""


def millis(ms: int) -> datetime.timedelta:
    return datetime.timedelta(milliseconds=ms)


def schema(name: str) -> Any:
    """The kio module of the request schema, for building request entities."""
    key, version = VERSIONS[name]
    cls = load_request_schema(key, version)
    import importlib

    return importlib.import_module(cls.__module__)


class Connection:
    """One Kafka connection; not thread-safe (the worker's main thread owns it)."""

    def __init__(self, sock: socket.socket, client_id: str) -> None:
        self.sock = sock
        self.client_id = client_id
        self.correlation_id = 0
        self.pending: deque[tuple[int, Any]] = deque()
        self._writers: dict[type, Any] = {}
        self._readers: dict[type, Any] = {}

    def close(self) -> None:
        self.sock.close()

    def send(self, name: str, request: Any) -> None:
        key, version = VERSIONS[name]
        self.correlation_id += 1
        header_type = type(request).__header_schema__
        header = header_type(
            request_api_key=key,
            request_api_version=version,
            correlation_id=self.correlation_id,
            client_id=self.client_id,
        )
        buf = io.BytesIO()
        buf.write(b"\0\0\0\0")
        self._writer(header_type)(buf, header)
        self._writer(type(request))(buf, request)
        data = buf.getbuffer()
        _SIZE.pack_into(data, 0, len(data) - 4)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise BrokerGone(f"sending {name}: {exc}") from None
        finally:
            del data
        self.pending.append((self.correlation_id, load_response_schema(key, version)))

    def receive(self) -> Any:
        """The response to the oldest request sent and not yet received."""
        correlation_id, response_type = self.pending.popleft()
        frame = self._read_frame()
        header_type = response_type.__header_schema__
        header, size = self._reader(header_type)(frame, 0)
        if header.correlation_id != correlation_id:
            raise BrokerGone(
                f"response {header.correlation_id} arrived while {correlation_id} was expected"
            )
        body, _ = self._reader(response_type)(frame, size)
        return body

    def call(self, name: str, request: Any) -> Any:
        """Send and wait; only on a connection with nothing else unanswered."""
        assert not self.pending, "call() on a connection with requests in flight"
        self.send(name, request)
        return self.receive()

    def _read_frame(self) -> memoryview:
        head = self._read_exactly(4)
        (size,) = _SIZE.unpack(head)
        return memoryview(self._read_exactly(size)).toreadonly()

    def _read_exactly(self, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = self.sock.recv_into(view[got:])
            except OSError as exc:
                raise BrokerGone(f"reading a response: {exc}") from None
            if k == 0:
                raise BrokerGone("the broker closed the connection")
            got += k
        return buf

    def _writer(self, cls: type) -> Any:
        w = self._writers.get(cls)
        if w is None:
            w = self._writers[cls] = entity_writer(cls)
        return w

    def _reader(self, cls: type) -> Any:
        r = self._readers.get(cls)
        if r is None:
            r = self._readers[cls] = entity_reader(cls)
        return r
