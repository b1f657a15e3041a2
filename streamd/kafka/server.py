"""The asyncio edge of the Kafka front: it only moves bytes between sockets and handlers.

Per connection, requests are decoded as they arrive and handled concurrently, but responses
are written strictly in request order (Kafka clients match them by order as well as by
correlation id). The bytes of requests not yet answered are bounded per connection
(``kafka.max_inflight_bytes``): past the bound the socket stops being read, so a flood cannot
exhaust memory. A malformed frame closes the connection with a log line naming the reason.

Each server is one listener (:class:`streamd.config.ListenerSpec`) with its security protocol.
On SASL_PLAINTEXT / SASL_SSL listeners a connection starts unauthenticated: only ApiVersions,
SaslHandshake and SaslAuthenticate are served (after a v0 handshake, the raw token frames
that follow; see :func:`streamd.kafka.handlers.sasl.raw_token`), frames are bounded by
``MAX_PRE_AUTH_FRAME`` (Kafka's ``sasl.server.max.receive.size``),
and any other request closes the connection. A failed login is answered, then the connection is
closed. Requests carry the connection's principal and listener to the handlers.

Shutdown (:class:`ConnectionRegistry`, driven by ``Broker.stop``): every connection of every
listener stops reading requests, the requests already read are handled and answered, and only
then are the connections closed. A request is either answered or never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from typing import Any

from streamd.errors import ErrorCode, InvalidRequest, StreamdError
from streamd.kafka import codec
from streamd.kafka.apis import REGISTRY
from streamd.kafka.context import KafkaContext, Request
from streamd.kafka.framing import FrameDecoder
from streamd.kafka.zerocopy import close_files, has_files, read_files, send_parts

log = logging.getLogger("streamd.kafka")

API_VERSIONS = 18
SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36
PRE_AUTH_APIS = frozenset({API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE})
MAX_PRE_AUTH_FRAME = 524288
MIN_CLOSE_DELAY_S = 0.05


class _Slot:
    __slots__ = ("done", "data", "size")

    def __init__(self, size: int) -> None:
        self.done = False
        self.data: list[Any] | None = None
        """The response frame as parts (see ``codec.encode_response_parts``)."""
        self.size = size


class ConnectionRegistry:
    """The open connections of every listener, so that the broker can stop them in order:
    :meth:`stop_reading`, then :meth:`drain` (in-flight requests answered), then
    :meth:`close`."""

    def __init__(self) -> None:
        self._connections: set[KafkaConnection] = set()
        self._changed = asyncio.Event()
        self.stopping = False

    def __len__(self) -> int:
        return len(self._connections)

    def add(self, conn: KafkaConnection) -> None:
        self._connections.add(conn)
        if self.stopping:
            conn.stop_reading()

    def discard(self, conn: KafkaConnection) -> None:
        self._connections.discard(conn)
        self._changed.set()

    def idle_changed(self) -> None:
        self._changed.set()

    def stop_reading(self) -> None:
        """No connection reads another request (new ones included)."""
        self.stopping = True
        for conn in list(self._connections):
            conn.stop_reading()

    async def drain(self, timeout_s: float) -> int:
        """Wait until every request read so far is answered (at most ``timeout_s``); returns
        how many connections still have requests in flight."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            busy = sum(1 for c in self._connections if c.busy)
            left = deadline - loop.time()
            if not busy or left <= 0:
                return busy
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def close(self) -> None:
        """Close every connection: what was answered is still written out first; requests
        still in flight are cancelled unanswered."""
        for conn in list(self._connections):
            conn.close()


