"""``streamd acl``: create, list and delete ACLs (CreateAcls / DescribeAcls / DeleteAcls).

A principal without a type gets ``User:`` (``alice`` -> ``User:alice``); the cluster resource's
name is always ``kafka-cluster``. ``create`` makes one binding per ``--operation``. ``delete``
refuses a filter that matches everything unless ``--all`` says so.
"""

from __future__ import annotations

from typing import Any, cast

import click
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from streamd.cli.common import (
    CliError,
    admin_client,
    client_command,
    emit,
    format_option,
    guard,
    result,
    settings,
    table_dicts,
)

RESOURCES = {
    "topic": ResourceType.TOPIC,
    "group": ResourceType.GROUP,
    "cluster": ResourceType.BROKER,
    "transactional-id": ResourceType.TRANSACTIONAL_ID,
}
OPERATIONS = {
    name.lower().replace("_", "-"): op
    for name, op in AclOperation.__members__.items()
    if name not in ("UNKNOWN", "ANY")
}
PATTERNS = {"literal": ResourcePatternType.LITERAL, "prefixed": ResourcePatternType.PREFIXED}
PATTERN_FILTERS = {"any": ResourcePatternType.ANY, "match": ResourcePatternType.MATCH, **PATTERNS}
PERMISSIONS = {"allow": AclPermissionType.ALLOW, "deny": AclPermissionType.DENY}
_RESOURCE_NAMES = {v: k for k, v in RESOURCES.items()}


@click.group()
def acl() -> None:
    """Manage access control lists.

    \b
    Example:
      streamd acl create --principal alice --operation read --resource-type topic \\
        --resource-name orders
    """


def _principal(value: str) -> str:
    return value if ":" in value else f"User:{value}"


def _any(value: str | None) -> str:
    """AclBindingFilter takes None for "any"; its type stubs say str."""
    return cast(str, value)


def _name(kind: str | None, name: str | None) -> str | None:
    return "kafka-cluster" if kind == "cluster" else name


def binding_row(b: Any) -> dict[str, Any]:
    return {
        "principal": b.principal,
        "host": b.host,
        "resource_type": _RESOURCE_NAMES.get(b.restype, b.restype.name.lower()),
        "resource_name": b.name,
        "pattern": b.resource_pattern_type.name.lower(),
        "operation": b.operation.name.lower().replace("_", "-"),
        "permission": b.permission_type.name.lower(),
    }


COLUMNS = [
    "principal",
    "host",
    "resource_type",
    "resource_name",
    "pattern",
    "operation",
    "permission",
]


