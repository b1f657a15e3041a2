"""Plumbing shared by the client commands: connection settings, Kafka clients, the admin HTTP
API, output (aligned tables or JSON) and turning every failure into one line on stderr.

Decisions:
- Connection options belong to the root group (``streamd --brokers H:P topic list``);
  ``--brokers`` and ``--admin-url`` may also follow the subcommand, as rpk users type them.
- Before its first Kafka call a command opens a TCP connection to the bootstrap addresses
  (``--timeout``, default 10 s): an unreachable broker fails at once with
  "cannot reach broker at HOST:PORT" instead of a librdkafka timeout minutes later.
- librdkafka's own log lines are silenced; what the user sees are our messages, built from the
  Kafka error code (``describe_kafka_error``) and the broker's error message when it sent one.
- Kafka's errors keep their meaning whatever broker answers, so these commands work against any
  Kafka broker; only ``describe-storage`` and ``cluster health`` need streamd's admin API.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigSource

from streamd.cli.specs import SpecError

T = TypeVar("T")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class CliError(click.ClickException):
    """A failure the user can act on: printed as one ``Error: ...`` line, exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


@dataclass(kw_only=True)
class Settings:
    brokers: str = "localhost:9092"
    admin_url: str = "http://localhost:9644"
    user: str | None = None
    password: str | None = None
    mechanism: str = "SCRAM-SHA-256"
    tls: bool = False
    tls_ca: str | None = None
    timeout: float = 10.0
    _reachable: bool = False
    _session_ok: bool = False
    _auth_error: KafkaError | None = None


def settings() -> Settings:
    ctx = click.get_current_context()
    root = ctx.find_root()
    if not isinstance(root.obj, Settings):
        root.obj = Settings()
    return root.obj


def _override(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is not None:
            setattr(settings(), name, value)

    return callback


def client_command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Lets ``--brokers`` / ``--admin-url`` follow the subcommand too (hidden from --help)."""
    fn = click.option("--brokers", expose_value=False, hidden=True, callback=_override("brokers"))(
        fn
    )
    fn = click.option(
        "--admin-url", expose_value=False, hidden=True, callback=_override("admin_url")
    )(fn)
    return fn


def format_option(
    fn: Callable[..., Any] | None = None, *, help: str = "Output format."
) -> Any:
    """``--format text|json|yaml`` as ``fmt``: ``@format_option`` or
    ``@format_option(help=...)``."""
    option = click.option(
        "--format",
        "fmt",
        type=click.Choice(["text", "json", "yaml"]),
        default="text",
        show_default=True,
        help=help,
    )
    return option if fn is None else option(fn)


def config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--config FILE`` and repeatable ``--set KEY=VALUE`` (broker config, as ``serve``)."""
    fn = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a config key by its dotted name (repeatable).",
    )(fn)
    return click.option(
        "--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file."
    )(fn)


