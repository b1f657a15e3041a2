"""``streamd topic``: create, list, describe, delete, alter-config, add-partitions,
trim-prefix and describe-storage; ``produce`` and ``consume`` live in
:mod:`streamd.cli.records`.

``list`` and ``delete`` take names or, with ``-r``, regular expressions (searched anywhere in
the name, as rpk does; anchor with ``^...$``). Topic ids are printed in Kafka's own form
(URL-safe base64 of the 16 bytes, no padding), as the admin API and console print them.

``describe`` shows each partition's log start and high watermark from ListOffsets (earliest /
latest), so on streamd the log start includes archived data. ``describe-storage`` is streamd's
own: it renders whatever ``GET /v1/topics/{topic}/storage`` returns, scalars as fields and lists
of objects as tables, so new fields in the admin API show up without a CLI change.
"""

from __future__ import annotations

import re
import sys
import time
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
    human_bytes,
    kafka_topic_id,
    render_fields,
    render_table,
    result,
    section,
    settings,
    table_dicts,
    topic_partitions,
)
from streamd.cli.specs import OFFSET_HELP, parse_key_values, parse_offset, parse_partitions


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


def _matching(names: list[str], patterns: tuple[str, ...], regex: bool) -> list[str]:
    if not patterns:
        return names
    if not regex:
        return [n for n in names if n in patterns]
    try:
        compiled = [re.compile(p) for p in patterns]
    except re.error as exc:
        raise CliError(f"invalid regular expression: {exc}") from None
    return [n for n in names if any(c.search(n) for c in compiled)]


@topic.command(name="list")
@client_command
@click.argument("patterns", nargs=-1)
@click.option("-r", "--regex", is_flag=True, help="PATTERNS are regular expressions.")
@click.option("-i", "--internal", is_flag=True, help="Include internal topics (__*).")
@format_option
def list_(patterns: tuple[str, ...], regex: bool, internal: bool, fmt: str) -> None:
    """List topics with their partition and replica counts (all, or those named or matching).

    \b
    Examples:
      streamd topic list --format json
      streamd topic list -r '^orders-' 'payments$'
    """
    admin = admin_client()
    with guard():
        md = admin.list_topics(timeout=settings().timeout)
    rows = []
    for name in _matching(sorted(md.topics), patterns, regex):
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
        "topic_id": kafka_topic_id(desc.topic_id) if desc.topic_id else None,
        "internal": desc.is_internal,
        "partitions": partitions,
        "configs": configs,
    }


@topic.command()
@client_command
@click.argument("names", metavar="TOPIC...", nargs=-1, required=True)
@click.option("-s", "--print-summary", "summary", is_flag=True, help="Print the summary.")
@click.option("-c", "--print-configs", "configs", is_flag=True, help="Print the configs.")
@click.option("-p", "--print-partitions", "partitions", is_flag=True,
              help="Print the partitions.")
@click.option("-a", "--print-all", "all_", is_flag=True, help="Print every section (default).")
@format_option
def describe(
    names: tuple[str, ...], summary: bool, configs: bool, partitions: bool, all_: bool, fmt: str
) -> None:
    """Show topics' summary, configs with sources, and partitions (leader, log start, high
    watermark); -s/-c/-p pick sections (default: all).

    \b
    Examples:
      streamd topic describe orders
      streamd topic describe orders payments -p
    """
    wanted = {"summary": summary, "configs": configs, "partitions": partitions}
    if all_ or not any(wanted.values()):
        wanted = dict.fromkeys(wanted, True)
    data = [describe_data(name) for name in dict.fromkeys(names)]

    def text() -> str:
        out = []
        for d in data:
            if len(data) > 1:
                out.append(f"=== {d['name']} ===")
            if wanted["summary"]:
                fields = render_fields(
                    [
                        ("name", d["name"]),
                        ("topic-id", d["topic_id"]),
                        ("internal", d["internal"]),
                        ("partitions", len(d["partitions"])),
                    ]
                )
                out.append(section("summary", fields))
            if wanted["configs"]:
                configs_table = table_dicts(d["configs"], ["name", "value", "source"])
                out.append(section("configs", configs_table))
            if wanted["partitions"]:
                out.append(section("partitions", table_dicts(
                    d["partitions"],
                    ["partition", "leader", "replicas", "log_start", "high_watermark"],
                )))
        return "\n".join(out)

    shown = [
        {k: v for k, v in d.items() if k not in ("configs", "partitions") or wanted[k]}
        for d in data
    ]
    emit(fmt, shown[0] if len(shown) == 1 else shown, text)


