"""One Kafka client connection's policy, as a sans-IO state machine: bytes in, events out.

:class:`ConnectionState` decides everything about a connection that is not I/O. The asyncio
edge (:mod:`streamd.kafka.server`) feeds it what happens (bytes received, a handler finished, a
response left, time passed) and carries out the events :meth:`ConnectionState.next_event`
returns: :class:`Dispatch` (run a handler), :class:`Write` (send a response), :class:`Close`.
Nothing here touches a socket, a task or a clock.

The rules, in the order they are applied:

1. Framing. A frame above ``socket.request.max.bytes`` closes the connection; before a SASL
   connection has authenticated the bound is ``sasl.max_receive_bytes`` (a few KiB), so an
   anonymous client cannot make the broker buffer large frames.
2. Authentication gate. Kafka mutes a channel while one of its requests is in flight; until a
   SASL connection is authenticated streamd does the same: frames are taken strictly one at a
   time, the next one not even parsed before the previous one's answer was handed to the
   socket. Only ApiVersions, SaslHandshake and SaslAuthenticate are served then; any other
   request closes the connection (after a SaslHandshake v0, the frames that follow are bare
   SASL tokens, Kafka's old framing, until the login completes). After a failed authentication
   the answer is written and the connection closes: no later frame is ever looked at (one
   password guess per connection).
   On an authenticated connection a SaslHandshake or SaslAuthenticate (KIP-368
   re-authentication) is a barrier: it is taken once every earlier request is answered, and the
   gate above applies until the session is authenticated again. A session past its expiry may
   only begin re-authentication; any other request closes the connection, as in Kafka.
3. Order. Once authenticated, requests are handled concurrently, but responses leave in
   request order: each request gets a :class:`Slot` in a queue, and only the head is written.
4. Bytes in flight. Requests taken and not yet answered count with their size (a Fetch with the
   most its answer may hold: its ``max_bytes``, at most ``fetch.max.bytes``, since a 100-byte
   request can pin 55 MiB), answered ones not yet handed to the socket with their response's
   size (record sets sent from files included). Above ``kafka.max_inflight_bytes``, and while
   the transport's own buffer is above its high-water mark, no further frame is taken (frames
   already received wait, unparsed) and the edge stops reading; an unread response therefore
   stops its connection, not the broker, and what one connection pins is bounded by that limit
   plus one read's worth of requests.
5. Time. A connection with no request outstanding that has not completed a request for
   ``kafka.connections_max_idle_ms`` is closed (bytes that never make a whole frame do not count
   as activity, so half-sent frames do not keep a connection alive); a SASL connection not
   authenticated within ``sasl.authentication_timeout_ms`` is closed.
6. Drain (shutdown): no further frame is taken, the requests already taken are answered and
   written, then the connection closes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from streamd.errors import ErrorCode, InvalidRequest
from streamd.kafka import codec
from streamd.kafka.apis import REGISTRY, Api
from streamd.kafka.framing import FrameDecoder
from streamd.kafka.zerocopy import FileRecords
from streamd.security.sasl import ANONYMOUS, SaslSession

FETCH = 1
API_VERSIONS = 18
SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36
SASL_APIS = frozenset({SASL_HANDSHAKE, SASL_AUTHENTICATE})
PRE_AUTH_APIS = frozenset({API_VERSIONS, *SASL_APIS})


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_frame_bytes: int
    """``socket.request.max.bytes``"""
    pre_auth_frame_bytes: int
    """``sasl.max_receive_bytes``: the frame bound until a SASL connection is authenticated."""
    max_inflight_bytes: int
    """``kafka.max_inflight_bytes``"""
    idle_s: float
    """``kafka.connections_max_idle_ms`` / 1000."""
    auth_timeout_s: float = 0.0
    """``sasl.authentication_timeout_ms`` / 1000; 0 = none."""
    fetch_max_bytes: int = 57671680
    """``fetch.max.bytes``: what a Fetch may answer at most, reserved while it runs."""
    failed_close_delay_s: float = 0.05
    """After the answer to a failed login: time for the client to read it before the EOF."""

    @classmethod
    def from_config(cls, cfg: Any) -> ConnectionLimits:
        return cls(
            max_frame_bytes=cfg["socket.request.max.bytes"],
            pre_auth_frame_bytes=min(
                cfg["sasl.max_receive_bytes"], cfg["socket.request.max.bytes"]
            ),
            max_inflight_bytes=cfg["kafka.max_inflight_bytes"],
            idle_s=cfg["kafka.connections_max_idle_ms"] / 1000,
            auth_timeout_s=cfg["sasl.authentication_timeout_ms"] / 1000,
            fetch_max_bytes=cfg["fetch.max.bytes"],
        )


class Slot:
    """One request's place in the response order."""

    __slots__ = ("size", "done", "parts", "files")

    def __init__(self, size: int) -> None:
        self.size = size
        """Bytes this slot counts in flight: the request's, then the response's."""
        self.done = False
        self.parts: list[Any] | None = None
        """The response frame as parts (``codec.encode_response_parts``); None = no answer."""
        self.files = False
        """The parts hold :class:`FileRecords` (sent with sendfile, after the transport drains)."""


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Run ``api.handler`` for this request and report with ``response_ready(slot, ...)``."""

    api: Api
    header: codec.RequestHeader
    body: Any
    slot: Slot
    principal: str


@dataclass(frozen=True, slots=True)
class Token:
    """A bare SASL token (after a SaslHandshake v0): authenticate with it and report the
    size-prefixed reply (None: the login failed, no answer) with ``response_ready``."""

    token: bytes
    slot: Slot


@dataclass(frozen=True, slots=True)
class Write:
    """Send ``parts``. With ``files`` the edge reports ``write_done(slot)`` when finished and no
    other Write comes before; without, the write is complete once handed to the transport."""

    parts: list[Any]
    slot: Slot
    files: bool


@dataclass(frozen=True, slots=True)
class Close:
    reason: str
    delay_s: float = 0.0
    """Stop reading now, close after this long (the client reads the last answer first)."""
    expected: bool = False
    """An orderly close (idle, shutdown) rather than a client's fault: logged quietly."""


