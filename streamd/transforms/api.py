"""``/v1/transforms``: the admin API of data transforms, independent of the HTTP server.

Routes (what ``streamd transform ...`` calls)::

    GET    /v1/transforms                    list (each as ``describe`` shows it)
    POST   /v1/transforms                    deploy: a JSON deployment (see spec.Deployment)
    GET    /v1/transforms/{name}             describe
    POST   /v1/transforms/{name}/pause       pause
    POST   /v1/transforms/{name}/resume      resume (also: restart a failed transform)
    DELETE /v1/transforms/{name}             delete
    GET    /v1/transforms/{name}/logs?lines=N

Every handler takes the caller (principal and host) and returns ``(status, document)``; the
broker adapts them to its HTTP server. Deploy, pause, resume and delete need ALTER on the
CLUSTER when authorization is on (a transform runs code on the broker's host, and ALTER on the
cluster is what creating ACLs needs too, so the transform's internal super-user principal
grants nothing its deployer could not grant itself); reading needs DESCRIBE on the CLUSTER.
With ``transforms.enabled`` false every route answers 409 naming the setting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamd.transforms.spec import Deployment, SpecError
from streamd.transforms.supervisor import Supervisor, now_ms

Reply = tuple[int, Any]
MAX_LOG_LINES = 10_000


@dataclass(frozen=True)
class Caller:
    principal: str
    host: str


class TransformsApi:
    def __init__(
        self,
        supervisor: Supervisor,
        *,
        may: Callable[[Caller, str], bool],
        partitions_of: Callable[[str], int | None],
    ) -> None:
        """``may(caller, "alter"|"describe")``: the cluster permission check;
        ``partitions_of(topic)``: partition count, None when the topic does not exist."""
        self.sup = supervisor
        self.may = may
        self.partitions_of = partitions_of

    def _refuse(self, caller: Caller, need: str) -> Reply | None:
        if not self.sup.settings.enabled:
            return 409, {
                "error": "data transforms are disabled on this broker (set transforms.enabled="
                "true in its config to run transforms)"
            }
        if not self.may(caller, need):
            operation = "ALTER" if need == "alter" else "DESCRIBE"
            return 403, {
                "error": f"{caller.principal} is not authorized: transforms need {operation} "
                "on the CLUSTER"
            }
        return None

    async def list(self, caller: Caller) -> Reply:
        refused = self._refuse(caller, "describe")
        if refused:
            return refused
        return 200, {
            "transforms": [r.describe() for _, r in sorted(self.sup.runners.items())]
        }

    async def describe(self, caller: Caller, name: str) -> Reply:
        refused = self._refuse(caller, "describe")
        if refused:
            return refused
        runner = self.sup.get(name)
        if runner is None:
            return _unknown(name)
        return 200, runner.describe()

    async def deploy(self, caller: Caller, body: Any) -> Reply:
        refused = self._refuse(caller, "alter")
        if refused:
            return refused
        if not isinstance(body, dict):
            return 400, {"error": "the request body must be a JSON deployment object"}
        body = dict(body, deployed_at_ms=now_ms(), deployed_by=caller.principal)
        try:
            dep = Deployment.from_json(body)
        except SpecError as exc:
            return 400, {"error": str(exc)}
        dlq = dep.dead_letter_topic
        for topic, what in [
            (dep.input_topic, "input"),
            *((t, "output") for t in dep.output_topics),
            *([(dlq, "dead-letter")] if dlq else []),
        ]:
            if self.partitions_of(topic) is None:
                return 400, {
                    "error": f"{what} topic {topic!r} does not exist (create it first: "
                    f"streamd topic create {topic})"
                }
        runner = await self.sup.deploy(dep)
        return 200, runner.describe()

    async def pause(self, caller: Caller, name: str) -> Reply:
        return await self._act(caller, name, self.sup.pause)

    async def resume(self, caller: Caller, name: str) -> Reply:
        return await self._act(caller, name, self.sup.resume)

    async def _act(self, caller: Caller, name: str, action: Any) -> Reply:
        refused = self._refuse(caller, "alter")
        if refused:
            return refused
        runner = await action(name)
        if runner is None:
            return _unknown(name)
        return 200, runner.describe()

    async def delete(self, caller: Caller, name: str) -> Reply:
        refused = self._refuse(caller, "alter")
        if refused:
            return refused
        if not await self.sup.delete(name):
            return _unknown(name)
        return 200, {"deleted": name}

    async def logs(self, caller: Caller, name: str, lines: str | None) -> Reply:
        refused = self._refuse(caller, "describe")
        if refused:
            return refused
        try:
            n = int(lines) if lines not in (None, "") else 100
        except ValueError:
            return 400, {"error": f"lines must be an integer, not {lines!r}"}
        n = max(0, min(n, MAX_LOG_LINES))
        found = await self.sup.logs(name, n)
        if found is None:
            return _unknown(name)
        return 200, {"name": name, "lines": found}


def _unknown(name: str) -> Reply:
    return 404, {"error": f"no transform named {name!r}"}