@topic.command()
@client_command
@click.argument("names", metavar="TOPIC...", nargs=-1, required=True)
@click.option("-r", "--regex", is_flag=True,
              help="Delete every topic matching these regular expressions (not internal ones).")
@format_option
def delete(names: tuple[str, ...], regex: bool, fmt: str) -> None:
    """Delete one or more topics and all their data.

    \b
    Examples:
      streamd topic delete orders payments
      streamd topic delete -r '^tmp-'
    """
    admin = admin_client()
    if regex:
        with guard():
            md = admin.list_topics(timeout=settings().timeout)
        public = sorted(t for t in md.topics if not t.startswith("__"))
        names = tuple(_matching(public, names, True))
        if not names:
            emit(fmt, [], lambda: "no topic matches")
            return
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
@click.option("--append", "appends", multiple=True, metavar="KEY=VALUE",
              help="Add VALUE to a list config (e.g. cleanup.policy=compact).")
@click.option("--subtract", "subtracts", multiple=True, metavar="KEY=VALUE",
              help="Remove VALUE from a list config.")
@click.option("--dry-run", is_flag=True, help="Let the broker validate without applying.")
def alter_config(
    name: str,
    sets: tuple[str, ...],
    deletes: tuple[str, ...],
    appends: tuple[str, ...],
    subtracts: tuple[str, ...],
    dry_run: bool,
) -> None:
    """Set, remove, append to or subtract from topic config overrides
    (IncrementalAlterConfigs SET / DELETE / APPEND / SUBTRACT).

    \b
    Examples:
      streamd topic alter-config orders --set retention.ms=3600000 --delete segment.bytes
      streamd topic alter-config orders --append cleanup.policy=compact
    """
    if not (sets or deletes or appends or subtracts):
        raise CliError(
            "nothing to change: give --set KEY=VALUE, --delete KEY, --append KEY=VALUE "
            "or --subtract KEY=VALUE"
        )
    values = parse_key_values(sets, "--set")
    appended = parse_key_values(appends, "--append")
    subtracted = parse_key_values(subtracts, "--subtract")
    entries = [
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in values.items()
    ]
    entries += [
        ConfigEntry(k, None, incremental_operation=AlterConfigOpType.DELETE) for k in deletes
    ]
    entries += [
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.APPEND)
        for k, v in appended.items()
    ]
    entries += [
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SUBTRACT)
        for k, v in subtracted.items()
    ]
    resource = ConfigResource(ResourceType.TOPIC, name, incremental_configs=entries)
    admin = admin_client()
    with guard(name):
        futures = admin.incremental_alter_configs(
            [resource], validate_only=dry_run, request_timeout=settings().timeout
        )
    result(futures[resource], name)
    done = [f"set {k}={v}" for k, v in values.items()] + [f"deleted {k}" for k in deletes]
    done += [f"appended {v} to {k}" for k, v in appended.items()]
    done += [f"subtracted {v} from {k}" for k, v in subtracted.items()]
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


@topic.command(name="trim-prefix")
@client_command
@click.argument("name")
@click.option("-o", "--offset", "offset_spec", required=True, metavar="OFFSET",
              help=f"Delete every record before this offset ({OFFSET_HELP}).")
@click.option("-p", "--partitions", "partition_args", multiple=True, metavar="P[,P...]",
              help="Only these partitions (default: all).")
