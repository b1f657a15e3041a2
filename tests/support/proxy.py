"""A loopback TCP proxy a test can break on purpose: one class for every fault the tests need.

- :meth:`TcpProxy.cut` stops listening and resets every open connection (an outage);
  :meth:`TcpProxy.restore` listens again on the same port (the upstream keeps its state).
- ``drop_next_response``: when set, the next bytes coming back from upstream on a connection
  past its handshake (ten reads) are discarded and that connection is reset: upstream has
  handled the request, the client never sees the answer (forces client retries).
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.support.broker import free_port

LINGER_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"
HANDSHAKE_READS = 10


class TcpProxy:
    def __init__(self, target: tuple[str, int], port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self.cuts = 0
        self.drop_next_response = threading.Event()
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
            for a, b, back in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(a, b, back), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, backwards: bool) -> None:
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
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns.discard(src)


def _reset(*socks: socket.socket) -> None:
    """Shut down (which wakes a pump blocked in recv on another thread), then reset."""
    for s in socks:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            s.close()
