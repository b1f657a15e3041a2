"""CreateAcls, DescribeAcls and DeleteAcls over :class:`streamd.security.store.AclStore`.

Kafka's rules: describing ACLs needs DESCRIBE on the cluster, changing them ALTER on the
cluster; without an authorizer (``security.authorization`` off) the APIs answer
SECURITY_DISABLED. Creations are validated one by one (an invalid binding fails alone) and
written in one durable step; deletions apply every filter and report the bindings each removed.
Version 0 of the three APIs predates resource pattern types (KIP-290): v0 filters and bindings
are LITERAL, and a v0 describe or delete matches literal bindings only, as in Kafka.
Every binding created or deleted, and every refused change, is recorded on the audit logger.
"""

from __future__ import annotations

import asyncio
from typing import Any

from streamd.errors import ErrorCode
from streamd.kafka.apis import api
from streamd.kafka.authz import ALTER, DESCRIBE, authorize_cluster, client_host
from streamd.kafka.context import Request
from streamd.security import audit
from streamd.security.acl import (
    AclBinding,
    AclFilter,
    InvalidAcl,
    Operation,
    PatternType,
    Permission,
    ResourceType,
)
from streamd.security.store import AclStore

E = ErrorCode


def _store(req: Request) -> AclStore:
    assert req.ctx.security is not None  # _refusal answered SECURITY_DISABLED otherwise
    return req.ctx.security.acls


def _refusal(req: Request, operation: Operation) -> tuple[ErrorCode, str] | None:
    if req.ctx.authorizer is None or req.ctx.security is None:
        return E.SECURITY_DISABLED, "no authorizer: security.authorization is off"
    if not authorize_cluster(req, operation):
        return E.CLUSTER_AUTHORIZATION_FAILED, "cluster authorization failed"
    return None


def _filter(f: Any) -> AclFilter:
    return AclFilter(
        resource_type=ResourceType(f.resource_type_filter),
        name=f.resource_name_filter,
        pattern_type=PatternType(getattr(f, "pattern_type_filter", PatternType.LITERAL)),
        principal=f.principal_filter,
        host=f.host_filter,
        operation=Operation(f.operation),
        permission=Permission(f.permission_type),
    )


def _audit(req: Request, operation: str, binding: str, result: str, **detail: object) -> None:
    audit.change("acl", req.principal, client_host(req.peer), "CLUSTER:kafka-cluster",
                 operation, result, binding=binding, **detail)


def _describe_binding(a: AclBinding) -> str:
    return (f"{a.permission.name} {a.principal} from {a.host} {a.operation.name} on "
            f"{a.resource_type.name}:{a.pattern_type.name}:{a.name}")


def _acl_fields(a: AclBinding) -> dict[str, Any]:
    return {
        "principal": a.principal,
        "host": a.host,
        "operation": int(a.operation),
        "permission_type": int(a.permission),
    }


@api(29, "DescribeAcls", 0, 3)
async def describe_acls(req: Request) -> dict[str, Any]:
    refused = _refusal(req, DESCRIBE)
    if refused:
        return {"error_code": refused[0], "error_message": refused[1], "resources": []}
    try:
        flt = _filter(req.body)
    except ValueError as exc:
        return {"error_code": E.INVALID_REQUEST, "error_message": str(exc), "resources": []}
    resources: dict[tuple[int, str, int], list[dict[str, Any]]] = {}
    for acl in _store(req).find(flt):
        key = (int(acl.resource_type), acl.name, int(acl.pattern_type))
        resources.setdefault(key, []).append(_acl_fields(acl))
    return {
        "error_code": E.NONE,
        "error_message": None,
        "resources": [
            {"resource_type": t, "resource_name": n, "pattern_type": p, "acls": acls}
            for (t, n, p), acls in resources.items()
        ],
    }


@api(30, "CreateAcls", 0, 3)
async def create_acls(req: Request) -> dict[str, Any]:
    creations = req.body.creations
    refused = _refusal(req, ALTER)
    if refused:
        _audit(req, "CreateAcls", f"{len(creations)} binding(s)", "refused", reason=refused[1])
        return {
            "results": [{"error_code": refused[0], "error_message": refused[1]} for _ in creations]
        }
    results: list[dict[str, Any]] = []
    valid: list[AclBinding] = []
    for c in creations:
        try:
            binding = AclBinding(
                resource_type=ResourceType(c.resource_type),
                name=c.resource_name,
                pattern_type=PatternType(getattr(c, "resource_pattern_type", PatternType.LITERAL)),
                principal=c.principal,
                host=c.host,
                operation=Operation(c.operation),
                permission=Permission(c.permission_type),
            ).validate()
        except (ValueError, InvalidAcl) as exc:
            results.append({"error_code": E.INVALID_REQUEST, "error_message": str(exc)})
            continue
        valid.append(binding)
        results.append({"error_code": E.NONE, "error_message": None})
    if valid:
        outcome = "applied"
        try:
            await asyncio.to_thread(_store(req).add, valid)
        except OSError as exc:
            outcome = "failed"
            for r in results:
                if r["error_code"] == E.NONE:
                    r.update(error_code=E.KAFKA_STORAGE_ERROR, error_message=str(exc))
        for b in valid:
            _audit(req, "CreateAcls", _describe_binding(b), outcome)
    return {"results": results}


@api(31, "DeleteAcls", 0, 3)
async def delete_acls(req: Request) -> dict[str, Any]:
    raw = req.body.filters
    refused = _refusal(req, ALTER)
    if refused:
        _audit(req, "DeleteAcls", f"{len(raw)} filter(s)", "refused", reason=refused[1])
        return {
            "filter_results": [
                {"error_code": refused[0], "error_message": refused[1]} for _ in raw
            ]
        }
    filters: list[AclFilter | None] = []
    for f in raw:
        try:
            filters.append(_filter(f))
        except ValueError:
            filters.append(None)
    usable = [f for f in filters if f is not None]
    try:
        deleted = await asyncio.to_thread(_store(req).delete, usable)
        matched = iter(deleted)
        for group in deleted:
            for b in group:
                _audit(req, "DeleteAcls", _describe_binding(b), "applied")
    except OSError as exc:
        return {
            "filter_results": [
                {"error_code": E.KAFKA_STORAGE_ERROR, "error_message": str(exc)} for _ in raw
            ]
        }
    results = []
    for f in filters:
        if f is None:
            results.append({"error_code": E.INVALID_REQUEST, "error_message": "invalid filter"})
            continue
        results.append(
            {
                "error_code": E.NONE,
                "error_message": None,
                "matching_acls": [
                    {
                        "error_code": E.NONE,
                        "error_message": None,
                        "resource_type": int(a.resource_type),
                        "resource_name": a.name,
                        "pattern_type": int(a.pattern_type),
                        **_acl_fields(a),
                    }
                    for a in next(matched)
                ],
            }
        )
    return {"filter_results": results}