def configure_logging(level: str, fmt: str = "text") -> None:
    """Broker-side commands log to stderr as text lines or, with ``json``, one JSON object per
    line (``ts``, ``level``, ``logger``, ``message`` and ``error`` with the traceback)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


# --- errors -----------------------------------------------------------------------------------

_UNREACHABLE = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE}
_TIMEOUT = {KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT}
_AUTH = {
    KafkaError._AUTHENTICATION,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.UNSUPPORTED_SASL_MECHANISM,
    KafkaError.ILLEGAL_SASL_STATE,
    KafkaError._SSL,
}
_DENIED = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    KafkaError.DELEGATION_TOKEN_AUTHORIZATION_FAILED,
}
_GENERIC_TEXT = ("Broker: ", "Local: ")


def _broker_text(err: KafkaError) -> str:
    """The broker's own error message, or '' when librdkafka only has the code's stock text."""
    text = err.str()
    return "" if text.startswith(_GENERIC_TEXT) else text


def describe_kafka_error(err: KafkaError | BaseException, subject: str = "") -> str:
    if isinstance(err, KafkaException):
        err = err.args[0] if err.args and isinstance(err.args[0], KafkaError) else err
    if not isinstance(err, KafkaError):
        return f"{subject}: {err}" if subject else str(err)
    code, detail = err.code(), _broker_text(err)
    about = f"{subject}: " if subject else ""
    auth = settings()._auth_error
    if code in _UNREACHABLE | _TIMEOUT and auth is not None:
        err, code = auth, auth.code()
    if code in _UNREACHABLE:
        return f"cannot reach broker at {settings().brokers} ({err.str()})"
    if code in _TIMEOUT:
        return f"{about}timed out waiting for the broker at {settings().brokers} ({err.str()})"
    if code == KafkaError.UNKNOWN_TOPIC_OR_PART:
        return detail or (f"unknown topic {subject}" if subject else "unknown topic or partition")
    if code == KafkaError.TOPIC_ALREADY_EXISTS:
        return detail or f"topic {subject} already exists"
    if code in (
        KafkaError.INVALID_CONFIG,
        KafkaError.INVALID_REQUEST,
        KafkaError.POLICY_VIOLATION,
        KafkaError.INVALID_PARTITIONS,
        KafkaError.INVALID_REPLICATION_FACTOR,
        KafkaError.TOPIC_EXCEPTION,
    ):
        label = err.name().lower().replace("_", " ")
        return f"{about}{label}: {detail or err.str()}"
    if code in _AUTH:
        text = err.str().split("authentication error: ", 1)[-1]
        text = re.sub(r" \(after \d+ms in state \w+\)$", "", text)
        return f"authentication failed for {settings().brokers}: {text}"
    if code in _DENIED:
        return f"{about}not authorized: {detail or err.name()}"
    if code in (KafkaError._UNSUPPORTED_FEATURE, KafkaError.UNSUPPORTED_VERSION):
        return f"{about}the broker does not support this request: {err.str()}"
    if code == KafkaError.SECURITY_DISABLED:
        return f"{about}security is disabled on the broker: {detail or err.str()}"
    if code == KafkaError.GROUP_ID_NOT_FOUND:
        return f"group {subject} not found" if subject else "group not found"
    if code == KafkaError.NON_EMPTY_GROUP:
        return f"group {subject} still has active members; stop its consumers first"
    if code in (KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS):
        return f"{about}the group has active members; stop its consumers first ({err.name()})"
    return f"{about}{err.name()}: {err.str()}"


def result(future: Future[T], subject: str = "") -> T:
    """Wait for an AdminClient future; a Kafka error becomes a CliError."""
    try:
        return future.result(timeout=settings().timeout + 5)
    except KafkaException as exc:
        raise CliError(describe_kafka_error(exc, subject)) from None
    except TimeoutError:
        raise CliError(
            f"{subject + ': ' if subject else ''}timed out waiting for "
            f"the broker at {settings().brokers}"
        ) from None


def guard(subject: str = "") -> Any:
    """Context manager turning KafkaException / SpecError into a one-line CliError."""
    return _Guard(subject)


class _Guard:
    def __init__(self, subject: str) -> None:
        self.subject = subject

    def __enter__(self) -> None:
        return None

    def __exit__(self, _t: Any, exc: BaseException | None, _tb: Any) -> None:
        if isinstance(exc, KafkaException):
            raise CliError(describe_kafka_error(exc, self.subject)) from None
        if isinstance(exc, SpecError):
            raise CliError(str(exc)) from None


# --- Kafka clients ----------------------------------------------------------------------------

_quiet = logging.getLogger("streamd.cli.librdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def bootstrap_addresses(brokers: str) -> list[tuple[str, int]]:
    out = []
    for item in brokers.split(","):
        item = item.strip()
        if "://" in item:
            item = item.split("://", 1)[1]
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit():
            raise CliError(f"invalid --brokers entry {item!r}: expected HOST:PORT")
        out.append((host.strip("[]") or "localhost", int(port)))
    if not out:
        raise CliError("--brokers is empty")
    return out


def check_reachable(s: Settings) -> None:
    if s._reachable:
        return
    errors = []
    for host, port in bootstrap_addresses(s.brokers):
        try:
            with socket.create_connection((host, port), timeout=min(s.timeout, 5.0)):
                s._reachable = True
                return
        except OSError as exc:
            errors.append(exc.strerror or str(exc) or type(exc).__name__)
    raise CliError(f"cannot reach broker at {s.brokers} ({errors[0]})")


def _error_callback(s: Settings) -> Callable[[KafkaError], None]:
    def on_error(err: KafkaError) -> None:
        if err.code() in _AUTH and s._auth_error is None:
            s._auth_error = err

    return on_error


def kafka_config(s: Settings, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": s.brokers,
        "logger": _quiet,
        "client.id": "streamd-cli",
        "socket.connection.setup.timeout.ms": int(min(s.timeout, 10) * 1000),
        "error_cb": _error_callback(s),
    }
    tls = s.tls or s.tls_ca is not None
    if s.user is not None:
        if s.password is None:
            raise CliError("--user needs --password (or STREAMD_PASSWORD)")
        conf.update(
            {"sasl.mechanism": s.mechanism, "sasl.username": s.user, "sasl.password": s.password}
        )
        conf["security.protocol"] = "SASL_SSL" if tls else "SASL_PLAINTEXT"
    elif tls:
        conf["security.protocol"] = "SSL"
    if s.tls_ca:
        conf["ssl.ca.location"] = s.tls_ca
    conf.update(extra)
    return conf


def admin_client() -> AdminClient:
    """An AdminClient whose session is known to work: a refused login or TLS handshake fails
    here within a second or so, instead of surfacing later as a metadata timeout."""
    s = settings()
    check_reachable(s)
    client = AdminClient(kafka_config(s))
    if not s._session_ok:
        _await_session(client, s)
    return client


def _await_session(client: AdminClient, s: Settings) -> None:
    deadline = time.monotonic() + s.timeout
    while True:
        try:
            client.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            s._session_ok = True
            return
        except KafkaException as exc:
            last = exc
        client.poll(0)
        if s._auth_error is not None:
            raise CliError(describe_kafka_error(s._auth_error))
        if time.monotonic() >= deadline:
            raise CliError(describe_kafka_error(last))


def kafka_python_admin() -> Any:
    """A kafka-python admin client, for the Kafka APIs confluent-kafka's Python AdminClient
    does not offer (OffsetDelete, DescribeLogDirs), with the same connection settings."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError as PyKafkaError

    s = settings()
    check_reachable(s)
    conf: dict[str, Any] = {
        "bootstrap_servers": [f"{h}:{p}" for h, p in bootstrap_addresses(s.brokers)],
        "client_id": "streamd-cli",
        "request_timeout_ms": int(s.timeout * 1000) + 5000,
    }
    tls = s.tls or s.tls_ca is not None
    if s.user is not None:
        conf.update(
            sasl_mechanism=s.mechanism,
            sasl_plain_username=s.user,
            sasl_plain_password=s.password,
            security_protocol="SASL_SSL" if tls else "SASL_PLAINTEXT",
        )
    elif tls:
        conf["security_protocol"] = "SSL"
    if s.tls_ca:
        conf["ssl_cafile"] = s.tls_ca
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    try:
        return KafkaAdminClient(**conf)
    except PyKafkaError as exc:
        raise CliError(f"cannot talk to {s.brokers}: {exc}") from None


