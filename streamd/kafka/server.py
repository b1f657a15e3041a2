"""The asyncio edge of the Kafka front: it only moves bytes between sockets and handlers.

Per connection, requests are decoded as they arrive and handled concurrently, but responses
are written strictly in request order (Kafka clients match them by order as well as by
correlation id). The bytes of requests not yet answered are bounded per connection
(``kafka.max_inflight_bytes``): past the bound the socket stops being read, so a flood cannot
exhaust memory. A malformed frame closes the connection with a log line naming the reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from streamd.errors import ErrorCode, InvalidRequest, StreamdError
from streamd.kafka import codec
from streamd.kafka.apis import REGISTRY
from streamd.kafka.context import KafkaContext, Request
from streamd.kafka.framing import FrameDecoder

log = logging.getLogger("streamd.kafka")

API_VERSIONS = 18


class _Slot:
    __slots__ = ("done", "data", "size")

    def __init__(self, size: int) -> None:
        self.done = False
        self.data: bytes | None = None
        self.size = size


class KafkaConnection(asyncio.Protocol):
    def __init__(self, ctx: KafkaContext, max_frame: int, max_inflight: int) -> None:
        self.ctx = ctx
        self.decoder = FrameDecoder(max_frame)
        self.max_inflight = max_inflight
        self.inflight = 0
        self.pending: deque[_Slot] = deque()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.reading_paused = False
        self.writing_paused = False
        self.closed = False
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        if self.ctx.metrics is not None:
            self.ctx.metrics.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for task in self.tasks:
            task.cancel()
        if self.ctx.metrics is not None:
            self.ctx.metrics.connections -= 1

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
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
        log.warning("closing connection from %s: %s", self.peer, reason)
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _dispatch(self, frame: bytes) -> None:
        try:
            header = codec.parse_header(frame)
        except InvalidRequest as exc:
            self._abort(f"bad request header: {exc}")
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
        task = asyncio.ensure_future(self._run(spec.handler, request, slot))
        if not task.done():
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run(self, handler: Any, request: Request, slot: _Slot) -> None:
        header = request.header
        try:
            result = await handler(request)
            if result is None:
                data = None
            elif isinstance(result, (bytes, bytearray)):
                data = bytes(result)
            else:
                if isinstance(result, dict):
                    result = codec.response(header.api_key, header.api_version, result)
                data = codec.encode_response(
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
                data = codec.encode_response(
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
        while pending and pending[0].done:
            slot = pending.popleft()
            self.inflight -= slot.size
            if slot.data is not None and transport is not None and not self.closed:
                transport.write(slot.data)
        self._update_reading()

    def _update_reading(self) -> None:
        if self.transport is None or self.closed:
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
            data = codec.encode_response(API_VERSIONS, 0, header.correlation_id, body)
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


async def start_kafka_server(ctx: KafkaContext, host: str, port: int) -> asyncio.Server:
    cfg = ctx.config
    max_frame = cfg["socket.request.max.bytes"]
    max_inflight = cfg["kafka.max_inflight_bytes"]
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: KafkaConnection(ctx, max_frame, max_inflight),
        host,
        port,
        reuse_address=True,
        backlog=1024,
    )
