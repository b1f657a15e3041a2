"""``streamd cluster``: info, health and broker config.

``health`` runs every check even when one fails and exits 1 when any is unhealthy: Kafka
reachable (DescribeCluster), the admin API's ``/v1/health`` status, and, when that document has
a ``tiering`` section, its status, upload lag and errors. ``config get|set`` use DescribeConfigs
and IncrementalAlterConfigs on the BROKER resource (default: the first broker the cluster
reports); a key the broker marks read-only is refused before anything is sent.
"""

from __future__ import annotations

from typing import Any

import click
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from streamd.cli.common import (
    CliError,
    admin_client,
    admin_get,
    client_command,
    config_source_name,
    emit,
    format_option,
    guard,
    render_fields,
    render_table,
    result,
    section,
    settings,
    table_dicts,
)


@click.group()
def cluster() -> None:
    """Cluster-wide information, health and broker configuration.

    \b
    Example:
      streamd cluster health
    """


def cluster_info() -> dict[str, Any]:
    admin = admin_client()
    with guard():
        desc = result(admin.describe_cluster(request_timeout=settings().timeout))
        md = admin.list_topics(timeout=settings().timeout)
    brokers = [
        {"id": n.id, "host": n.host, "port": n.port, "rack": n.rack}
        for n in sorted(desc.nodes, key=lambda n: n.id)
    ]
    topics = [t for t in md.topics if not t.startswith("__")]
    return {
        "cluster_id": desc.cluster_id,
        "controller": desc.controller.id if desc.controller is not None else None,
        "brokers": brokers,
        "topics": len(topics),
    }


@cluster.command()
@client_command
@format_option
def info(fmt: str) -> None:
    """Show the cluster id, controller, brokers and topic count.

    \b
    Example:
      streamd --brokers 127.0.0.1:9092 cluster info
    """
    data = cluster_info()

    def text() -> str:
        summary = render_fields(
            [
                ("cluster-id", data["cluster_id"]),
                ("controller", data["controller"]),
                ("topics", data["topics"]),
            ]
        )
        brokers = table_dicts(data["brokers"], ["id", "host", "port", "rack"])
        return "\n".join([section("cluster", summary), section("brokers", brokers)])

    emit(fmt, data, text)


def _tiering_check(doc: dict[str, Any]) -> dict[str, Any]:
    status = str(doc.get("status", "ok")).lower()
    errors = doc.get("errors") or doc.get("last_error")
    ok = status in ("ok", "healthy", "up") and not errors
    details = [
        f"{k}={v}"
        for k, v in sorted(doc.items())
        if k != "status" and not isinstance(v, dict | list)
    ]
    if isinstance(errors, list) and errors:
        details.append(f"errors={len(errors)}: {errors[0]}")
    return {"check": "tiering", "healthy": ok, "detail": ", ".join([status] + details)}


@cluster.command()
@client_command
@format_option
def health(fmt: str) -> None:
    """Check that Kafka and the admin API answer, and tiering's status; exit 1 if unhealthy.

    \b
    Example:
      streamd --admin-url http://127.0.0.1:9644 cluster health
    """
    checks: list[dict[str, Any]] = []
    try:
        data = cluster_info()
        checks.append(
            {
                "check": "kafka",
                "healthy": True,
                "detail": f"{settings().brokers}: {len(data['brokers'])} broker(s), "
                f"controller {data['controller']}, {data['topics']} topic(s)",
            }
        )
    except CliError as exc:
        checks.append({"check": "kafka", "healthy": False, "detail": exc.format_message()})
    try:
        doc = admin_get("/v1/health")
        status = str(doc.get("status", "unknown")) if isinstance(doc, dict) else "unknown"
        checks.append(
            {
                "check": "admin-api",
                "healthy": status == "ok",
                "detail": f"{settings().admin_url}: {status}",
            }
        )
        tiering = doc.get("tiering") if isinstance(doc, dict) else None
        if isinstance(tiering, dict):
            checks.append(_tiering_check(tiering))
    except CliError as exc:
        checks.append({"check": "admin-api", "healthy": False, "detail": exc.format_message()})
    healthy = all(c["healthy"] for c in checks)
    data = {"healthy": healthy, "checks": checks}

    def text() -> str:
        rows = [[c["check"], "ok" if c["healthy"] else "FAIL", c["detail"]] for c in checks]
        verdict = "cluster is healthy" if healthy else "cluster is UNHEALTHY"
        return render_table(["check", "status", "detail"], rows) + f"\n\n{verdict}"

    emit(fmt, data, text)
    if not healthy:
        raise click.exceptions.Exit(1)