def producer(**extra: Any) -> Producer:
    s = settings()
    check_reachable(s)
    return Producer(kafka_config(s, **extra))


def consumer(**extra: Any) -> Consumer:
    s = settings()
    check_reachable(s)
    return Consumer(kafka_config(s, **extra))


def topic_partitions(admin: AdminClient, topic: str) -> list[int]:
    """The partition ids of `topic`; a CliError naming the topic when it does not exist."""
    with guard(topic):
        md = admin.list_topics(topic=topic, timeout=settings().timeout)
    info = md.topics.get(topic)
    if info is None or info.error is not None:
        err = info.error if info is not None else None
        if err is None or err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise CliError(f"unknown topic {topic}")
        raise CliError(describe_kafka_error(err, topic))
    return sorted(info.partitions)


# --- admin HTTP API ---------------------------------------------------------------------------


class AdminHTTPError(CliError):
    def __init__(self, status: int, message: str, body: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def admin_get(path: str) -> Any:
    """GET a JSON document from the admin API; failures become AdminHTTPError / CliError."""
    base = settings().admin_url.rstrip("/")
    if "://" not in base:
        base = "http://" + base
    url = base + path
    request = urllib.request.Request(url)
    s = settings()
    if s.user is not None and s.password is not None:
        token = base64.b64encode(f"{s.user}:{s.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=settings().timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        detail = body.get("error") if isinstance(body, dict) else body
        message = f"admin API {url}: HTTP {exc.code}: {detail}"
        if exc.code == 401:
            message += " (give --user and --password of a SCRAM user)"
        raise AdminHTTPError(exc.code, message, body) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"cannot reach admin API at {base} ({reason})") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise CliError(f"admin API {url} answered with something other than JSON") from None


# --- output -----------------------------------------------------------------------------------


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value) or "-"
    return str(value)


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces, upper-case headers, no trailing spaces."""
    text_rows = [[h.upper() for h in headers]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in text_rows) for i in range(len(headers))]
    lines = []
    for row in text_rows:
        line = "  ".join(v.ljust(widths[i]) for i, v in enumerate(row))
        lines.append(line.rstrip())
    return "\n".join(lines)


def kafka_topic_id(topic_id: Any) -> str:
    """Kafka's text form of a topic id (URL-safe base64 of its 16 bytes, no padding), as the
    admin API and console print it. Takes a confluent-kafka ``Uuid`` (whose own ``str`` uses
    the other base64 alphabet), a ``uuid.UUID`` or its canonical string; any other string is
    returned as given."""
    if isinstance(topic_id, str):
        try:
            topic_id = uuid.UUID(topic_id)
        except ValueError:
            return topic_id
    if isinstance(topic_id, uuid.UUID):
        raw = topic_id.bytes
    else:
        msb = topic_id.get_most_significant_bits() & ((1 << 64) - 1)
        lsb = topic_id.get_least_significant_bits() & ((1 << 64) - 1)
        raw = ((msb << 64) | lsb).to_bytes(16, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def human_bytes(n: int | float) -> str:
    """``1536`` -> ``1.5 KiB`` (binary units, as rpk prints sizes)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"

