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
Templates use rpk's verbs (see :mod:`streamd.cli.specs`): ``%t`` is the topic. In
``--format json`` keys, values and header values are UTF-8 text, or base64 (marked with an
``*_encoding`` field) when they are not valid UTF-8 (``--json-binary`` picks always-base64 or
always-text); headers are an array, so repeated keys keep every value. ``-o A:B`` ranges stop at
B (exclusive) and exit when every partition got there.

``--read-committed`` reads with isolation level read_committed (only committed transactional
records, up to the last stable offset); the default is read_uncommitted, as rpk's.
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
    OffsetRange,
    OutputTemplate,
    Record,
    SpecError,
    parse_header_pairs,
    parse_offset_range,
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


def _records(stream: IO[bytes], lines_per_record: int) -> Iterator[tuple[bytes, int]]:
    """Input records of ``lines_per_record`` lines each, joined by newlines, with the number
    of input bytes they took (for the progress bar)."""
    if lines_per_record == 1:
        for line in _lines(stream):
            yield line, len(line) + 1
        return
    group: list[bytes] = []
    for line in _lines(stream):
        group.append(line)
        if len(group) == lines_per_record:
            yield b"\n".join(group), sum(len(x) + 1 for x in group)
            group = []
    if group and any(group):
        raise CliError(
            f"the input ends inside a record: the template reads {lines_per_record} lines per "
            f"record, the last record has {len(group)}"
        )


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
    help="Split input into records: %k key, %v value, %t topic, %p partition, %h headers "
    "(k=v,...), e.g. '%k %v' or '%t:%k:%v'; \\n inside makes a record span lines.",
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
      printf 'k1\\nv1\\n' | streamd topic produce orders -f '%k\\n%v\\n'
      streamd topic produce orders --file events.txt -z zstd -H source=import -q
    """
    parser = InputTemplate(template) if template else None
    if parser is not None and parser.has_key and key is not None:
        raise CliError("give the key either with -k or with %k in -f, not both")
    if parser is not None and "partition" in parser.names and partition is not None:
        raise CliError("give the partition either with -p or with %p in -f, not both")
    header_list = parse_header_pairs(headers)
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
        for line, consumed in _records(stream, parser.lines if parser is not None else 1):
            rec_key: str | bytes | None = key
            value: str | bytes = line
            rec_topic, rec_partition, rec_headers = name, partition, list(header_list)
            if parser is not None:
                parsed = parser.parse_record(line.decode("utf-8", "surrogateescape"))
                value = _raw(parsed.value)
                if parser.has_key:
                    rec_key = _raw(parsed.key or "")
                rec_topic = parsed.topic or name
                if parsed.partition is not None:
                    rec_partition = parsed.partition
                rec_headers += [(k, v) for k, v in parsed.headers]
            kwargs: dict[str, Any] = {"key": rec_key, "value": value, "on_delivery": report}
            if rec_headers:
                kwargs["headers"] = [(k, _raw(v)) for k, v in rec_headers]
            if rec_partition is not None:
                kwargs["partition"] = rec_partition
            _send(prod, rec_topic, kwargs)
            sent += 1
            if progress is not None:
                progress.advance(consumed)
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


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


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
    help=f"Where to start: {OFFSET_HELP}; or a range A:B (B exclusive: an offset, end, or a "
    "time after @), e.g. 10:20, :end, @-1h:end.",
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
    help="Output template (rpk verbs): %t topic, %k key, %v value, %h headers, %p partition, "
    "%o offset, %d timestamp ms, %e leader epoch, %x/%y producer id/epoch, %T %K %V %H "
    "lengths/count; %v{hex} %k{base64} encode (default '%v').",
)
@click.option(
    "--read-committed",
    is_flag=True,
    help="Read only committed transactional records (isolation level read_committed).",
)
@click.option(
    "--json-binary",
    type=click.Choice(["auto", "base64", "text"]),
    default="auto",
    show_default=True,
    help="--format json: keys/values/headers that are not UTF-8 as base64 (auto), always "
    "base64, or always text with invalid bytes replaced.",
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
    read_committed: bool,
    json_binary: str,
    fmt: str,
) -> None:
    """Print records of a topic until -n records, the end (-e) or Ctrl-C.

    \b
    Examples:
      streamd topic consume orders -n 10 -f '%p/%o %k=%v'
      streamd topic consume orders -o @2024-01-01T00:00:00Z --format json -e
      streamd topic consume orders -o -5 -p 0,1
      streamd topic consume orders -o 100:200 -f '%p/%o %k{hex} %v'
      streamd topic consume orders -o :end --format json
      streamd topic consume orders -g billing --read-committed
    """
    if template is not None and fmt != "text":
        raise CliError(f"give either -f TEMPLATE or --format {fmt}, not both")
    render = OutputTemplate(template if template is not None else "%v")
    if render.fields & {"producer_id", "producer_epoch"}:
        raise CliError(
            "%x and %y (producer id and epoch) are not available from this client "
            "(librdkafka does not expose them per record)"
        )
    try:
        offsets = parse_offset_range(offset_spec)
    except SpecError as exc:
        raise CliError(str(exc)) from None
    spec = offsets.start
    chosen = parse_partitions(partition_args)
    if group is not None and chosen:
        raise CliError("-p cannot be combined with -g: the group assigns partitions")
    if group is not None and (spec.kind not in ("start", "end") or offsets.bounded):
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
        if fmt == "json":
            text = json.dumps(record_json(rec, json_binary)) + "\n"
        elif fmt == "yaml":
            import yaml

            text = "---\n" + yaml.safe_dump(record_json(rec, json_binary), sort_keys=False)
        else:
            text = render.render(rec)
        sys.stdout.write(text)

    signal.signal(signal.SIGTERM, _interrupt)
    isolation = "read_committed" if read_committed else "read_uncommitted"
    session = _Session(name, group, exit_at_end, isolation)
    if group is None:
        session.assign(offsets, chosen or parts)
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
    def __init__(self, topic: str, group: str | None, exit_at_end: bool, isolation: str) -> None:
        self.topic, self.group, self.exit_at_end = topic, group, exit_at_end
        self.isolation = isolation
        self.assigned: set[int] = set()
        self.at_end: set[int] = set()
        self.stops: dict[int, int] = {}
        """partition -> offset to stop before (ranges); a partition there is done."""
        self.stored = False
        self.consumer: Any = None

    def assign(self, offsets: OffsetRange, partitions: list[int]) -> None:
        spec = offsets.start
        c = self.consumer = consumer(
            **{
                "group.id": PLACEHOLDER_GROUP,
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "isolation.level": self.isolation,
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
            if offsets.end_kind == "end":
                self.stops = {p: marks[p][1] for p in partitions}
            elif offsets.end_kind == "exact":
                self.stops = {p: offsets.end_value for p in partitions}
            elif offsets.end_kind == "timestamp":
                found = c.offsets_for_times(
                    [TopicPartition(self.topic, p, offsets.end_value) for p in partitions],
                    timeout=timeout,
                )
                self.stops = {
                    tp.partition: tp.offset if tp.offset >= 0 else marks[tp.partition][1]
                    for tp in found
                }
        if self.stops:
            self.exit_at_end = True
        self.assigned = set(partitions)
        self.at_end = {
            p for p in partitions
            if starts[p] >= marks[p][1] or starts[p] >= self.stops.get(p, starts[p] + 1)
        }
        # A partition already at its end is read too unless the command exits there: records
        # may still arrive (consume -n N on a topic that is empty now).
        live = [p for p in partitions if p not in self.at_end] if self.exit_at_end else partitions
        c.assign([TopicPartition(self.topic, p, starts[p]) for p in live])
        if not live:
            self.assigned = set(partitions)

    def subscribe(self, reset: str) -> None:
        c = self.consumer = consumer(
            **{
                "group.id": self.group,
                "enable.auto.commit": True,
                "enable.auto.offset.store": False,
                "auto.commit.interval.ms": 1000,
                "enable.partition.eof": True,
                "auto.offset.reset": reset,
                "isolation.level": self.isolation,
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
                partition = msg.partition()
                stop = self.stops.get(partition)
                if stop is not None and msg.offset() >= stop:
                    self.at_end.add(partition)
                    continue
                self.at_end.discard(partition)
                ts = msg.timestamp()[1]
                epoch = msg.leader_epoch()
                write(
                    Record(
                        topic=msg.topic(),
                        partition=partition,
                        offset=msg.offset(),
                        timestamp=ts,
                        key=msg.key(),
                        value=msg.value(),
                        headers=tuple(msg.headers() or ()),
                        leader_epoch=-1 if epoch is None else epoch,
                    )
                )
                if stop is not None and msg.offset() + 1 >= stop:
                    self.at_end.add(partition)
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