@click.option("--no-confirm", is_flag=True, help="Do not ask before deleting.")
@format_option
def trim_prefix(
    name: str, offset_spec: str, partition_args: tuple[str, ...], no_confirm: bool, fmt: str
) -> None:
    """Delete the records before an offset (DeleteRecords); the log start moves there.

    \b
    Examples:
      streamd topic trim-prefix orders -o 1000 -p 0 --no-confirm
      streamd topic trim-prefix orders -o @-7d --no-confirm
    """
    from confluent_kafka.admin import OffsetSpec as KafkaOffset

    spec = parse_offset(offset_spec)
    admin = admin_client()
    parts = topic_partitions(admin, name)
    chosen = parse_partitions(partition_args) or parts
    missing = [p for p in chosen if p not in parts]
    if missing:
        raise CliError(f"topic {name} has no partition {missing[0]} (it has {len(parts)})")

    def offsets(kind: Any) -> dict[int, int]:
        futures = admin.list_offsets(
            {TopicPartition(name, p): kind for p in chosen}, request_timeout=settings().timeout
        )
        return {tp.partition: result(f, name).offset for tp, f in futures.items()}

    low, high = offsets(KafkaOffset.earliest()), offsets(KafkaOffset.latest())
    if spec.kind == "timestamp":
        stamps = offsets(KafkaOffset.for_timestamp(spec.value))
        targets = {p: stamps[p] if stamps[p] >= 0 else high[p] for p in chosen}
    else:
        targets = {p: spec.resolve(low[p], high[p]) or 0 for p in chosen}
    if not no_confirm and not click.confirm(
        f"Delete records of {name} before "
        + ", ".join(f"{p}:{o}" for p, o in sorted(targets.items()))
        + "?",
        err=True,
    ):
        raise CliError("aborted: nothing deleted")
    with guard(name):
        futures = admin.delete_records(
            [TopicPartition(name, p, o) for p, o in sorted(targets.items())],
            request_timeout=settings().timeout,
        )
    rows, failures = [], []
    for tp, fut in futures.items():
        try:
            done = result(fut, name)
            rows.append(
                {"topic": name, "partition": tp.partition, "new_start_offset": done.low_watermark}
            )
        except CliError as exc:
            failures.append(f"partition {tp.partition}: {exc.format_message()}")
    rows.sort(key=lambda r: r["partition"])
    emit(fmt, rows, lambda: table_dicts(rows, ["topic", "partition", "new_start_offset"]))
    _fail_if_any(failures)


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
    "uploads_waiting_for_lso",
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
            **{k: human_bytes(p[k]) for k in ("local_bytes", "remote_bytes")
               if isinstance(p.get(k), int)},
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


def run_watch(interval: float, render: Any) -> None:
    """Re-render every ``interval`` seconds until Ctrl-C (exit 0); on a terminal the screen
    is cleared between renders, elsewhere renders are separated by a blank line."""
    try:
        while True:
            text = render()
            if sys.stdout.isatty():
                click.clear()
            click.echo(f"{time.strftime('%H:%M:%S')} (every {interval:g}s, Ctrl-C to stop)")
            click.echo(text.rstrip("\n") + "\n", nl=True)
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        pass


def watch_options(fn: Any) -> Any:
    fn = click.option("--interval", default=2.0, show_default=True,
                      type=click.FloatRange(min=0.1), help="Seconds between refreshes.")(fn)
    return click.option("-w", "--watch", is_flag=True, help="Refresh until Ctrl-C.")(fn)


@topic.command(name="describe-storage")
@client_command
@click.argument("name")
@watch_options
@format_option
def describe_storage(name: str, watch: bool, interval: float, fmt: str) -> None:
    """Show a topic's tiered storage from the admin API: local and remote offsets, sizes,
    last upload, pending uploads and errors (streamd only); --watch refreshes it.

    \b
    Examples:
      streamd --admin-url http://127.0.0.1:9644 topic describe-storage orders
      streamd topic describe-storage orders --watch --interval 5
    """
    if watch:
        run_watch(interval, lambda: _storage_text(name, fmt))
        return
    data = _storage_doc(name)
    emit(fmt, data, lambda: render_storage(data))


def _storage_text(name: str, fmt: str) -> str:
    import io
    from contextlib import redirect_stdout

    data = _storage_doc(name)
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        emit(fmt, data, lambda: render_storage(data))
    return buffer.getvalue()


def _storage_doc(name: str) -> Any:
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
    return data
