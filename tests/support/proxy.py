"""A loopback TCP proxy whose connections a test can cut at will (to force client retries)."""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.support.broker import free_port

LINGER_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"


class CuttingProxy:
    def __init__(self, upstream: tuple[str, int], port: int | None = None) -> None:
        self.upstream = upstream
        self.port = port or free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._listener.settimeout(0.2)
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.cuts = 0
        self.drop_next_response = threading.Event()
        """When set, the next bytes from the broker on a connection past its handshake (ten
        reads) are discarded and that connection is reset: the broker has handled the request,
        the client never sees the answer."""
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            for a, b, back in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pump, args=(a, b, back), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, backwards: bool) -> None:
        seen = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                seen += 1
                if backwards and seen > 10 and self.drop_next_response.is_set():
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

    def cut_all(self) -> int:
        """Reset every open connection; returns how many were cut."""
        with self._lock:
            conns, self._conns = self._conns, []
        _reset(*conns)
        self.cuts += len(conns) // 2
        return len(conns) // 2

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self.cut_all()
        self._thread.join(2)


def _reset(*socks: socket.socket) -> None:
    """Shut down (which wakes a pump blocked in recv on another thread), then reset."""
    for s in socks:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            s.close()
