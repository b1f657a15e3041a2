"""``streamd cluster``: info, health (``--watch``), log directories and broker config.

``health`` runs every check even when one fails and exits 1 when any is unhealthy: Kafka
reachable (DescribeCluster), the admin API's ``/v1/health`` status, and, when that document has
a ``tiering`` section, its status, upload lag and errors. ``config get|set`` use DescribeConfigs
and IncrementalAlterConfigs on the BROKER resource (default: the first broker the cluster
reports); a key the broker marks read-only is refused before anything is sent.
``logdirs describe`` sends DescribeLogDirs through kafka-python's admin client (confluent-kafka's
Python AdminClient has no call for it) and prints each partition's size per broker and directory,
plus, from streamd's admin API (``/v1/logdirs``) when it answers, the bytes archived in the bucket.
"""

from __future__ import annotations

from typing import Any

import click
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from streamd.cli.common import (
    AdminHTTPError,
    CliError,
    admin_client,
    admin_get,
    client_command,
    config_source_name,
    emit,
    format_option,
    guard,
    human_bytes,
    kafka_python_admin,
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
@click.option("-w", "--watch", is_flag=True, help="Re-check until Ctrl-C.")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between checks with --watch.")
@format_option
def health(watch: bool, interval: float, fmt: str) -> None:
    """Check that Kafka and the admin API answer, and tiering's status; exit 1 if unhealthy
    (with --watch: re-check every --interval seconds until Ctrl-C, then exit 0).

    \b
    Examples:
      streamd --admin-url http://127.0.0.1:9644 cluster health
      streamd cluster health --watch --interval 5
    """
    if watch:
        from streamd.cli.topic import run_watch

        def render() -> str:
            settings()._session_ok = False
            data, text = _health()
            if fmt == "text":
                return text()
            import io
            from contextlib import redirect_stdout

            buffer = io.StringIO()
            with redirect_stdout(buffer):
                emit(fmt, data, text)
            return buffer.getvalue()

        run_watch(interval, render)
        return
    data, text = _health()
    emit(fmt, data, text)
    if not data["healthy"]:
        raise click.exceptions.Exit(1)


def _health() -> tuple[dict[str, Any], Any]:
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
        try:
            doc = admin_get("/v1/health")
        except AdminHTTPError as exc:  # 503: degraded, and the document says why
            if exc.status != 503 or not isinstance(exc.body, dict):
                raise
            doc = exc.body
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

    return data, text


def _archive_sizes() -> dict[tuple[str, int], int] | None:
    """streamd's admin API adds the bytes each partition has in the bucket; None when the
    admin API does not serve ``/v1/logdirs`` (another Kafka broker): the column is left out."""
    try:
        doc = admin_get("/v1/logdirs")
    except CliError:
        return None
    parts = doc.get("partitions", []) if isinstance(doc, dict) else []
    return {(str(p["topic"]), int(p["partition"])): int(p.get("archive_bytes", 0)) for p in parts}


@cluster.group()
def logdirs() -> None:
    """Broker log directories (DescribeLogDirs).

    \b
    Example:
      streamd cluster logdirs describe
    """


@logdirs.command(name="describe")
@client_command
@click.option("--topics", multiple=True, metavar="T[,T...]", help="Only these topics.")
@click.option("--broker", "brokers", multiple=True, type=int, metavar="ID",
              help="Only this broker (repeatable).")
@click.option("-H", "--human-readable", is_flag=True, help="Sizes as KiB, MiB, GiB.")
@format_option
def describe_logdirs(
    topics: tuple[str, ...], brokers: tuple[int, ...], human_readable: bool, fmt: str
) -> None:
    """Show each broker's log directories and the size of every partition in them.

    \b
    Examples:
      streamd cluster logdirs describe
      streamd cluster logdirs describe --topics orders -H
    """
    from kafka.errors import KafkaError as PyKafkaError

    names = [t.strip() for item in topics for t in item.split(",") if t.strip()]
    client = kafka_python_admin()
    try:
        answers = client.describe_log_dirs(
            topic_partitions=names or None, brokers=list(brokers) or None
        )
    except PyKafkaError as exc:
        raise CliError(f"DescribeLogDirs failed: {type(exc).__name__}: {exc}") from None
    finally:
        client.close()
    rows = []
    errors = []
    for answer in answers:
        for d in answer["log_dirs"]:
            if d.get("error_code"):
                errors.append(f"broker {answer['broker']} {d.get('log_dir')}: "
                              f"error {d['error_code']}")
            for t in d.get("topics", []):
                for p in t.get("partitions", []):
                    rows.append(
                        {
                            "broker": answer["broker"],
                            "dir": d.get("log_dir"),
                            "topic": t.get("name"),
                            "partition": p.get("partition_index"),
                            "size": p.get("partition_size"),
                            "offset_lag": p.get("offset_lag"),
                        }
                    )
    rows.sort(key=lambda r: (r["broker"], r["dir"] or "", r["topic"] or "", r["partition"] or 0))
    archived = _archive_sizes()
    columns = ["broker", "dir", "topic", "partition", "size", "offset_lag"]
    if archived is not None:
        for r in rows:
            r["archive_size"] = archived.get((r["topic"], r["partition"]), 0)
        columns.append("archive_size")

    def text() -> str:
        shown = [
            dict(r, size=human_bytes(r["size"]),
                 **({"archive_size": human_bytes(r["archive_size"])} if "archive_size" in r
                    else {}))
            if human_readable else r
            for r in rows
        ]
        out = table_dicts(shown, columns)
        return out + ("\n\n" + "\n".join(errors) if errors else "")

    emit(fmt, rows, text)
    if errors:
        raise CliError(errors[0])


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
