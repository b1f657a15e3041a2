"""``streamd topic``: create, list, describe, delete, alter-config, add-partitions and
describe-storage; ``produce`` and ``consume`` live in :mod:`streamd.cli.records`.

``describe`` shows each partition's log start and high watermark from ListOffsets (earliest /
latest), so on streamd the log start includes archived data. ``describe-storage`` is streamd's
own: it renders whatever ``GET /v1/topics/{topic}/storage`` returns, scalars as fields and lists
of objects as tables, so new fields in the admin API show up without a CLI change.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
from confluent_kafka import TopicCollection, TopicPartition
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

from streamd.cli import records
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
    render_fields,
    render_table,
    result,
    section,
    settings,
    table_dicts,
    topic_partitions,
)
from streamd.cli.specs import parse_key_values


@click.group()
def topic() -> None:
    """Create, inspect, change, produce to and consume from topics.

    \b
    Example:
      streamd topic create orders -p 3 -c retention.ms=86400000
    """


topic.add_command(records.produce)
topic.add_command(records.consume)


def _fail_if_any(failures: list[str]) -> None:
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise CliError(failures[0] + more)


@topic.command()
@client_command
@click.argument("names", nargs=-1, required=True)
@click.option(
    "-p",
    "--partitions",
    type=click.IntRange(min=1),
    help="Partition count [default: the broker's num.partitions; a read replica's origin's].",
)
@click.option(
    "-r",
    "--replicas",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Replication factor.",
)
@click.option(
    "-c",
    "--config",
    "configs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Topic config (repeatable).",
)
@click.option("--dry-run", is_flag=True, help="Let the broker validate without creating.")
@format_option
def create(
    names: tuple[str, ...],
    partitions: int | None,
    replicas: int,
    configs: tuple[str, ...],
    dry_run: bool,
    fmt: str,
) -> None:
    """Create one or more topics.

    A read replica of a topic another broker archives is created with only
    -c remote.readreplica=STORE_URL (that broker's tiering.store): its partition
    count and configs come from the origin's archive.

    \b
    Examples:
      streamd topic create orders -p 3 -c cleanup.policy=compact -c retention.ms=-1
      streamd topic create orders -c remote.readreplica=s3://streamd/origin
    """
    config = parse_key_values(configs, "config")
    admin = admin_client()
    with guard():
        futures = admin.create_topics(
            [NewTopic(n, partitions or -1, replicas, config=config) for n in names],
            validate_only=dry_run,
            request_timeout=settings().timeout,
        )
    rows, failures = [], []
    for name in names:
        try:
            result(futures[name], name)
            rows.append({"topic": name, "status": "OK" if not dry_run else "OK (dry run)"})
        except CliError as exc:
            failures.append(exc.format_message())
    emit(fmt, rows, lambda: table_dicts(rows, ["topic", "status"]) if rows else "")
    _fail_if_any(failures)


@topic.command(name="list")
@client_command
@click.option("-i", "--internal", is_flag=True, help="Include internal topics (__*).")
@format_option
def list_(internal: bool, fmt: str) -> None:
    """List topics with their partition and replica counts.

    \b
    Example:
      streamd topic list --format json
    """
    admin = admin_client()
    with guard():
        md = admin.list_topics(timeout=settings().timeout)
    rows = []
    for name in sorted(md.topics):
        info = md.topics[name]
        if name.startswith("__") and not internal:
            continue
        parts = list(info.partitions.values())
        rows.append(
            {
                "name": name,
                "partitions": len(parts),
                "replicas": len(parts[0].replicas) if parts else 0,
            }
        )
    emit(fmt, rows, lambda: table_dicts(rows, ["name", "partitions", "replicas"]))


def describe_data(name: str) -> dict[str, Any]:
    admin = admin_client()
    topic_partitions(admin, name)
    desc = result(
        admin.describe_topics(TopicCollection([name]), request_timeout=settings().timeout)[name],
        name,
    )
    parts = sorted(desc.partitions, key=lambda p: p.id)
    offsets: dict[int, dict[str, int]] = {p.id: {} for p in parts}
    for label, spec in (
        ("log_start", OffsetSpec.earliest()),
        ("high_watermark", OffsetSpec.latest()),
    ):
        futures = admin.list_offsets(
            {TopicPartition(name, p.id): spec for p in parts}, request_timeout=settings().timeout
        )
        for tp, fut in futures.items():
            offsets[tp.partition][label] = result(fut, name).offset
    resource = ConfigResource(ResourceType.TOPIC, name)
    entries = result(
        admin.describe_configs([resource], request_timeout=settings().timeout)[resource], name
    )
    configs = [
        {
            "name": k,
            "value": None if e.is_sensitive else e.value,
            "source": config_source_name(e.source),
            "read_only": e.is_read_only,
        }
        for k, e in sorted(entries.items())
    ]
    partitions = [
        {
            "partition": p.id,
            "leader": p.leader.id if p.leader is not None else None,
            "replicas": [r.id for r in p.replicas],
            "isr": [r.id for r in p.isr],
            **offsets[p.id],
        }
        for p in parts
    ]
    return {
        "name": desc.name,
        "topic_id": str(desc.topic_id) if desc.topic_id else None,
        "internal": desc.is_internal,
        "partitions": partitions,
        "configs": configs,
    }


@topic.command()
@client_command
@click.argument("name")
@format_option
def describe(name: str, fmt: str) -> None:
    """Show a topic's partitions (leader, log start, high watermark) and configs with sources.

    \b
    Example:
      streamd topic describe orders
    """
    data = describe_data(name)

    def text() -> str:
        summary = render_fields(
            [
                ("name", data["name"]),
                ("topic-id", data["topic_id"]),
                ("internal", data["internal"]),
                ("partitions", len(data["partitions"])),
            ]
        )
        configs = table_dicts(data["configs"], ["name", "value", "source"])
        parts = table_dicts(
            data["partitions"], ["partition", "leader", "replicas", "log_start", "high_watermark"]
        )
        return "\n".join(
            [section("summary", summary), section("configs", configs), section("partitions", parts)]
        )

    emit(fmt, data, text)


@topic.command()
@client_command
@click.argument("names", nargs=-1, required=True)
@format_option
def delete(names: tuple[str, ...], fmt: str) -> None:
    """Delete one or more topics and all their data.

    \b
    Example:
      streamd topic delete orders payments
    """
    admin = admin_client()
    with guard():
        futures = admin.delete_topics(list(names), request_timeout=settings().timeout)
    rows, failures = [], []
    for name in names:
        try:
            result(futures[name], name)
            rows.append({"topic": name, "status": "OK"})
        except CliError as exc:
            failures.append(exc.format_message())
    emit(fmt, rows, lambda: table_dicts(rows, ["topic", "status"]) if rows else "")
    _fail_if_any(failures)


@topic.command(name="alter-config")
@client_command
@click.argument("name")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Set a config.")
@click.option(
    "--delete",
    "deletes",
    multiple=True,
    metavar="KEY",
    help="Remove an override (back to the default).",
)
@click.option("--dry-run", is_flag=True, help="Let the broker validate without applying.")
def alter_config(name: str, sets: tuple[str, ...], deletes: tuple[str, ...], dry_run: bool) -> None:
    """Set or remove topic config overrides (IncrementalAlterConfigs).

    \b
    Example:
      streamd topic alter-config orders --set retention.ms=3600000 --delete segment.bytes
    """
    if not sets and not deletes:
        raise CliError("nothing to change: give --set KEY=VALUE and/or --delete KEY")
    values = parse_key_values(sets, "--set")
    entries = [
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in values.items()
    ]
    entries += [
        ConfigEntry(k, None, incremental_operation=AlterConfigOpType.DELETE) for k in deletes
    ]
    resource = ConfigResource(ResourceType.TOPIC, name, incremental_configs=entries)
    admin = admin_client()
    with guard(name):
        futures = admin.incremental_alter_configs(
            [resource], validate_only=dry_run, request_timeout=settings().timeout
        )
    result(futures[resource], name)
    done = [f"set {k}={v}" for k, v in values.items()] + [f"deleted {k}" for k in deletes]
    prefix = "Validated (dry run)" if dry_run else "Altered"
    click.echo(f"{prefix} topic {name}: {', '.join(done)}")


def _partition_offsets(admin: Any, name: str) -> list[dict[str, int]]:
    """Each partition's high watermark (ListOffsets latest), in partition order."""
    ids = topic_partitions(admin, name)
    futures = admin.list_offsets(
        {TopicPartition(name, i): OffsetSpec.latest() for i in ids},
        request_timeout=settings().timeout,
    )
    ends = {tp.partition: result(fut, name).offset for tp, fut in futures.items()}
    return [{"partition": i, "high_watermark": ends[i]} for i in ids]


@topic.command()
@client_command
@click.argument("name")
@format_option
def promote(name: str, fmt: str) -> None:
    """Make the read replica NAME an ordinary writable topic of this broker.

    Use it when the origin broker is gone. The replica first re-reads the
    origin's archive (promotion fails, changing nothing, if it cannot); new
    records then get the offsets after the last archived one, this broker
    archives the topic to its own tiering.store from then on, and everything
    the origin archived is still served from the origin's store. On the wire
    this is an IncrementalAlterConfigs deleting remote.readreplica, as
    `kafka-configs --alter --delete-config remote.readreplica` sends it.

    \b
    Example:
      streamd topic promote orders
    """
    admin = admin_client()
    topic_partitions(admin, name)
    described = ConfigResource(ResourceType.TOPIC, name)
    entries = result(
        admin.describe_configs([described], request_timeout=settings().timeout)[described], name
    )
    current = entries.get("remote.readreplica")
    if current is None or not current.value:
        raise CliError(f"topic {name} is not a read replica (nothing to promote)")
    entry = ConfigEntry(
        "remote.readreplica", None, incremental_operation=AlterConfigOpType.DELETE
    )
    resource = ConfigResource(ResourceType.TOPIC, name, incremental_configs=[entry])
    with guard(name):
        futures = admin.incremental_alter_configs(
            [resource], request_timeout=settings().timeout
        )
    result(futures[resource], name)
    rows = [
        {"partition": p["partition"], "next_offset": p["high_watermark"]}
        for p in _partition_offsets(admin, name)
    ]
    emit(
        fmt,
        {"topic": name, "promoted": True, "partitions": rows},
        lambda: f"Topic {name} promoted: writable, archived by this broker from now on\n"
        + table_dicts(rows, ["partition", "next_offset"]),
    )


@topic.command(name="add-partitions")
@client_command
@click.argument("name")
@click.option(
    "--num", required=True, type=click.IntRange(min=1), help="The new total number of partitions."
)
def add_partitions(name: str, num: int) -> None:
    """Grow a topic to a total of NUM partitions.

    \b
    Example:
      streamd topic add-partitions orders --num 6
    """
    admin = admin_client()
    current = len(topic_partitions(admin, name))
    if num <= current:
        raise CliError(
            f"topic {name} already has {current} partitions; --num is the new total "
            f"and must be greater"
        )
    with guard(name):
        futures = admin.create_partitions(
            [NewPartitions(name, num)], request_timeout=settings().timeout
        )
    result(futures[name], name)
    click.echo(f"Topic {name} now has {num} partitions (was {current})")


def _render_document(data: Any) -> str:
    """Scalars as aligned fields, nested objects flattened with dots, lists of objects as
    tables (one per list, titled by its key)."""
    fields: list[tuple[str, Any]] = []
    tables: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k in value:
                walk(f"{prefix}.{k}" if prefix else str(k), value[k])
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            columns: list[str] = []
            for item in value:
                columns += [
                    k for k in item if k not in columns and not isinstance(item[k], dict | list)
                ]
            rows = [[item.get(c) for c in columns] for item in value]
            tables.append(
                section(
                    prefix or "items", render_table([c.replace("_", "-") for c in columns], rows)
                )
            )
        else:
            fields.append((prefix, value))

    walk("", data)
    out = [section("summary", render_fields(fields))] if fields else []
    return "\n".join(out + tables)


STORAGE_COLUMNS = [
    "partition",
    "mode",
    "remote_start_offset",
    "local_start_offset",
    "last_uploaded_offset",
    "high_watermark",
    "local_bytes",
    "remote_bytes",
    "remote_segments",
    "pending_uploads",
    "last_upload",
    "origin_last_offset",
    "lag_offsets",
    "inherited_start_offset",
    "inherited_last_offset",
    "last_sync",
    "errors",
]


def _utc(ms: Any) -> str | None:
    if not isinstance(ms, int) or ms <= 0:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_storage(data: Any) -> str:
    """The main per-partition columns as one table, errors below it; the full document is
    what ``--format json`` prints. Shapes other than ``{..., "partitions": [{...}]}`` fall
    back to the generic rendering."""
    parts = data.get("partitions") if isinstance(data, dict) else None
    if not (isinstance(parts, list) and parts and all(isinstance(p, dict) for p in parts)):
        return _render_document(data)
    rows = [
        {
            **p,
            "last_upload": _utc(p.get("last_upload_ms")),
            "last_sync": _utc(p.get("last_sync_ms")),
        }
        for p in parts
    ]
    columns = [c for c in STORAGE_COLUMNS if any(c in r for r in rows)]
    for column, source in (("last_upload", "last_upload_ms"), ("last_sync", "last_sync_ms")):
        if source not in parts[0]:
            columns = [c for c in columns if c != column]
    summary = [(k, v) for k, v in data.items() if not isinstance(v, dict | list)]
    out = [
        section("summary", render_fields(summary)),
        section("partitions", table_dicts(rows, columns)),
    ]
    failing = [r for r in rows if r.get("last_error")]
    if failing:
        out.append(section("errors", table_dicts(failing, ["partition", "errors", "last_error"])))
    return "\n".join(out)


@topic.command(name="describe-storage")
@client_command
@click.argument("name")
@format_option
def describe_storage(name: str, fmt: str) -> None:
    """Show a topic's tiered storage from the admin API: local and remote offsets, sizes,
    last upload, pending uploads and errors (streamd only).

    \b
    Example:
      streamd --admin-url http://127.0.0.1:9644 topic describe-storage orders
    """
    try:
        data = admin_get(f"/v1/topics/{name}/storage")
    except AdminHTTPError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        detail = str(body.get("error", exc.body))
        if exc.status == 404 and detail.startswith("no such endpoint"):
            raise CliError(
                f"the admin API at {settings().admin_url} does not serve topic storage "
                "(this broker has no tiered storage endpoint)"
            ) from None
        if exc.status == 404:
            raise CliError(detail if "topic" in detail else f"unknown topic {name}") from None
        raise
    emit(fmt, data, lambda: render_storage(data))