class KafkaConnection(asyncio.Protocol):
    def __init__(
        self,
        ctx: KafkaContext,
        max_frame: int,
        max_inflight: int,
        listener: Any = None,
        registry: ConnectionRegistry | None = None,
    ) -> None:
        self.ctx = ctx
        self.registry = registry
        self.draining = False
        """Stopped reading for shutdown: no new request, in-flight ones are answered."""
        self.listener = listener
        self.session: Any = None
        self.max_frame = max_frame
        self.decoder = FrameDecoder(max_frame)
        self.max_inflight = max_inflight
        self.inflight = 0
        self.pending: deque[_Slot] = deque()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.reading_paused = False
        self.writing_paused = False
        self.closed = False
        self.close_scheduled = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.zero_copy = False
        """Fetch responses may carry segment file ranges, sent with sendfile (no TLS)."""
        self.sending = False
        """A response is being written with sendfile; later ones wait for it."""
        self._sock_fd = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        self.zero_copy = (
            self.ctx.config["kafka.sendfile"]
            and sock is not None
            and transport.get_extra_info("sslcontext") is None
            and transport.get_extra_info("ssl_object") is None
            and hasattr(os, "sendfile")
        )
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        protocol = self.listener.protocol if self.listener is not None else "PLAINTEXT"
        if self.ctx.security is not None:
            self.session = self.ctx.security.session(protocol, transport.get_extra_info("peercert"))
            if not self.session.authenticated:
                self.decoder.max_bytes = min(self.max_frame, MAX_PRE_AUTH_FRAME)
        elif protocol.startswith("SASL_"):
            self._abort("SASL listener without security services")
        if self.ctx.metrics is not None:
            self.ctx.metrics.connections += 1
        if self.registry is not None:
            self.registry.add(self)

    @property
    def busy(self) -> bool:
        """Requests read and not yet answered (or an answer still being sent)."""
        return bool(self.pending) or self.sending

    def stop_reading(self) -> None:
        self.draining = True
        if self.transport is not None and not self.closed and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.registry is not None:
            self.registry.discard(self)
        self.closed = True
        for task in self.tasks:
            task.cancel()
        for slot in self.pending:
            close_files(slot.data)
            slot.data = None
        if not self.sending:
            self._close_sock()
        if self.ctx.metrics is not None:
            self.ctx.metrics.connections -= 1

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self.draining:
            return
        try:
            frames = self.decoder.feed(data)
        except InvalidRequest as exc:
            self._abort(str(exc))
            return
        for frame in frames:
            self._dispatch(frame)
            if self.closed:
                return

    def _abort(self, reason: str) -> None:
        if self.closed:
            return
        log.warning("closing connection from %s: %s", self.peer, reason)
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _dispatch(self, frame: bytes) -> None:
        raw = self.session
        if raw is not None and raw.raw_tokens and raw.state == "authenticate":
            self._dispatch_raw_token(frame)
            return
        try:
            header = codec.parse_header(frame)
        except InvalidRequest as exc:
            self._abort(f"bad request header: {exc}")
            return
        session = self.session
        if (
            session is not None
            and not session.authenticated
            and (session.failed or header.api_key not in PRE_AUTH_APIS)
        ):
            name = codec.api_name(header.api_key) or header.api_key
            self._abort(f"{name} request before SASL authentication")
            return
        spec = REGISTRY.get(header.api_key)
        version = header.api_version
        if spec is None or not spec.min_version <= version <= spec.max_version:
            self._unsupported(header, frame, spec is not None)
            return
        try:
            body = codec.decode_request(header, frame)
        except InvalidRequest as exc:
            self._abort(f"{spec.name} v{version}: {exc}")
            return
        slot = _Slot(len(frame))
        self.pending.append(slot)
        self.inflight += slot.size
        self._update_reading()
        request = Request(self.ctx, header, body, self.peer)
        if session is not None:
            request.principal = session.principal
            request.session = session
        request.listener = self.listener
        request.zero_copy = self.zero_copy
        task = asyncio.ensure_future(self._run(spec.handler, request, slot))
        if not task.done():
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _dispatch_raw_token(self, frame: bytes) -> None:
        slot = _Slot(len(frame))
        self.pending.append(slot)
        self.inflight += slot.size
        self._update_reading()
        task = asyncio.ensure_future(self._run_raw_token(frame, slot))
        if not task.done():
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run_raw_token(self, frame: bytes, slot: _Slot) -> None:
        from streamd.kafka.handlers.sasl import raw_token

        reply = await raw_token(self.ctx, self.session, self.peer, frame)
        slot.data = None if reply is None else [reply]
        slot.done = True
        self._flush()

    async def _run(self, handler: Any, request: Request, slot: _Slot) -> None:
        header = request.header
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
                self._abort("internal error")
                return
        if self.ctx.metrics is not None:
            self.ctx.metrics.count_request(header.api_key)
        slot.data = data
        slot.done = True
        self._flush()

    def _flush(self) -> None:
        pending = self.pending
        transport = self.transport
        while pending and pending[0].done and not self.sending:
            slot = pending.popleft()
            self.inflight -= slot.size
            data, slot.data = slot.data, None
            if data is None:
                continue
            if transport is None or self.closed:
                close_files(data)
                continue
            if has_files(data):
                if self.zero_copy:
                    self.sending = True
                    task = asyncio.ensure_future(self._send_with_files(data))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                    break  # the task resumes flushing when the response is out
                try:
                    data = read_files(data)
                except (OSError, StreamdError) as exc:
                    self._abort(f"reading a fetch response failed: {exc}")
                    return
            transport.writelines(data)
        session = self.session
        if session is not None and not self.closed and not pending:
            if session.failed:
                self._close_after_failed_login()
                return
            if session.authenticated and self.decoder.max_bytes != self.max_frame:
                self.decoder.max_bytes = self.max_frame
        self._update_reading()
        if self.draining and not self.busy and self.registry is not None:
            self.registry.idle_changed()

    async def _send_with_files(self, data: list[Any]) -> None:
        """Write one response whose record sets are file ranges (see streamd.kafka.zerocopy)."""
        transport = self.transport
        try:
            assert transport is not None
            while transport.get_write_buffer_size() and not self.closed:
                await asyncio.sleep(0.001)  # earlier responses still in the transport's buffer
            if self.closed:
                return
            if self._sock_fd < 0:
                self._sock_fd = os.dup(transport.get_extra_info("socket").fileno())
            sent = await send_parts(asyncio.get_running_loop(), self._sock_fd, data)
            if self.ctx.metrics is not None:
                self.ctx.metrics.sendfile_bytes += sent
        except (OSError, StreamdError) as exc:
            self._abort(f"sending a fetch response failed: {exc}")
        finally:
            close_files(data)
            self.sending = False
            if self.closed:
                self._close_sock()
        if not self.closed:
            self._flush()

    def _close_sock(self) -> None:
        if self._sock_fd >= 0:
            fd, self._sock_fd = self._sock_fd, -1
            os.close(fd)

    def _close_after_failed_login(self) -> None:
        """Stop reading, then close once the client had time to read the answer.

        Closing right after the write races clients that drop data arriving together with the
        EOF (kafka-python 3); Kafka itself delays the close (connection.failed.authentication
        .delay.ms) for the same reason.
        """
        if self.close_scheduled or self.transport is None:
            return
        self.close_scheduled = True
        self.transport.pause_reading()
        self.reading_paused = True
        delay = max(MIN_CLOSE_DELAY_S, self.ctx.security.failed_auth_delay_s)
        asyncio.get_running_loop().call_later(delay, self._abort, "SASL authentication failed")

    def _update_reading(self) -> None:
        if self.transport is None or self.closed or self.close_scheduled or self.draining:
            return
        should_pause = self.writing_paused or self.inflight > self.max_inflight
        if should_pause and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True
        elif not should_pause and self.reading_paused:
            self.transport.resume_reading()
            self.reading_paused = False

    def _unsupported(self, header: codec.RequestHeader, frame: bytes, known: bool) -> None:
        """KIP-511: ApiVersions of an unknown version is answered (v0) with the API table."""
        if header.api_key == API_VERSIONS:
            from streamd.kafka.handlers.meta import api_versions_body

            body = codec.build(
                codec.response_class(API_VERSIONS, 0),
                api_versions_body(ErrorCode.UNSUPPORTED_VERSION),
            )
            data = codec.encode_response_parts(API_VERSIONS, 0, header.correlation_id, body)
            slot = _Slot(len(frame))
            slot.done, slot.data = True, data
            self.pending.append(slot)
            self.inflight += slot.size
            self._flush()
            return
        name = codec.api_name(header.api_key)
        if name is None:
            self._abort(f"unknown api key {header.api_key}")
        elif not known:
            self._abort(f"api {name} ({header.api_key}) is not supported by streamd")
        else:
            self._abort(f"unsupported version {header.api_version} of api {name}")


async def start_kafka_server(
    ctx: KafkaContext,
    host: str,
    port: int,
    *,
    listener: Any = None,
    ssl: Any = None,
    registry: ConnectionRegistry | None = None,
) -> asyncio.Server:
    cfg = ctx.config
    max_frame = cfg["socket.request.max.bytes"]
    max_inflight = cfg["kafka.max_inflight_bytes"]
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: KafkaConnection(ctx, max_frame, max_inflight, listener, registry),
        host,
        port,
        reuse_address=True,
        backlog=1024,
        ssl=ssl,
    )
