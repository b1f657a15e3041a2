"""The asyncio edge of the Kafka front: it only moves bytes between sockets and handlers.

Every decision about a connection (framing, the authentication gate, response order, the
in-flight bound, time limits) is made by its :class:`streamd.kafka.connection.ConnectionState`;
:class:`KafkaConnection` feeds it what the socket and the handlers do and carries out the
events it returns: start a handler task, write a response, close. Large fetched record sets go
out with ``sendfile`` (:mod:`streamd.kafka.zerocopy`) on listeners without TLS: such a response
is written once the transport's buffer has drained (the transport reports that through its
write-buffer limits, so nothing polls), keeping every response in request order.

:class:`ConnectionRegistry` is shared by a broker's listeners. It admits connections within
``kafka.max_connections`` and ``kafka.max_connections_per_ip`` (a connection over a limit is
closed at once, before anything is read), applies the connections' time limits once per tick
(at most every second), and stops them in order at shutdown (``Broker.stop``):
:meth:`~ConnectionRegistry.stop_reading` everywhere, :meth:`~ConnectionRegistry.drain` until the
requests already taken are answered and written (each connection then closes itself), and
:meth:`~ConnectionRegistry.close` whatever is still busy. A request is answered or never read.

Each server is one listener (:class:`streamd.config.ListenerSpec`) with its security protocol;
requests carry the connection's principal and listener to the handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from streamd.config import BrokerConfig, ListenerSpec
from streamd.errors import ErrorCode, StreamdError
from streamd.kafka import codec
from streamd.kafka.connection import (
    Close,
    ConnectionLimits,
    ConnectionState,
    Dispatch,
    Slot,
    Token,
    Write,
)
from streamd.kafka.context import KafkaContext, Request
from streamd.kafka.zerocopy import FileBudget, close_files, send_parts

log = logging.getLogger("streamd.kafka")

MAX_PINNED_FILES = 1024
"""Descriptors the unsent responses of one connection may hold (see zerocopy)."""


class ConnectionRegistry:
    def __init__(self, max_connections: int = 0, max_per_ip: int = 0, tick_s: float = 1.0) -> None:
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.tick_s = tick_s
        self._connections: set[KafkaConnection] = set()
        self._per_ip: Counter[str] = Counter()
        self._ticker: asyncio.TimerHandle | None = None
        self._empty: asyncio.Event | None = None
        self.stopping = False

    def configure(self, cfg: BrokerConfig) -> None:
        """Take the limits from ``cfg`` (at startup, after dynamic values are loaded; the two
        connection limits again whenever they change at runtime)."""
        self.max_connections = cfg["kafka.max_connections"]
        self.max_per_ip = cfg["kafka.max_connections_per_ip"]
        timeouts = [cfg["kafka.connections_max_idle_ms"], cfg["sasl.authentication_timeout_ms"]]
        shortest = min((ms for ms in timeouts if ms > 0), default=4000) / 1000
        self.tick_s = min(1.0, max(0.05, shortest / 4))

    @classmethod
    def from_config(cls, cfg: BrokerConfig) -> ConnectionRegistry:
        registry = cls()
        registry.configure(cfg)
        return registry

    def __len__(self) -> int:
        return len(self._connections)

    def admit(self, conn: KafkaConnection, ip: str) -> str | None:
        """Register ``conn``, or say why it is refused."""
        if self.max_connections and len(self._connections) >= self.max_connections:
            return f"{self.max_connections} connections open (kafka.max_connections)"
        if self.max_per_ip and self._per_ip[ip] >= self.max_per_ip:
            return f"{self.max_per_ip} connections open from {ip} (kafka.max_connections_per_ip)"
        self._connections.add(conn)
        self._per_ip[ip] += 1
        if self._ticker is None:
            self._schedule()
        if self.stopping:
            asyncio.get_running_loop().call_soon(conn.drain)
        return None

    def remove(self, conn: KafkaConnection, ip: str) -> None:
        if conn not in self._connections:
            return
        self._connections.discard(conn)
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]
        if not self._connections:
            if self._ticker is not None:
                self._ticker.cancel()
                self._ticker = None
            if self._empty is not None:
                self._empty.set()

    def _schedule(self) -> None:
        self._ticker = asyncio.get_running_loop().call_later(self.tick_s, self._tick)

    def _tick(self) -> None:
        self._ticker = None
        now = time.monotonic()
        for conn in list(self._connections):
            conn.tick(now)
        if self._connections:
            self._schedule()

    # ---- shutdown: stop_reading, then drain, then close ----------------------------------------

    def stop_reading(self) -> None:
        """No connection takes another request (new connections included); each closes once
        what it already took is answered and written."""
        self.stopping = True
        for conn in list(self._connections):
            conn.drain()

    async def drain(self, timeout_s: float) -> int:
        """Wait (at most ``timeout_s``) until every connection has answered what it took and
        closed; returns how many are still busy."""
        if self._connections:
            self._empty = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), timeout_s)
        return sum(1 for conn in self._connections if conn.busy)

    def close(self) -> None:
        """Close every connection still open; requests still running are cancelled."""
        for conn in list(self._connections):
            conn.abort("still busy when the broker shut down")


class KafkaConnection(asyncio.Protocol):
    def __init__(
        self,
        ctx: KafkaContext,
        limits: ConnectionLimits,
        registry: ConnectionRegistry,
        listener: ListenerSpec | None = None,
    ) -> None:
        self.ctx = ctx
        self.limits = limits
        self.registry = registry
        self.listener = listener
        self.state: ConnectionState | None = None
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.ip = "?"
        self.reading = True
        self.closed = False
        self.tasks: set[asyncio.Future[None]] = set()
        self.files: FileBudget | None = None
        """Set when responses may carry file ranges sent with sendfile (no TLS)."""
        self.sending = False
        """A response is being written with sendfile; the state holds later ones back."""
        self._sock_fd = -1
        self._drained: asyncio.Future[None] | None = None

    # ---- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.ip, self.peer = str(peer[0]), f"{peer[0]}:{peer[1]}"
        refused = self.registry.admit(self, self.ip)
        if refused:
            self.closed = True
            log.warning("refusing connection from %s: %s", self.peer, refused)
            transport.close()
            return
        ctx = self.ctx
        protocol = self.listener.protocol if self.listener is not None else "PLAINTEXT"
        session = None
        if ctx.security is not None:
            try:
                session = ctx.security.session(protocol, _peer_certificate(transport))
            except ValueError as exc:
                self.abort(f"unusable client certificate: {exc}")
                return
        elif protocol.startswith("SASL_"):
            self.abort("SASL listener without security services")
            return
        self.state = ConnectionState(self.limits, session, time.monotonic())
        sock = transport.get_extra_info("socket")
        if (
            ctx.config["kafka.sendfile"]
            and sock is not None
            and transport.get_extra_info("sslcontext") is None
            and transport.get_extra_info("ssl_object") is None
            and hasattr(os, "sendfile")
        ):
            self.files = FileBudget(MAX_PINNED_FILES, ctx.file_budget)
        if ctx.metrics is not None:
            ctx.metrics.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.registry.remove(self, self.ip)
        if self.state is None:
            return
        for task in self.tasks:
            task.cancel()
        for parts in self.state.abandon():
            close_files(parts)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if not self.sending:
            self._close_sock()
        if self.ctx.metrics is not None:
            self.ctx.metrics.connections -= 1

    def pause_writing(self) -> None:
        if self.state is not None:
            self.state.writing_paused = True
            self._update_reading()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if self.state is not None:
            self.state.writing_paused = False
            self._pump()

    def data_received(self, data: bytes) -> None:
        if self.state is not None and not self.closed:
            self.state.receive(data)
            self._pump()

    # ---- driven by the registry ----------------------------------------------------------------

    def tick(self, now: float) -> None:
        if self.state is not None and not self.closed:
            self.state.tick(now)
            self._pump()

    def drain(self) -> None:
        if self.state is not None and not self.closed:
            self.state.drain()
            self._pump()

    @property
    def busy(self) -> bool:
        """Requests taken and not yet answered, or an answer still being written."""
        return self.state is not None and not self.closed and not self.state.idle

    def abort(self, reason: str, expected: bool = False) -> None:
        if self.closed:
            return
        if expected:
            log.debug("closing connection from %s: %s", self.peer, reason)
        else:
            log.warning("closing connection from %s: %s", self.peer, reason)
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # ---- carrying out the state's events -------------------------------------------------------

    def _pump(self) -> None:
        state = self.state
        if state is None or self.closed:
            return
        now = time.monotonic()
        while (event := state.next_event(now)) is not None:
            kind = type(event)
            if kind is Dispatch:
                self._dispatch(event)  # type: ignore[arg-type]
            elif kind is Write:
                self._write(event)  # type: ignore[arg-type]
            elif kind is Token:
                self._start(self._run_token(event))  # type: ignore[arg-type]
            else:
                self._close(event)  # type: ignore[arg-type]
                return
        self._update_reading()

    def _dispatch(self, event: Dispatch) -> None:
        assert self.state is not None
        request = Request(
            self.ctx,
            event.header,
            event.body,
            self.peer,
            event.principal,
            self.state.session,
            self.listener,
            self.files,
        )
        self._start(self._run(event.api.handler, request, event.slot))

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _write(self, event: Write) -> None:
        assert self.transport is not None
        if event.files:
            self.sending = True
            self._start(self._send_with_files(event))
        else:
            self.transport.writelines(event.parts)

    def _close(self, event: Close) -> None:
        if event.delay_s > 0 and self.transport is not None:
            self._set_reading(False)
            asyncio.get_running_loop().call_later(
                event.delay_s, self.abort, event.reason, event.expected
            )
        else:
            self.abort(event.reason, event.expected)

    def _update_reading(self) -> None:
        if self.state is not None and not self.closed:
            self._set_reading(self.state.reading)

    def _set_reading(self, want: bool) -> None:
        if want == self.reading or self.transport is None:
            return
        self.reading = want
        if want:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    async def _run(self, handler: Any, request: Request, slot: Slot) -> None:
        header = request.header
        started = time.perf_counter()
        try:
            result = await handler(request)
            data: list[Any] | None
            if result is None:
                data = None
            elif isinstance(result, (bytes, bytearray)):
                data = [bytes(result)]
            else:
                if isinstance(result, dict):
                    result = codec.response(header.api_key, header.api_version, result)
                data = codec.encode_response_parts(
                    header.api_key, header.api_version, header.correlation_id, result
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            code = exc.code if isinstance(exc, StreamdError) else ErrorCode.UNKNOWN_SERVER_ERROR
            if not isinstance(exc, StreamdError):
                log.exception("error handling api %s from %s", header.api_key, self.peer)
            try:
                body = codec.error_response(header.api_key, header.api_version, code)
                data = codec.encode_response_parts(
                    header.api_key, header.api_version, header.correlation_id, body
                )
            except Exception:
                log.exception("cannot encode error response; closing %s", self.peer)
                self.abort("internal error")
                return
        if self.ctx.metrics is not None:
            self.ctx.metrics.count_request(header.api_key, time.perf_counter() - started)
        if self.closed or self.state is None:
            close_files(data)
            return
        self.state.response_ready(slot, data)
        self._pump()

    async def _run_token(self, event: Token) -> None:
        from streamd.kafka.handlers.sasl import raw_token

        assert self.state is not None and self.state.session is not None
        reply = await raw_token(self.ctx, self.state.session, self.peer, event.token)
        if self.closed:
            return
        self.state.response_ready(event.slot, None if reply is None else [reply])
        self._pump()

    async def _send_with_files(self, event: Write) -> None:
        """Write one response whose record sets are file ranges (see streamd.kafka.zerocopy)."""
        transport = self.transport
        assert transport is not None and self.state is not None
        try:
            await self._transport_drained(transport)
            if self.closed:
                return
            if self._sock_fd < 0:
                self._sock_fd = os.dup(transport.get_extra_info("socket").fileno())
            sent = await send_parts(asyncio.get_running_loop(), self._sock_fd, event.parts)
            if self.ctx.metrics is not None:
                self.ctx.metrics.sendfile_bytes += sent
        except (OSError, StreamdError) as exc:
            self.abort(f"sending a fetch response failed: {exc}")
        finally:
            close_files(event.parts)
            self.sending = False
            if self.closed:
                self._close_sock()
        if not self.closed:
            self.state.write_done(event.slot, time.monotonic())
            self._pump()

    async def _transport_drained(self, transport: asyncio.Transport) -> None:
        """Until earlier responses have left the transport's buffer.

        Dropping the write-buffer limits to zero makes the transport call ``resume_writing``
        exactly when its buffer becomes empty; the limits are restored afterwards.
        """
        if not transport.get_write_buffer_size():
            return
        self._drained = asyncio.get_running_loop().create_future()
        low, high = transport.get_write_buffer_limits()
        transport.set_write_buffer_limits(high=0, low=0)
        try:
            await self._drained
        finally:
            self._drained = None
            if not self.closed:
                transport.set_write_buffer_limits(high=high, low=low)

    def _close_sock(self) -> None:
        if self._sock_fd >= 0:
            fd, self._sock_fd = self._sock_fd, -1
            os.close(fd)


def _peer_certificate(transport: asyncio.BaseTransport) -> bytes | None:
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return bytes(der) if der else None


async def start_kafka_server(
    ctx: KafkaContext,
    host: str,
    port: int,
    *,
    listener: ListenerSpec | None = None,
    ssl: Any = None,
    registry: ConnectionRegistry | None = None,
) -> asyncio.Server:
    """Listen on ``host:port``; the listeners of one broker share one ``registry``."""
    limits = ConnectionLimits.from_config(ctx.config)
    connections = registry if registry is not None else ConnectionRegistry.from_config(ctx.config)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: KafkaConnection(ctx, limits, connections, listener),
        host,
        port,
        reuse_address=True,
        backlog=1024,
        ssl=ssl,
    )


async def serve_socket(
    ctx: KafkaContext, sock: Any, *, principal: str, registry: ConnectionRegistry
) -> asyncio.BaseTransport:
    """Serve an already-connected socket (the broker's end of a socketpair) as a PLAINTEXT
    Kafka connection of ``principal``, without a listener: how the broker's own data-transform
    workers (:mod:`streamd.transforms`) reach it. They get a ``registry`` of their own, so
    they never count against the client connection limits. The principal is set before the
    peer can send anything (the worker process is started after this returns)."""
    limits = ConnectionLimits.from_config(ctx.config)
    loop = asyncio.get_running_loop()
    transport, conn = await loop.connect_accepted_socket(
        lambda: KafkaConnection(ctx, limits, registry), sock
    )
    state = conn.state
    if state is not None and state.session is not None:
        state.session.principal = principal
    return transport
