"""The admin HTTP API (``admin.listen``): health, Prometheus ``/metrics`` and JSON views.

A deliberately small HTTP/1.1 server on asyncio streams: one request per connection
(``Connection: close``), JSON or text bodies. Routes are exact paths or ``{name}`` patterns.
Handlers return ``(status, content_type, body)``; an exception becomes a 500 with a JSON error.
A route registered with ``with_body=True`` also gets the request body (``Content-Length``, at
most ``MAX_BODY`` bytes) and the peer's address (``peer``): the transforms API's deploy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("streamd.admin")

Reply = tuple[int, str, bytes]
Route = Callable[..., Awaitable[Reply]]
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}
MAX_BODY = 4 << 20


def json_reply(data: Any, status: int = 200) -> Reply:
    return status, "application/json", json.dumps(data, indent=1, sort_keys=True).encode()


def text_reply(text: str, status: int = 200, content_type: str = "text/plain") -> Reply:
    return status, content_type, text.encode()


class AdminServer:
    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Route]] = []
        self._with_body: set[Route] = set()

    def route(self, method: str, pattern: str, fn: Route, *, with_body: bool = False) -> None:
        regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$"
        self._routes.append((method, re.compile(regex), fn))
        if with_body:
            self._with_body.add(fn)

    async def start(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._serve, host, port, reuse_address=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            first, _, rest = head.decode("latin-1").partition("\r\n")
            method, target, _ = first.split(" ", 2)
            length = 0
            for line in rest.split("\r\n"):
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length > MAX_BODY:
                reply = json_reply({"error": f"request body above {MAX_BODY} bytes"}, 413)
            else:
                body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
                peer = writer.get_extra_info("peername")
                reply = await self._dispatch(method, target, body, peer[0] if peer else "")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            reply = json_reply({"error": "bad request"}, 400)
        except ConnectionError:
            writer.close()
            return
        status, ctype, body = reply
        head_out = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        try:
            writer.write(head_out.encode() + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _dispatch(self, method: str, target: str, body: bytes = b"", peer: str = "") -> Reply:
        parts = urlsplit(target)
        path = unquote(parts.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        allowed = False
        for m, regex, fn in self._routes:
            match = regex.match(path)
            if match is None:
                continue
            if m != method:
                allowed = True
                continue
            try:
                if fn in self._with_body:
                    return await fn(query=query, body=body, peer=peer, **match.groupdict())
                return await fn(query=query, **match.groupdict())
            except Exception as exc:
                log.exception("admin API %s %s failed", method, path)
                return json_reply({"error": str(exc)}, 500)
        if allowed:
            return json_reply({"error": f"{method} not allowed on {path}"}, 405)
        return json_reply({"error": f"no such endpoint {path}"}, 404)
