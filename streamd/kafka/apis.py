"""The table of Kafka APIs streamd serves: key, version range, handler.

Handler modules register themselves with :func:`api`; ApiVersions answers from this table, so
what is advertised is exactly what is implemented.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from streamd.kafka.context import Request

Handler = Callable[[Request], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Api:
    key: int
    name: str
    min_version: int
    max_version: int
    handler: Handler


REGISTRY: dict[int, Api] = {}


def api(key: int, name: str, min_version: int, max_version: int) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        REGISTRY[key] = Api(key, name, min_version, max_version, fn)
        return fn

    return register