class PhaseBars:
    """The progress protocol of long offline jobs (``phase(description, total)``, ``advance(n)``:
    restore, archive verify) drawn as one rich bar per phase on stderr. ``in_bytes``: totals
    are bytes (size and speed columns), and a total of 0 means "not known yet" (the bucket
    listing); otherwise totals count items and 0 means nothing to do."""

    def __init__(self, enabled: bool, *, in_bytes: bool = False) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )

        size_columns = (DownloadColumn(), TransferSpeedColumn()) if in_bytes else (
            MofNCompleteColumn(),
        )
        self._in_bytes = in_bytes
        self._progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            *size_columns,
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not enabled,
            transient=False,
        )
        self._task: Any = None

    def __enter__(self) -> PhaseBars:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def phase(self, description: str, total: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=self._progress.tasks[-1].total)
        size = (total or None) if self._in_bytes else max(total, 0)
        self._task = self._progress.add_task(description, total=size)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)



def render_fields(pairs: Iterable[tuple[str, Any]]) -> str:
    """``key  value`` lines with the values aligned."""
    pairs = [(k, cell(v)) for k, v in pairs]
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}".rstrip() for k, v in pairs)


def config_source_name(source: Any) -> str:
    """``5`` -> ``DEFAULT_CONFIG`` (Kafka's names for where a config value comes from)."""
    if isinstance(source, ConfigSource):
        return str(source.name)
    try:
        return str(ConfigSource(int(source)).name)
    except (ValueError, TypeError):
        return str(source)


def section(title: str, body: str) -> str:
    return f"{title.upper()}\n{'=' * len(title)}\n{body}\n"


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def echo_structured(fmt: str, data: Any) -> None:
    """``json`` or ``yaml`` (the same document either way)."""
    if fmt == "yaml":
        import yaml

        plain = json.loads(json.dumps(data, default=str))
        click.echo(yaml.safe_dump(plain, sort_keys=False, allow_unicode=True).rstrip("\n"))
    else:
        echo_json(data)


def emit(fmt: str, data: Any, text: Callable[[], str]) -> None:
    if fmt in ("json", "yaml"):
        echo_structured(fmt, data)
    else:
        out = text()
        if out:
            click.echo(out.rstrip("\n"))


def table_dicts(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    return render_table(
        [c.replace("_", "-") for c in columns], [[r.get(c) for c in columns] for r in rows]
    )


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()