@cluster.group()
def config() -> None:
    """Read and change broker configuration.

    \b
    Example:
      streamd cluster config get fsync
    """


def _broker_resource(broker: str | None, **kwargs: Any) -> tuple[Any, ConfigResource]:
    admin = admin_client()
    if broker is None:
        with guard():
            desc = result(admin.describe_cluster(request_timeout=settings().timeout))
        ids = sorted(n.id for n in desc.nodes)
        broker = str(ids[0]) if ids else "0"
    return admin, ConfigResource(ResourceType.BROKER, broker, **kwargs)


def _broker_configs(admin: Any, resource: ConfigResource) -> dict[str, Any]:
    with guard():
        futures = admin.describe_configs([resource], request_timeout=settings().timeout)
    return result(futures[resource], f"broker {resource.name}")  # type: ignore[no-any-return]


@config.command()
@client_command
@click.argument("key", required=False)
@click.option("--broker", "broker", metavar="ID", help="Broker id (default: the first broker).")
@format_option
def get(key: str | None, broker: str | None, fmt: str) -> None:
    """Show broker configs (all, or one KEY) with their sources.

    \b
    Examples:
      streamd cluster config get
      streamd cluster config get log.housekeeping_interval_ms
    """
    admin, resource = _broker_resource(broker)
    entries = _broker_configs(admin, resource)
    if key is not None and key not in entries:
        raise CliError(f"unknown broker config {key!r}")
    rows = [
        {
            "name": k,
            "value": "(sensitive)" if e.is_sensitive else e.value,
            "source": config_source_name(e.source),
            "read_only": e.is_read_only,
        }
        for k, e in sorted(entries.items())
        if key is None or k == key
    ]
    if key is not None and fmt == "text":
        click.echo(rows[0]["value"] if rows[0]["value"] is not None else "")
        return
    emit(fmt, rows, lambda: table_dicts(rows, ["name", "value", "source", "read_only"]))


@config.command(name="set")
@client_command
@click.argument("key")
@click.argument("value")
@click.option("--broker", "broker", metavar="ID", help="Broker id (default: the first broker).")
def set_(key: str, value: str, broker: str | None) -> None:
    """Change a broker config at runtime (IncrementalAlterConfigs); the broker keeps it
    across restarts. Read-only keys need the config file and a restart.

    \b
    Examples:
      streamd cluster config set defaults.retention.ms 86400000
      streamd cluster config set tiering.upload_interval_ms 5000
    """
    admin, resource = _broker_resource(broker)
    entries = _broker_configs(admin, resource)
    entry = entries.get(key)
    if entry is None:
        raise CliError(f"unknown broker config {key!r}")
    if entry.is_read_only:
        raise CliError(
            f"{key} is read-only on broker {resource.name}: change it in the broker's "
            "config file and restart"
        )
    change = ConfigResource(
        ResourceType.BROKER,
        resource.name,
        incremental_configs=[ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)],
    )
    with guard(key):
        futures = admin.incremental_alter_configs([change], request_timeout=settings().timeout)
    result(futures[change], f"cannot set {key}")
    click.echo(f"Set {key}={value} on broker {resource.name}")