Event = Dispatch | Token | Write | Close
_ANSWERED = object()


class ConnectionState:
    def __init__(self, limits: ConnectionLimits, session: SaslSession | None, now: float) -> None:
        self.limits = limits
        self.session = session
        sasl = session is not None and session.requires_sasl and not session.authenticated
        self._decoder = FrameDecoder(
            limits.pre_auth_frame_bytes if sasl else limits.max_frame_bytes
        )
        self._slots: deque[Slot] = deque()
        self.inflight = 0
        self._writing: Slot | None = None
        self._barrier: Slot | None = None
        self._held: tuple[codec.RequestHeader, bytes] | None = None
        self._close: Close | None = None
        self._close_sent = False
        self._draining = False
        self.writing_paused = False
        """The transport's buffer is above its high-water mark (set by the edge)."""
        self.created = now
        self.last_active = now

    # ---- what the edge asks --------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing taken and unanswered, nothing being written."""
        return not self._slots and self._writing is None

    @property
    def reading(self) -> bool:
        """Whether the edge should read from the socket now."""
        if self._close is not None or self._draining or self.writing_paused:
            return False
        if self.inflight > self.limits.max_inflight_bytes:
            return False
        if self.idle:
            return True
        return not (self._gated or self._barrier is not None or self._held is not None)

    @property
    def _gated(self) -> bool:
        s = self.session
        return s is not None and s.requires_sasl and not s.authenticated

    # ---- inputs -------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Bytes from the socket (ignored once the connection is closing)."""
        if self._close is None:
            self._decoder.receive(data)

    def response_ready(self, slot: Slot, parts: list[Any] | None) -> None:
        """A handler's answer (None: the request has none, e.g. Produce with acks=0)."""
        if slot.done:
            return
        slot.done = True
        size = 0
        if parts:
            for part in parts:
                size += len(part)
                if type(part) is FileRecords:
                    slot.files = True
        self.inflight += size - slot.size
        slot.size = size
        slot.parts = parts

    def write_done(self, slot: Slot, now: float) -> None:
        """A ``Write`` with files has been sent."""
        if self._writing is slot:
            self._writing = None
            self.inflight -= slot.size
            self.last_active = now

    def fail(self, reason: str) -> None:
        """The edge could not carry out an event (a send failed): close."""
        self._set_close(Close(reason))

    def drain(self) -> None:
        """Shutting down: take no further frame; close once everything taken is written."""
        self._draining = True

    def tick(self, now: float) -> None:
        """Apply the time limits (called periodically by the edge)."""
        if self._close is not None:
            return
        limits, s = self.limits, self.session
        if (
            limits.auth_timeout_s > 0
            and s is not None
            and s.requires_sasl
            and not s.authenticated
            and not s.reauthenticating
            and now - self.created >= limits.auth_timeout_s
        ):
            self._set_close(
                Close(
                    f"not authenticated within {limits.auth_timeout_s * 1000:.0f} ms "
                    "(sasl.authentication_timeout_ms)"
                )
            )
        elif limits.idle_s > 0 and self.idle and now - self.last_active >= limits.idle_s:
            self._set_close(
                Close(
                    f"idle for {limits.idle_s * 1000:.0f} ms (kafka.connections_max_idle_ms)",
                    expected=True,
                )
            )

    def abandon(self) -> list[list[Any]]:
        """The connection is gone: the parts of every response not sent (to release files)."""
        self._set_close(Close("connection lost", expected=True))
        self._close_sent = True
        out = [slot.parts for slot in self._slots if slot.parts]
        for slot in self._slots:
            slot.parts = None
        self._slots.clear()
        return out

    # ---- outputs ------------------------------------------------------------------------------

    def next_event(self, now: float) -> Event | None:
        """The next thing for the edge to do; None when nothing is to be done until an input."""
        slots = self._slots
        while True:
            if self._close is not None:
                if self._close_sent:
                    return None
                self._close_sent = True
                return self._close
            while self._writing is None and slots and slots[0].done:
                slot = slots.popleft()
                if slot is self._barrier:
                    self._barrier = None
                parts, slot.parts = slot.parts, None
                if parts is None:
                    self.inflight -= slot.size
                    continue
                self.last_active = now
                if slot.files:
                    self._writing = slot
                else:
                    self.inflight -= slot.size
                return Write(parts, slot, slot.files)
            if not self.idle:
                if self._gated or self._barrier is not None or self._held is not None:
                    return None
            elif self.session is not None and self.session.failed:
                self._set_close(
                    Close("SASL authentication failed", self.limits.failed_close_delay_s, True)
                )
                continue
            elif self._draining:
                self._set_close(Close("broker shutting down", expected=True))
                continue
            if self._draining or self.writing_paused:
                return None
            if self.inflight > self.limits.max_inflight_bytes:
                return None
            event = self._take(now)
            if event is _ANSWERED or (event is None and self._close is not None):
                continue
            return event  # type: ignore[no-any-return]

    # ---- taking one frame ---------------------------------------------------------------------

    def _set_close(self, event: Close) -> None:
        if self._close is None:
            self._close = event

    def _take(self, now: float) -> Any:
        """Take one frame: a Dispatch, a Close, None (no whole frame yet, or held back), or
        ``_ANSWERED`` (answered without a handler; look again)."""
        s = self.session
        sasl = s is not None and s.requires_sasl
        if self._held is not None:
            header, frame = self._held
            self._held = None
        else:
            if sasl:
                assert s is not None
                pre_auth = not s.authenticated and not s.reauthenticating
                self._decoder.max_bytes = (
                    self.limits.pre_auth_frame_bytes if pre_auth else self.limits.max_frame_bytes
                )
            try:
                frame_or_none = self._decoder.next_frame()
            except InvalidRequest as exc:
                return self._set_close(Close(str(exc)))
            if frame_or_none is None:
                return None
            frame = frame_or_none
            self.last_active = now
            if sasl and s is not None and s.raw_tokens and s.state == "authenticate":
                slot = Slot(len(frame))
                self._slots.append(slot)
                self.inflight += slot.size
                return Token(frame, slot)
            try:
                header = codec.parse_header(frame)
            except InvalidRequest as exc:
                return self._set_close(Close(f"bad request header: {exc}"))
        key = header.api_key
        if sasl:
            assert s is not None
            if s.expired(now) and key != SASL_HANDSHAKE:
                return self._set_close(
                    Close("SASL session expired (kafka.connections_max_reauth_ms)")
                )
            if not s.authenticated and key not in PRE_AUTH_APIS:
                name = codec.api_name(key) or key
                return self._set_close(Close(f"{name} request before SASL authentication"))
            if key in SASL_APIS and not self.idle:
                self._held = (header, frame)
                return None
        spec = REGISTRY.get(key)
        version = header.api_version
        if spec is None or not spec.min_version <= version <= spec.max_version:
            return self._unsupported(header, frame, spec is not None)
        try:
            body = codec.decode_request(header, frame)
        except InvalidRequest as exc:
            return self._set_close(Close(f"{spec.name} v{version}: {exc}"))
        slot = Slot(len(frame))
        if key == FETCH:
            fetch_max = self.limits.fetch_max_bytes
            slot.size = max(slot.size, min(getattr(body, "max_bytes", fetch_max), fetch_max))
        self._slots.append(slot)
        self.inflight += slot.size
        if sasl and key in SASL_APIS:
            self._barrier = slot
        principal = s.principal if s is not None else ANONYMOUS
        return Dispatch(spec, header, body, slot, principal)

    def _unsupported(self, header: codec.RequestHeader, frame: bytes, known: bool) -> Any:
        """KIP-511: ApiVersions of an unknown version is answered (v0) with the API table."""
        if header.api_key == API_VERSIONS:
            from streamd.kafka.handlers.meta import api_versions_body

            body = codec.build(
                codec.response_class(API_VERSIONS, 0),
                api_versions_body(ErrorCode.UNSUPPORTED_VERSION),
            )
            slot = Slot(len(frame))
            self._slots.append(slot)
            self.inflight += slot.size
            self.response_ready(
                slot, codec.encode_response_parts(API_VERSIONS, 0, header.correlation_id, body)
            )
            return _ANSWERED
        name = codec.api_name(header.api_key)
        if name is None:
            reason = f"unknown api key {header.api_key}"
        elif not known:
            reason = f"api {name} ({header.api_key}) is not supported by streamd"
        else:
            reason = f"unsupported version {header.api_version} of api {name}"
        return self._set_close(Close(reason))
