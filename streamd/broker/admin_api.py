"""The admin HTTP API (``admin.listen``) on aiohttp's web server: health, Prometheus
``/metrics``, JSON views and the web console.

This module owns the server, authentication and the per-request view of what the caller may
see; the routes themselves live in :mod:`streamd.broker.admin_routes` and
:mod:`streamd.broker.console`.

Authentication (``admin.require_auth``, as Redpanda's ``admin_api_require_auth``): HTTP basic
with a SCRAM user's name and password, checked against the stored SCRAM credential exactly as
SASL/PLAIN is (PBKDF2 on a small dedicated thread pool, never on the event loop). A wrong or
unknown user is answered 401 with ``WWW-Authenticate: Basic``, with the same work done for an
unknown user as for a wrong password (no timing oracle), and logged to ``streamd.audit``.
Without ``require_auth`` a request without credentials is ``User:ANONYMOUS``; credentials
that are sent are still checked (a wrong password is never silently ignored).
``/v1/status/ready`` answers without authentication (load balancers and orchestrators probe it)
and reveals nothing but readiness.

Authorization (``security.authorization``): the admin API never shows a topic the caller could
not DESCRIBE over Kafka. Listings leave such topics out; a request naming one answers 403
whether or not the topic exists, so existence does not leak (Kafka's rule for
TOPIC_AUTHORIZATION_FAILED). Cluster-wide documents need DESCRIBE on the cluster.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from streamd.security.acl import CLUSTER_NAME, Operation, ResourceType

log = logging.getLogger("streamd.admin")
audit = logging.getLogger("streamd.audit")

ANONYMOUS = "User:ANONYMOUS"
UNAUTHENTICATED_PATHS = frozenset({"/v1/status/ready"})
AUTH_POOL_THREADS = 2

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PasswordCheck(Protocol):
    """``(user, password) -> bool``; blocking (PBKDF2), run on the auth pool."""

    def __call__(self, user: str, password: str) -> bool: ...


class Authorizer(Protocol):
    """``streamd.security.acl.Authorizer``: (principal, host, operation, type, name) -> bool."""

    def authorize(
        self, principal: str, host: str, operation: Any, resource_type: Any, name: str
    ) -> bool: ...


@dataclass(frozen=True)
class Access:
    """What one request's caller may see. ``authorizer`` None: everything (authorization off)."""

    principal: str
    host: str
    authorizer: Authorizer | None = None

    def may_describe_topic(self, topic: str) -> bool:
        if self.authorizer is None:
            return True
        return self.authorizer.authorize(
            self.principal, self.host, Operation.DESCRIBE, ResourceType.TOPIC, topic
        )

    def may_describe_cluster(self) -> bool:
        if self.authorizer is None:
            return True
        return self.authorizer.authorize(
            self.principal, self.host, Operation.DESCRIBE, ResourceType.CLUSTER, CLUSTER_NAME
        )

    def visible(self, topics: list[str]) -> list[str]:
        if self.authorizer is None:
            return topics
        return [t for t in topics if self.may_describe_topic(t)]


def topic_id_text(topic_id: uuid.UUID) -> str:
    """Kafka's text form of a topic id (URL-safe base64, no padding), as ``kafka-topics.sh``,
    rpk and ``streamd topic describe`` print it; every admin view uses it."""
    return base64.urlsafe_b64encode(topic_id.bytes).rstrip(b"=").decode("ascii")


def access(request: web.Request) -> Access:
    return request["access"]  # type: ignore[no-any-return]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(data, indent=1, sort_keys=True, default=str).encode(),
        content_type="application/json",
    )


def error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


def require_topic(request: web.Request, topic: str) -> None:
    """Raise 403 unless the caller may describe ``topic`` (whether or not it exists)."""
    if not access(request).may_describe_topic(topic):
        raise web.HTTPForbidden(
            text=json.dumps({"error": f"not authorized to describe topic {topic!r}"}),
            content_type="application/json",
        )


def require_cluster(request: web.Request) -> None:
    if not access(request).may_describe_cluster():
        raise web.HTTPForbidden(
            text=json.dumps({"error": "not authorized to describe the cluster"}),
            content_type="application/json",
        )


class BasicAuth:
    """Checks ``Authorization: Basic`` against SCRAM credentials; see the module docstring."""

    def __init__(self, check: PasswordCheck, *, required: bool) -> None:
        self.check = check
        self.required = required
        self._pool = ThreadPoolExecutor(AUTH_POOL_THREADS, thread_name_prefix="admin-auth")

    async def principal(self, request: web.Request) -> str:
        header = request.headers.get("Authorization")
        if header is None:
            if self.required:
                raise self._challenge("authentication required")
            return ANONYMOUS
        user, password = _basic_credentials(header)
        if user is None:
            raise self._challenge("malformed Authorization header (expected Basic)")
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._pool, self.check, user, password or "")
        if not ok:
            audit.info(
                "event=authentication result=failure principal=User:%s host=%s resource=admin-api "
                "operation=%s path=%s",
                user, request.remote, request.method, request.path,
            )
            raise self._challenge("invalid user name or password")
        return f"User:{user}"

    @staticmethod
    def _challenge(message: str) -> web.HTTPUnauthorized:
        return web.HTTPUnauthorized(
            headers={"WWW-Authenticate": 'Basic realm="streamd", charset="UTF-8"'},
            text=json.dumps({"error": message}),
            content_type="application/json",
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _basic_credentials(header: str) -> tuple[str | None, str | None]:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None, None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        return None, None
    return user, password


class AdminServer:
    """The aiohttp application and its runner. ``start`` returns an object with
    ``close()`` / ``wait_closed()`` like an ``asyncio.Server``, so the broker stops it with its
    Kafka listeners."""

    def __init__(self, auth: BasicAuth, authorizer: Authorizer | None) -> None:
        self.auth = auth
        self.authorizer = authorizer
        self.app = web.Application(
            middlewares=[self._errors, self._authenticate], client_max_size=1 << 20
        )

    def get(self, path: str, handler: Handler, *, name: str | None = None) -> None:
        self.app.router.add_get(path, handler, name=name, allow_head=True)

    def post(self, path: str, handler: Handler) -> None:
        self.app.router.add_post(path, handler)

    def static(self, prefix: str, directory: str) -> None:
        self.app.router.add_static(prefix, directory)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.content_type == "application/json" or exc.status < 400:
                raise
            if exc.status == 404:
                return error(404, f"no such endpoint {request.path}")
            if exc.status == 405:
                return error(405, f"{request.method} not allowed on {request.path}")
            return error(exc.status, exc.reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("admin API %s %s failed", request.method, request.path)
            return error(500, str(exc) or type(exc).__name__)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in UNAUTHENTICATED_PATHS:
            request["access"] = Access(ANONYMOUS, request.remote or "", None)
            return await handler(request)
        principal = await self.auth.principal(request)
        request["access"] = Access(principal, request.remote or "", self.authorizer)
        return await handler(request)

    async def start(self, host: str, port: int) -> RunningAdmin:
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        return RunningAdmin(runner, self.auth)


class RunningAdmin:
    def __init__(self, runner: web.AppRunner, auth: BasicAuth) -> None:
        self._runner = runner
        self._auth = auth
        self._closing: asyncio.Task[None] | None = None

    def close(self) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._runner.cleanup())
            self._auth.close()

    async def wait_closed(self) -> None:
        self.close()
        assert self._closing is not None
        with contextlib.suppress(Exception):
            await self._closing
