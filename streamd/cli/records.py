"""``streamd topic produce`` and ``streamd topic consume``.

Produce sends one record per input line (stdin or ``--file``; the trailing newline is not part
of the value), with librdkafka's Java-compatible ``murmur2_random`` partitioner so keyed records
land where Java clients would put them. Each acknowledgement is reported as it arrives; a bulk
``--file`` produce shows a progress bar on stderr when stderr is a terminal.

Consume without ``-g`` assigns partitions manually (no group is joined, nothing is committed)
and resolves ``-o`` per partition against its watermarks or, for ``@timestamp``, ListOffsets.
With ``-g`` it joins the group: the committed offsets win and ``-o start|end`` only says where
to begin without one; the offsets of exactly the records printed are committed on exit, so
``-n 10`` advances the group by ten. Ctrl-C (or SIGTERM) stops consuming cleanly with exit
code 0 (as rpk).
Keys, values and header values are shown as UTF-8 (invalid bytes replaced); in JSON the headers
are one object (a repeated header key keeps its last value).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from streamd.cli.common import (
    CliError,
    admin_client,
    client_command,
    consumer,
    describe_kafka_error,
    format_option,
    guard,
    producer,
    settings,
    topic_partitions,
)
from streamd.cli.specs import (
    OFFSET_HELP,
    InputTemplate,
    OffsetSpec,
    OutputTemplate,
    Record,
    parse_key_values,
    parse_offset,
    parse_partitions,
    record_json,
)

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
PLACEHOLDER_GROUP = "streamd-cli"
_FATAL_CONSUME = {
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError._AUTHENTICATION,
}


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    for raw in stream:
        if raw.endswith(b"\r\n"):
            yield raw[:-2]
        elif raw.endswith(b"\n"):
            yield raw[:-1]
        else:
            yield raw


class _Reporter:
    """Delivery callbacks: print each acknowledgement and remember the first failure."""

    def __init__(self, fmt: str, quiet: bool) -> None:
        self.fmt, self.quiet = fmt, quiet
        self.acked = 0
        self.failed = 0
        self.first_error: str | None = None
        self.first_code: int | None = None

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed += 1
            if self.first_error is None:
                self.first_error = describe_kafka_error(err, msg.topic() or "")
                self.first_code = err.code()
            return
        self.acked += 1
        if self.quiet:
            return
        if self.fmt == "json":
            click.echo(
                json.dumps(
                    {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()}
                )
            )
        else:
            click.echo(f"Produced to partition {msg.partition()} at offset {msg.offset()}")


@click.command()
@client_command
@click.argument("name")
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read records from FILE (one per line) instead of stdin; shows progress.",
)
@click.option("-k", "--key", help="Key for every record.")
@click.option(
    "-H",
    "--header",
    "headers",
    multiple=True,
    metavar="KEY=VALUE",
    help="Header for every record (repeatable).",
)
@click.option(
    "-f",
    "--template",
    metavar="TEMPLATE",
    help="Split each line into key and value, e.g. '%k %v' or '%k:%v'.",
)
@click.option(
    "-p",
    "--partition",
    type=click.IntRange(min=0),
    help="Partition to write to (default: by key, else spread).",
)
@click.option("-z", "--compression", type=click.Choice(CODECS), default="none", show_default=True)
@click.option(
    "--acks", type=click.Choice(["0", "1", "all", "-1"]), default="all", show_default=True
)
@click.option("-q", "--quiet", is_flag=True, help="Do not report each record's offset.")
@format_option(help="How acknowledgements are reported (json: one per line).")
def produce(
    name: str,
    path: Path | None,
    key: str | None,
    headers: tuple[str, ...],
    template: str | None,
    partition: int | None,
    compression: str,
    acks: str,
    quiet: bool,
    fmt: str,
) -> None:
    """Produce one record per line of stdin (or --file) and report their offsets.

    \b
    Examples:
      echo 'hello' | streamd topic produce orders
      printf 'k1 v1\\nk2 v2\\n' | streamd topic produce orders -f '%k %v'
      streamd topic produce orders --file events.txt -z zstd -H source=import -q
    """
    parser = InputTemplate(template) if template else None
    if parser is not None and parser.has_key and key is not None:
        raise CliError("give the key either with -k or with %k in -f, not both")
    header_list = list(parse_key_values(headers, "header").items())
    admin = admin_client()
    parts = topic_partitions(admin, name)
    if partition is not None and partition not in parts:
        raise CliError(f"topic {name} has no partition {partition} (it has {len(parts)})")
    prod = producer(
        **{
            "acks": acks,
            "compression.type": compression,
            "partitioner": "murmur2_random",
            "enable.idempotence": False,
            "linger.ms": 5,
            "message.timeout.ms": int(max(settings().timeout, 30) * 1000),
        }
    )
    report = _Reporter(fmt, quiet)
    stream: IO[bytes] = path.open("rb") if path is not None else sys.stdin.buffer
    progress = _progress(path) if path is not None else None
    sent = 0
    try:
        if progress is not None:
            progress.start()
        for line in _lines(stream):
            rec_key: str | bytes | None = key
            value: str | bytes = line
            if parser is not None:
                text_key, text_value = parser.parse(line.decode("utf-8", "surrogateescape"))
                value = text_value.encode("utf-8", "surrogateescape")
                if parser.has_key:
                    rec_key = (text_key or "").encode("utf-8", "surrogateescape")
            kwargs: dict[str, Any] = {"key": rec_key, "value": value, "on_delivery": report}
            if header_list:
                kwargs["headers"] = header_list
            if partition is not None:
                kwargs["partition"] = partition
            _send(prod, name, kwargs)
            sent += 1
            if progress is not None:
                progress.advance(len(line) + 1)
        _flush(prod, sent, report)
    except KeyboardInterrupt:
        prod.flush(5)
        click.echo(f"interrupted: {report.acked} records acknowledged", err=True)
        sys.exit(130)
    finally:
        if progress is not None:
            progress.stop()
        if path is not None:
            stream.close()
    if report.failed:
        origin = _replica_origin(admin, name) if report.first_code == TOPIC_EXCEPTION else None
        if origin:
            raise CliError(
                f"topic {name} is a read replica of {origin}: it is read-only (produce to the "
                f"origin broker, or promote it with `streamd topic promote {name}`)"
            )
        raise CliError(f"{report.failed} of {sent} records failed: {report.first_error}")
    if path is not None or quiet:
        click.echo(f"Produced {report.acked} records to {name}", err=True)


TOPIC_EXCEPTION = KafkaError.TOPIC_EXCEPTION


def _replica_origin(admin: Any, name: str) -> str | None:
    """The origin store of a read replica (``remote.readreplica``), to explain why Produce
    answered INVALID_TOPIC_EXCEPTION (librdkafka does not show the broker's message)."""
    from confluent_kafka.admin import ConfigResource, ResourceType

    resource = ConfigResource(ResourceType.TOPIC, name)
    try:
        entries = admin.describe_configs([resource])[resource].result(settings().timeout)
    except Exception:
        return None
    entry = entries.get("remote.readreplica")
    return entry.value if entry is not None and entry.value else None


def _send(prod: Any, topic: str, kwargs: dict[str, Any]) -> None:
    while True:
        try:
            prod.produce(topic, **kwargs)
            prod.poll(0)
            return
        except BufferError:
            prod.poll(0.1)
        except KafkaException as exc:
            raise CliError(describe_kafka_error(exc, topic)) from None


def _flush(prod: Any, sent: int, report: _Reporter) -> None:
    remaining = prod.flush(settings().timeout + 30)
    if remaining:
        raise CliError(
            f"{remaining} of {sent} records were not acknowledged in time by {settings().brokers}"
        )


def _progress(path: Path) -> Any:
    """A byte-based progress bar on stderr, or None when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TransferSpeedColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        "[progress.percentage]{task.percentage:>3.0f}%",
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task(f"producing {path.name}", total=path.stat().st_size)

    class _Bar:
        def start(self) -> None:
            bar.start()

        def stop(self) -> None:
            bar.stop()

        def advance(self, n: int) -> None:
            bar.advance(task, n)

    return _Bar()


@click.command()
@client_command
@click.argument("name")
@click.option(
    "-o",
    "--offset",
    "offset_spec",
    default="start",
    show_default=True,
    help=f"Where to start: {OFFSET_HELP}.",
)
@click.option(
    "-p",
    "--partitions",
    "partition_args",
    multiple=True,
    metavar="P[,P...]",
    help="Only these partitions (default: all).",
)
@click.option("-n", "--num", type=click.IntRange(min=1), help="Stop after NUM records.")
@click.option("-g", "--group", help="Consume as a member of GROUP and commit what is printed.")
@click.option(
    "-e",
    "--exit-at-end",
    is_flag=True,
    help="Stop at the end of every partition instead of waiting for more.",
)
@click.option(
    "-f",
    "--template",
    metavar="TEMPLATE",
    help="Output template: %k key, %v value, %o offset, %p partition, "
    "%t timestamp ms, %h headers, %T topic (default '%v').",
)
@format_option(help="json: one object per record and line.")
def consume(
    name: str,
    offset_spec: str,
    partition_args: tuple[str, ...],
    num: int | None,
    group: str | None,
    exit_at_end: bool,
    template: str | None,
    fmt: str,
) -> None:
    """Print records of a topic until -n records, the end (-e) or Ctrl-C.

    \b
    Examples:
      streamd topic consume orders -n 10 -f '%p/%o %k=%v'
      streamd topic consume orders -o @2024-01-01T00:00:00Z --format json -e
      streamd topic consume orders -o -5 -p 0,1
      streamd topic consume orders -g billing
    """
    if template is not None and fmt == "json":
        raise CliError("give either -f TEMPLATE or --format json, not both")
    render = OutputTemplate(template if template is not None else "%v")
    spec = parse_offset(offset_spec)
    chosen = parse_partitions(partition_args)
    if group is not None and chosen:
        raise CliError("-p cannot be combined with -g: the group assigns partitions")
    if group is not None and spec.kind not in ("start", "end"):
        raise CliError(
            "with -g, -o must be start or end (it applies only where the group has no "
            "committed offset; move a group with `streamd group seek`)"
        )
    admin = admin_client()
    parts = topic_partitions(admin, name)
    missing = [p for p in chosen if p not in parts]
    if missing:
        raise CliError(f"topic {name} has no partition {missing[0]} (it has {len(parts)})")

    def write(rec: Record) -> None:
        text = json.dumps(record_json(rec)) + "\n" if fmt == "json" else render.render(rec)
        sys.stdout.write(text)

    signal.signal(signal.SIGTERM, _interrupt)
    session = _Session(name, group, exit_at_end)
    if group is None:
        session.assign(spec, chosen or parts)
    else:
        session.subscribe("earliest" if spec.kind == "start" else "latest")
    try:
        session.run(num, write)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly; point stdout at /dev/null so the
        # interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        session.close()


def _interrupt(_signum: int, _frame: Any) -> None:
    """SIGTERM stops consuming like Ctrl-C: the printed records' offsets still get committed."""
    raise KeyboardInterrupt


class _Session:
    def __init__(self, topic: str, group: str | None, exit_at_end: bool) -> None:
        self.topic, self.group, self.exit_at_end = topic, group, exit_at_end
        self.assigned: set[int] = set()
        self.at_end: set[int] = set()
        self.stored = False
        self.consumer: Any = None

    def assign(self, spec: OffsetSpec, partitions: list[int]) -> None:
        c = self.consumer = consumer(
            **{
                "group.id": PLACEHOLDER_GROUP,
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            }
        )
        timeout = settings().timeout
        starts: dict[int, int] = {}
        with guard(self.topic):
            marks = {
                p: c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=timeout)
                for p in partitions
            }
            if spec.kind == "timestamp":
                found = c.offsets_for_times(
                    [TopicPartition(self.topic, p, spec.value) for p in partitions], timeout=timeout
                )
                for tp in found:
                    starts[tp.partition] = tp.offset if tp.offset >= 0 else marks[tp.partition][1]
            else:
                for p, (low, high) in marks.items():
                    resolved = spec.resolve(low, high)
                    starts[p] = high if resolved is None else resolved
        self.assigned = set(partitions)
        self.at_end = {p for p in partitions if starts[p] >= marks[p][1]}
        c.assign([TopicPartition(self.topic, p, starts[p]) for p in partitions])

    def subscribe(self, reset: str) -> None:
        c = self.consumer = consumer(
            **{
                "group.id": self.group,
                "enable.auto.commit": True,
                "enable.auto.offset.store": False,
                "auto.commit.interval.ms": 1000,
                "enable.partition.eof": True,
                "auto.offset.reset": reset,
            }
        )

        def on_assign(_c: Any, tps: list[TopicPartition]) -> None:
            self.assigned |= {tp.partition for tp in tps}

        def on_revoke(_c: Any, tps: list[TopicPartition]) -> None:
            self.assigned -= {tp.partition for tp in tps}
            self.at_end -= {tp.partition for tp in tps}

        with guard(self.topic):
            c.subscribe([self.topic], on_assign=on_assign, on_revoke=on_revoke)

    def done(self) -> bool:
        return self.exit_at_end and bool(self.assigned) and self.assigned <= self.at_end

    def run(self, num: int | None, write: Any) -> None:
        count = 0
        c = self.consumer
        while not self.done() and (num is None or count < num):
            batch = c.consume(num_messages=min(500, num - count) if num else 500, timeout=0.5)
            for msg in batch:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        self.at_end.add(msg.partition())
                        continue
                    if err.fatal() or err.code() in _FATAL_CONSUME:
                        raise CliError(describe_kafka_error(err, self.topic))
                    continue
                self.at_end.discard(msg.partition())
                ts = msg.timestamp()[1]
                write(
                    Record(
                        topic=msg.topic(),
                        partition=msg.partition(),
                        offset=msg.offset(),
                        timestamp=ts,
                        key=msg.key(),
                        value=msg.value(),
                        headers=tuple(msg.headers() or ()),
                    )
                )
                if self.group is not None:
                    c.store_offsets(message=msg)
                    self.stored = True
                count += 1
            sys.stdout.flush()

    def close(self) -> None:
        c = self.consumer
        if c is None:
            return
        try:
            if self.stored:
                c.commit(asynchronous=False)
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args else None
            if code != KafkaError._NO_OFFSET:
                click.echo(
                    f"warning: commit failed: {describe_kafka_error(exc, self.group or '')}",
                    err=True,
                )
        finally:
            c.close()
