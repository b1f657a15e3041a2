"""Process-wide counters and gauges, rendered in Prometheus text format for ``/metrics``.

Plain attributes (no locks): every writer runs on the event loop thread. Layers add their own
gauges through :meth:`Metrics.add_collector`, a callable returning (name, help, type, samples).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

Sample = tuple[dict[str, str], float]
Family = tuple[str, str, str, list[Sample]]


class Metrics:
    def __init__(self) -> None:
        self.connections = 0
        self.requests: Counter[int] = Counter()
        self.produced_bytes = 0
        self.fetched_bytes = 0
        self.sendfile_bytes = 0
        self._collectors: list[Callable[[], Iterable[Family]]] = []

    def count_request(self, api_key: int) -> None:
        self.requests[api_key] += 1

    def add_collector(self, fn: Callable[[], Iterable[Family]]) -> None:
        self._collectors.append(fn)

    def families(self) -> list[Family]:
        out: list[Family] = [
            ("streamd_connections", "Open Kafka connections.", "gauge", [({}, self.connections)]),
            (
                "streamd_requests_total",
                "Kafka requests handled, by API key.",
                "counter",
                [({"api_key": str(k)}, v) for k, v in sorted(self.requests.items())],
            ),
            (
                "streamd_produced_bytes_total",
                "Record batch bytes appended.",
                "counter",
                [({}, self.produced_bytes)],
            ),
            (
                "streamd_fetched_bytes_total",
                "Record batch bytes served to consumers.",
                "counter",
                [({}, self.fetched_bytes)],
            ),
            (
                "streamd_fetch_sendfile_bytes_total",
                "Record batch bytes sent from segment files with sendfile (no copy).",
                "counter",
                [({}, self.sendfile_bytes)],
            ),
        ]
        for fn in self._collectors:
            out.extend(fn())
        return out

    def render(self) -> str:
        lines = []
        for name, help_text, kind, samples in self.families():
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                if labels:
                    body = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
                    lines.append(f"{name}{{{body}}} {_num(value)}")
                else:
                    lines.append(f"{name} {_num(value)}")
        return "\n".join(lines) + "\n"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))
