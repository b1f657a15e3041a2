"""Raw Kafka protocol over a blocking socket, encoded and decoded with kio.

For tests that must control the exact bytes on the wire (bad frames, corrupt batches) or see
the exact error code a broker answers with, without a client library in between.
"""

from __future__ import annotations

import importlib
import io
import socket
import struct
from typing import Any

from kio.serial import entity_reader, entity_writer

CLIENT_ID = "streamd-tests"


def response_type(request_type: type) -> type:
    """kio keeps the matching response next to each request: `...v9.request.ProduceRequest`
    -> `...v9.response.ProduceResponse`."""
    module = importlib.import_module(request_type.__module__.rsplit(".", 1)[0] + ".response")
    return getattr(module, request_type.__name__.removesuffix("Request") + "Response")  # type: ignore[no-any-return]


def encode(entity: Any) -> bytes:
    buf = io.BytesIO()
    entity_writer(type(entity))(buf, entity)
    return buf.getvalue()


def request_header(request_type: type, correlation_id: int, version: int | None = None) -> Any:
    header_type = request_type.__header_schema__  # type: ignore[attr-defined]
    fields = {
        "request_api_key": request_type.__api_key__,  # type: ignore[attr-defined]
        "request_api_version": request_type.__version__ if version is None else version,  # type: ignore[attr-defined]
        "correlation_id": correlation_id,
        "client_id": CLIENT_ID,
    }
    return header_type(**fields)


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


class PeerClosed(ConnectionError):
    pass


class Wire:
    """One connection. `call` sends a kio request and returns the decoded response."""

    def __init__(
        self, address: tuple[str, int], timeout: float = 15.0, *, source: str | None = None
    ) -> None:
        """``source``: the local address to connect from (e.g. another 127.x.y.z)."""
        self.sock = socket.create_connection(
            address, timeout=timeout, source_address=(source, 0) if source else None
        )
        self.correlation_id = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read_exact(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.sock.recv(n)
            if not chunk:
                raise PeerClosed()
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def read_frame(self) -> bytes:
        (size,) = struct.unpack(">i", self._read_exact(4))
        return self._read_exact(size)

    def request_bytes(self, request: Any, *, version: int | None = None) -> bytes:
        self.correlation_id += 1
        header = request_header(type(request), self.correlation_id, version)
        return frame(encode(header) + encode(request))

    def call(self, request: Any) -> Any:
        self.send(self.request_bytes(request))
        return self.decode(type(request), self.read_frame())

    def decode(self, request_type: type, payload: bytes, response: type | None = None) -> Any:
        response = response or response_type(request_type)
        header, size = entity_reader(response.__header_schema__)(payload, 0)  # type: ignore[attr-defined]
        assert header.correlation_id == self.correlation_id, (header, self.correlation_id)
        body, _ = entity_reader(response)(payload, size)
        return body

    def request_bytes_old(self, request: Any) -> bytes:
        self.correlation_id += 1
        request.with_header(self.correlation_id, CLIENT_ID)
        return request.encode(header=True, framed=True)  # type: ignore[no-any-return]

    def call_old(self, request: Any) -> Any:
        """Send a kafka-python ``kafka.protocol.old`` request struct and decode the answer with
        kafka-python's response struct of the same version, as a dict.

        kafka-python writes its old-version structs by hand, independently of the Kafka 3.9
        specs streamd builds its retired versions from, so a schema slip on either side fails.
        """
        from kafka.protocol.old.api import ResponseClassRegistry

        self.send(self.request_bytes_old(request))
        payload = self.read_frame()
        response_cls = ResponseClassRegistry.get_response_class(request.header)
        assert response_cls is not None, type(request)
        decoded = response_cls.decode(payload, header=True)
        assert decoded.header.correlation_id == self.correlation_id
        return decoded.to_object()

    def closed_by_peer(self, timeout: float = 10.0) -> bool:
        """True when the peer closes (EOF or reset) within `timeout` without sending a byte
        more; False if it is still open; raises if it sends data instead."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        if data:
            raise AssertionError(f"expected the broker to close, it sent {data[:64]!r}")
        return True
