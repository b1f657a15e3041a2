"""A loopback TCP proxy a test can break on purpose: one class for every fault the tests need.

- :meth:`TcpProxy.cut` stops listening and resets every open connection (an outage);
  :meth:`TcpProxy.restore` listens again on the same port (the upstream keeps its state).
- ``drop_next_response``: when set, the next bytes coming back from upstream on a connection
  past its handshake (ten reads) are discarded and that connection is reset: upstream has
  handled the request, the client never sees the answer (forces client retries).

For HTTP upstreams (the S3 endpoint) the proxy also looks at request lines:

- :meth:`TcpProxy.trap`: run an action (kill the broker) on the first request whose method and
  path match, either before the request reaches upstream or after upstream answered it but
  before the answer reaches the client;
- ``faults`` (:class:`BucketFaults`): a misbehaving bucket. Each request draws, with the
  configured probability, one fault: ``slow`` (answered late), ``throttle`` (503 SlowDown
  without reaching upstream), ``drop`` (connection reset, request lost), ``truncate`` (the
  answer ends early) or ``corrupt`` (one byte of an object's body flipped).

Requests are recognised by their request line at the start of a read from the client, which is
where HTTP clients put it (a body that happened to start like one is not a concern here).
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.support.broker import free_port

LINGER_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"
HANDSHAKE_READS = 10
_REQUEST_LINE = re.compile(rb"(GET|PUT|POST|DELETE|HEAD) (\S+) HTTP/1\.[01]\r\n")
_THROTTLED = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
    b"Content-Length: 104\r\n\r\n<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
    b"<Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>"
)
FAULTS = ("slow", "throttle", "drop", "truncate", "corrupt")


@dataclass
class Trap:
    method: str
    path: re.Pattern[str]
    action: Callable[[], None]
    after_response: bool
    fired: threading.Event = field(default_factory=threading.Event)
    request: str = ""


@dataclass
class BucketFaults:
    """Random HTTP faults; ``counts`` says how many of each were injected."""

    rate: float = 0.2
    kinds: tuple[str, ...] = FAULTS
    delay_s: float = 0.3
    seed: int = 1
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def draw(self, method: str, path: str) -> str | None:
        with self._lock:
            if self._rng.random() >= self.rate:
                return None
            kinds = [k for k in self.kinds if k != "corrupt" or _is_object_get(method, path)]
            return self._rng.choice(kinds) if kinds else None


def _is_object_get(method: str, path: str) -> bool:
    """A GET of an object's bytes (path style ``/bucket/key``), not a listing."""
    resource, _, query = path.partition("?")
    return method == "GET" and resource.strip("/").count("/") >= 1 and not query


class _Exchange:
    """What one proxied connection is doing: set by the client side, read by the other."""

    __slots__ = ("armed", "response_fault")

    def __init__(self) -> None:
        self.armed: Trap | None = None
        self.response_fault: str | None = None


class TcpProxy:
    def __init__(self, target: tuple[str, int], port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self.cuts = 0
        self.drop_next_response = threading.Event()
        self.faults: BucketFaults | None = None
        self._trap: Trap | None = None
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.restore()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        if self._listener is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def cut(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        _reset(*conns)

    def close(self) -> None:
        self.cut()

    def trap(
        self,
        method: str,
        path: str,
        action: Callable[[], None],
        *,
        after_response: bool = False,
    ) -> Trap:
        """Run ``action`` once, on the first ``method`` request whose path matches the regex
        ``path``; the request (or, ``after_response``, its answer) goes no further."""
        trap = Trap(method, re.compile(path), action, after_response)
        self._trap = trap
        return trap

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            exchange = _Exchange()
            for a, b, back in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(
                    target=self._pump, args=(a, b, back, exchange), daemon=True
                ).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, backwards: bool, exchange: _Exchange
    ) -> None:
        reads = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                reads += 1
                if backwards and reads > HANDSHAKE_READS and self.drop_next_response.is_set():
                    self.drop_next_response.clear()
                    self.cuts += 1
                    _reset(src, dst)
                    return
                if backwards:
                    data = self._answer(data, src, dst, exchange)
                else:
                    data = self._request(data, src, dst, exchange)
                if data is None:
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns.discard(src)


    def _request(
        self, data: bytes, client: socket.socket, upstream: socket.socket, exchange: _Exchange
    ) -> bytes | None:
        """A read from the client: apply a trap or a fault if it starts a matching request.
        Returns what to forward, or None when the exchange ends here."""
        match = _REQUEST_LINE.match(data)
        if match is None:
            return data
        method, path = match[1].decode(), match[2].decode()
        exchange.response_fault = None
        trap = self._trap
        if trap is not None and method == trap.method and trap.path.search(path):
            self._trap = None
            trap.request = f"{method} {path}"
            if trap.after_response:
                exchange.armed = trap
                return data
            trap.action()
            trap.fired.set()
            _reset(client, upstream)
            return None
        faults = self.faults
        fault = faults.draw(method, path) if faults is not None else None
        if fault is None:
            return data
        assert faults is not None
        faults.counts[fault] += 1
        if fault == "slow":
            time.sleep(faults.delay_s)
        elif fault == "throttle":
            with contextlib.suppress(OSError):
                client.sendall(_THROTTLED)
            _reset(client, upstream)
            return None
        elif fault == "drop":
            _reset(client, upstream)
            return None
        else:
            exchange.response_fault = fault
        return data

    def _answer(
        self, data: bytes, upstream: socket.socket, client: socket.socket, exchange: _Exchange
    ) -> bytes | None:
        """A read from upstream: fire an armed trap, or spoil the answer as drawn."""
        trap = exchange.armed
        if trap is not None:
            exchange.armed = None
            trap.action()
            trap.fired.set()
            _reset(upstream, client)
            return None
        fault = exchange.response_fault
        if fault is None:
            return data
        if data.startswith(b"HTTP/"):
            head_end = data.find(b"\r\n\r\n")
            body = head_end + 4 if head_end >= 0 else len(data)
        else:
            body = 0
        if fault == "truncate":
            exchange.response_fault = None
            with contextlib.suppress(OSError):
                client.sendall(data[: body + (len(data) - body) // 2])
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            return None
        if body < len(data):  # corrupt: one byte of the body
            exchange.response_fault = None
            spoiled = bytearray(data)
            spoiled[body + (len(data) - body) // 2] ^= 0x5A
            return bytes(spoiled)
        return data


def _reset(*socks: socket.socket) -> None:
    """Shut down (which wakes a pump blocked in recv on another thread), then reset."""
    for s in socks:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            s.close()
