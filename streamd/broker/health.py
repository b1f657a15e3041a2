"""Broker health as one document: components report their status, the admin route renders it.

A component registers a *probe*, a callable returning a mapping with at least ``"status"``
(``"ok"`` or ``"degraded"``) plus whatever explains it (errors, lag). The document::

    {"status": "ok" | "degraded", "node_id": 0,
     "components": {"tiering": "ok", "cluster_archive": "degraded", ...},
     "tiering": {...the component's own document...}, ...}

Decisions:

- The top-level status is ``"ok"`` only when every component is; a status other than ``"ok"``
  counts as degraded. The HTTP status is 200 when ok and 503 otherwise, so a load balancer or
  an orchestrator's probe sees a degraded broker without parsing JSON.
- A probe that raises makes its component degraded (with the exception as its error) instead of
  failing the whole endpoint: health must answer precisely when something is wrong.
- Each component's document also appears at the top level under its name (``"tiering"``), the
  shape the endpoint had before components existed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("streamd.health")

OK = "ok"
DEGRADED = "degraded"
Probe = Callable[[], Mapping[str, Any]]


class Health:
    def __init__(self, **fields: Any) -> None:
        self._fields = fields
        self._probes: dict[str, Probe] = {}

    def register(self, name: str, probe: Probe) -> None:
        """Add (or replace) a component; ``probe()`` runs on every health request."""
        self._probes[name] = probe

    def report(self) -> tuple[int, dict[str, Any]]:
        """``(http_status, document)``."""
        components: dict[str, str] = {}
        doc: dict[str, Any] = {}
        for name, probe in self._probes.items():
            try:
                part = dict(probe())
            except Exception as exc:
                log.exception("health probe %s failed", name)
                part = {"status": DEGRADED, "errors": [f"{type(exc).__name__}: {exc}"]}
            status = part.get("status", DEGRADED)
            components[name] = status if status == OK else DEGRADED
            doc[name] = part
        overall = OK if all(s == OK for s in components.values()) else DEGRADED
        doc.update(self._fields, status=overall, components=components)
        return (200 if overall == OK else 503), doc
