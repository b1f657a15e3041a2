"""``streamd transform``: deploy and manage data transforms (like ``rpk transform``).

Every subcommand calls the broker's admin API (``/v1/transforms``, see
:mod:`streamd.transforms.api`); the broker validates the deployment and answers errors as one
line. ``deploy`` sends the file's source: the broker keeps it with the deployment (it survives
restarts and is archived for ``streamd restore``).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import click

from streamd.cli.common import (
    AdminHTTPError,
    CliError,
    client_command,
    emit,
    format_option,
    render_fields,
    render_table,
    settings,
)


def admin_call(method: str, path: str, body: Any = None) -> Any:
    """One admin API call with a JSON body; failures become one-line errors."""
    s = settings()
    base = s.admin_url.rstrip("/")
    if "://" not in base:
        base = "http://" + base
    url = base + path
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if s.user is not None and s.password is not None:
        token = base64.b64encode(f"{s.user}:{s.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=s.timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = raw.decode(errors="replace")
        detail = doc.get("error") if isinstance(doc, dict) else doc
        raise AdminHTTPError(exc.code, str(detail), doc) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"cannot reach admin API at {base} ({reason})") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise CliError(f"admin API {url} answered with something other than JSON") from None


def _path(name: str, suffix: str = "") -> str:
    return "/v1/transforms/" + urllib.parse.quote(name, safe="") + suffix


@click.group()
def transform() -> None:
    """Data transforms: Python code applied to a topic's records, live and over its
    archived history, exactly once.

    \b
    A transform is a Python file defining transform(record); it returns None (drop), a
    streamd.transform.Record, or a list of them. The broker needs transforms.enabled=true.

    \b
    Example:
      cat > upper.py <<'EOF'
      from streamd.transform import Record
      def transform(record):
          return Record(key=record.key, value=record.value.upper())
      EOF
      streamd transform deploy upper.py --name upper --input-topic orders \\
          --output-topic orders-upper --from earliest
      streamd transform describe upper
    """


def _env(values: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"invalid --env {item!r}: expected NAME=VALUE")
        env[key] = value
    return env


@transform.command()
@client_command
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Name of the transform (a redeploy replaces it).")
@click.option("--input-topic", "-i", required=True, help="Topic the transform reads.")
@click.option(
    "--output-topic",
    "-o",
    "output_topics",
    required=True,
    multiple=True,
    help="Topic it writes (repeatable; Record(topic=...) picks one, default the first).",
)
@click.option(
    "--from",
    "start",
    default="earliest",
    show_default=True,
    metavar="earliest|latest|OFFSET|@TIMESTAMP",
    help="Where to start in partitions it has no committed position for (@ takes "
    "milliseconds since the epoch or an ISO 8601 time).",
)
@click.option(
    "--on-error",
    default="stop",
    show_default=True,
    metavar="stop|skip|dead-letter=TOPIC",
    help="When transform() raises or times out on a record: stop (mark the transform failed "
    "at that offset), skip the record, or write the original record to TOPIC.",
)
@click.option(
    "--env",
    "env",
    multiple=True,
    metavar="NAME=VALUE",
    help="Environment variable of the transform's process (repeatable).",
)
@format_option
def deploy(
    file: Path,
    name: str,
    input_topic: str,
    output_topics: tuple[str, ...],
    start: str,
    on_error: str,
    env: tuple[str, ...],
    fmt: str,
) -> None:
    """Deploy FILE as transform NAME (or replace NAME's code, keeping its position).

    \b
    Examples:
      streamd transform deploy upper.py --name upper -i orders -o orders-upper
      streamd transform deploy route.py --name route -i events -o clicks -o views \\
          --from @2024-01-01T00:00:00 --on-error dead-letter=events-dlq --env LEVEL=debug
    """
    try:
        code = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {file}: {exc}") from None
    doc = admin_call(
        "POST",
        "/v1/transforms",
        {
            "name": name,
            "input_topic": input_topic,
            "output_topics": list(output_topics),
            "start": start,
            "on_error": on_error,
            "env": _env(env),
            "file_name": file.name,
            "code": code,
        },
    )
    emit(fmt, doc, lambda: f"deployed transform {doc['name']} ({doc['status']})")


@transform.command("list")
@client_command
@format_option
def list_(fmt: str) -> None:
    """List transforms with their status and lag.

    \b
    Example:
      streamd transform list --format json
    """
    doc = admin_call("GET", "/v1/transforms")
    rows = [
        [
            t["name"],
            t["input_topic"],
            t["output_topics"],
            t["status"],
            t["lag"],
            t["records_in"],
            t["records_out"],
            _error_text(t.get("last_error")),
        ]
        for t in doc["transforms"]
    ]
    emit(
        fmt,
        doc["transforms"],
        lambda: render_table(
            ["name", "input", "output", "status", "lag", "in", "out", "last-error"], rows
        ),
    )


def _error_text(err: dict[str, Any] | None) -> str | None:
    if not err:
        return None
    where = f"@{err['partition']}:{err['offset']} " if err.get("offset") is not None else ""
    return f"{where}{err.get('message')}"


@transform.command()
@client_command
@click.argument("name")
@format_option
def describe(name: str, fmt: str) -> None:
    """Show a transform: deployment, status, per-partition position and lag, counters and
    the last error.

    \b
    Example:
      streamd transform describe upper
    """
    doc = admin_call("GET", _path(name))

    def text() -> str:
        worker = doc.get("worker") or {}
        fields = [
            ("name", doc["name"]),
            ("status", doc["status"]),
            ("input-topic", doc["input_topic"]),
            ("output-topics", doc["output_topics"]),
            ("from", doc["from"]),
            ("on-error", doc["on_error"]),
            ("env", [f"{k}={v}" for k, v in sorted(doc["env"].items())]),
            ("file", f"{doc['file_name']} (sha256 {doc['code_sha256'][:12]})"),
            ("records-in", doc["records_in"]),
            ("records-out", doc["records_out"]),
            ("records-skipped", doc["records_skipped"]),
            ("records-dead-lettered", doc["records_dead_lettered"]),
            ("lag", doc["lag"]),
            ("worker", f"{worker.get('state')} pid {worker.get('pid')} "
                       f"restarts {worker.get('restarts')}"),
            ("last-error", _error_text(doc.get("last_error"))),
        ]
        table = render_table(
            ["partition", "committed", "end", "lag"],
            [[p["partition"], p["committed_offset"], p["end_offset"], p["lag"]]
             for p in doc["partitions"]],
        )
        return render_fields(fields) + "\n\n" + table

    emit(fmt, doc, text)


def _simple(action: str, past: str) -> Any:
    @client_command
    @click.argument("name")
    @format_option
    def command(name: str, fmt: str) -> None:
        doc = admin_call("POST", _path(name, "/" + action))
        emit(fmt, doc, lambda: f"transform {name} {past} ({doc['status']})")

    return command


transform.command(
    "pause",
    help="Stop a transform's worker (it commits its open transaction first); resume continues "
    "where it stopped.\n\n\b\nExample:\n  streamd transform pause upper",
)(_simple("pause", "paused"))
transform.command(
    "resume",
    help="Start a paused or failed transform again, from its committed position.\n\n\b\n"
    "Example:\n  streamd transform resume upper",
)(_simple("resume", "resumed"))


@transform.command()
@client_command
@click.argument("name")
@format_option
def delete(name: str, fmt: str) -> None:
    """Stop and delete a transform and its committed position (its output stays).

    \b
    Example:
      streamd transform delete upper
    """
    doc = admin_call("DELETE", _path(name))
    emit(fmt, doc, lambda: f"deleted transform {name}")


@transform.command()
@client_command
@click.argument("name")
@click.option("--lines", "-n", default=100, show_default=True, type=click.IntRange(min=0),
              help="How many of the last lines to show.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines (Ctrl-C stops).")
@format_option
def logs(name: str, lines: int, follow: bool, fmt: str) -> None:
    """Show what a transform printed (stdout/stderr of its worker) and its lifecycle events.

    \b
    Example:
      streamd transform logs upper -n 20
    """
    doc = admin_call("GET", _path(name, f"/logs?lines={lines}"))
    got: list[str] = doc["lines"]
    if fmt == "json" and not follow:
        emit(fmt, doc, lambda: "")
        return
    for line in got:
        click.echo(line)
    while follow:
        time.sleep(1.0)
        try:
            newer: list[str] = admin_call("GET", _path(name, "/logs?lines=1000"))["lines"]
        except KeyboardInterrupt:
            return
        for line in _after(got, newer):
            click.echo(line)
        got = newer


def _after(old: list[str], new: list[str]) -> list[str]:
    """The lines of ``new`` past the end of ``old`` (both tails of one growing log)."""
    if not old:
        return new
    last = old[-1]
    for i in range(len(new) - 1, -1, -1):
        if new[i] == last:
            return new[i + 1 :]
    return new