def _filter_options(fn: Any) -> Any:
    options = [
        click.option("--principal", help="Principal, e.g. User:alice (default type User)."),
        click.option("--host", help="Client host ('*' for any)."),
        click.option(
            "--operation",
            "operations",
            multiple=True,
            type=click.Choice(sorted(OPERATIONS)),
            help="Operation (repeatable).",
        ),
        click.option("--resource-type", type=click.Choice(sorted(RESOURCES))),
        click.option("--resource-name", help="Topic, group or transactional id."),
        click.option(
            "--pattern", type=click.Choice(sorted(PATTERN_FILTERS)), help="Resource pattern type."
        ),
        click.option("--permission", type=click.Choice(sorted(PERMISSIONS))),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _filters(
    principal: str | None,
    host: str | None,
    operations: tuple[str, ...],
    resource_type: str | None,
    resource_name: str | None,
    pattern: str | None,
    permission: str | None,
) -> list[AclBindingFilter]:
    ops = [OPERATIONS[o] for o in operations] or [AclOperation.ANY]
    pattern_type = PATTERN_FILTERS[pattern or "any"]
    return [
        AclBindingFilter(
            RESOURCES[resource_type] if resource_type else ResourceType.ANY,
            _any(_name(resource_type, resource_name)),
            pattern_type,
            _any(_principal(principal) if principal else None),
            _any(host),
            op,
            PERMISSIONS[permission] if permission else AclPermissionType.ANY,
        )
        for op in ops
    ]


@acl.command()
@client_command
@click.option("--principal", required=True, help="Principal, e.g. User:alice (default type User).")
@click.option("--host", default="*", show_default=True, help="Client host the ACL applies to.")
@click.option(
    "--operation",
    "operations",
    multiple=True,
    required=True,
    type=click.Choice(sorted(OPERATIONS)),
    help="Operation (repeatable).",
)
@click.option("--resource-type", required=True, type=click.Choice(sorted(RESOURCES)))
@click.option("--resource-name", help="Topic, group or transactional id ('*' for all).")
@click.option(
    "--pattern",
    type=click.Choice(sorted(PATTERNS)),
    default="literal",
    show_default=True,
    help="Match the name literally or as a prefix.",
)
@click.option(
    "--permission", type=click.Choice(sorted(PERMISSIONS)), default="allow", show_default=True
)
@format_option
def create(
    principal: str,
    host: str,
    operations: tuple[str, ...],
    resource_type: str,
    resource_name: str | None,
    pattern: str,
    permission: str,
    fmt: str,
) -> None:
    """Create ACLs: one per --operation.

    \b
    Examples:
      streamd acl create --principal alice --operation read --operation describe \\
        --resource-type topic --resource-name orders
      streamd acl create --principal User:etl --operation write --resource-type topic \\
        --resource-name logs. --pattern prefixed --permission deny
    """
    name = _name(resource_type, resource_name)
    if not name:
        raise CliError(f"--resource-name is required for resource type {resource_type}")
    bindings = [
        AclBinding(
            RESOURCES[resource_type],
            name,
            PATTERNS[pattern],
            _principal(principal),
            host,
            OPERATIONS[op],
            PERMISSIONS[permission],
        )
        for op in operations
    ]
    admin = admin_client()
    with guard():
        futures = admin.create_acls(bindings, request_timeout=settings().timeout)
    for binding in bindings:
        result(futures[binding], "cannot create ACL")
    rows = [binding_row(b) for b in bindings]
    emit(fmt, rows, lambda: table_dicts(rows, COLUMNS))


@acl.command(name="list")
@client_command
@_filter_options
@format_option
def list_(
    principal: str | None,
    host: str | None,
    operations: tuple[str, ...],
    resource_type: str | None,
    resource_name: str | None,
    pattern: str | None,
    permission: str | None,
    fmt: str,
) -> None:
    """List ACLs, optionally filtered.

    \b
    Example:
      streamd acl list --principal alice --resource-type topic
    """
    admin = admin_client()
    rows: list[dict[str, Any]] = []
    for flt in _filters(
        principal, host, operations, resource_type, resource_name, pattern, permission
    ):
        with guard():
            found = result(admin.describe_acls(flt, request_timeout=settings().timeout))
        rows += [binding_row(b) for b in found]
    rows.sort(key=lambda r: [str(r[c]) for c in COLUMNS])
    emit(fmt, rows, lambda: table_dicts(rows, COLUMNS))


@acl.command()
@client_command
@_filter_options
@click.option("--all", "all_", is_flag=True, help="Allow a filter that matches every ACL.")
@format_option
def delete(
    principal: str | None,
    host: str | None,
    operations: tuple[str, ...],
    resource_type: str | None,
    resource_name: str | None,
    pattern: str | None,
    permission: str | None,
    all_: bool,
    fmt: str,
) -> None:
    """Delete the ACLs matching a filter and show what was deleted.

    \b
    Example:
      streamd acl delete --principal alice --resource-type topic --resource-name orders
    """
    if not all_ and not any(
        [principal, host, operations, resource_type, resource_name, permission]
    ):
        raise CliError("refusing to delete every ACL: narrow the filter or pass --all")
    filters = _filters(
        principal, host, operations, resource_type, resource_name, pattern, permission
    )
    admin = admin_client()
    with guard():
        futures = admin.delete_acls(filters, request_timeout=settings().timeout)
    rows: list[dict[str, Any]] = []
    for flt in filters:
        rows += [binding_row(b) for b in result(futures[flt], "cannot delete ACLs")]
    emit(fmt, rows, lambda: table_dicts(rows, COLUMNS) if rows else "no ACL matched")
