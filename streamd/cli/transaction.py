"""``streamd transaction``: list and describe transactions (like ``rpk cluster txn``).

The Kafka client library the CLI speaks through (librdkafka) has no ListTransactions or
DescribeTransactions admin call, so these commands read the broker's admin API
(``/v1/transactions``), which answers from the same coordinator state as those Kafka APIs.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import click

from streamd.cli.common import (
    AdminHTTPError,
    CliError,
    admin_get,
    client_command,
    emit,
    format_option,
    render_fields,
    render_table,
)

STATES = (
    "Empty", "Ongoing", "PrepareCommit", "PrepareAbort", "CompleteCommit", "CompleteAbort",
)


@click.group()
def transaction() -> None:
    """List and describe transactions (transactional producers).

    \b
    Example:
      streamd transaction list --state Ongoing
    """


def _start(ms: int) -> str:
    if ms < 0:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _partitions(entry: dict[str, Any]) -> str:
    return ",".join(f"{p['topic']}-{p['partition']}" for p in entry["partitions"]) or "-"


@transaction.command("list")
@client_command
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(STATES, case_sensitive=False),
    help="Only transactions in this state (repeatable).",
)
@format_option
def list_(states: tuple[str, ...], fmt: str) -> None:
    """List transactional ids, their producer and state.

    \b
    Examples:
      streamd transaction list
      streamd transaction list --state Ongoing --format json
    """
    canonical = [next(s for s in STATES if s.lower() == x.lower()) for x in states]
    query = f"?state={','.join(canonical)}" if canonical else ""
    data = admin_get(f"/v1/transactions{query}")

    def text() -> str:
        rows = [
            [t["transactional_id"], t["producer_id"], t["producer_epoch"], t["state"],
             t["timeout_ms"], _start(t["start_ms"]), _partitions(t)]
            for t in data["transactions"]
        ]
        return render_table(
            ["transactional-id", "producer-id", "epoch", "state", "timeout-ms", "start",
             "partitions"],
            rows,
        )

    emit(fmt, data, text)


@transaction.command()
@client_command
@click.argument("transactional_id")
@format_option
def describe(transactional_id: str, fmt: str) -> None:
    """Describe one transactional id: producer, state, timeout and the partitions and groups
    of its current (or last) transaction.

    \b
    Example:
      streamd transaction describe payments-writer-0
    """
    try:
        data = admin_get(f"/v1/transactions/{quote(transactional_id, safe='')}")
    except AdminHTTPError as exc:
        if exc.status == 404:
            raise CliError(f"unknown transactional id {transactional_id}") from None
        raise

    def text() -> str:
        return render_fields(
            [
                ("transactional-id", data["transactional_id"]),
                ("producer-id", data["producer_id"]),
                ("producer-epoch", data["producer_epoch"]),
                ("state", data["state"]),
                ("timeout-ms", data["timeout_ms"]),
                ("start", _start(data["start_ms"])),
                ("duration-ms", data["duration_ms"]),
                ("partitions", _partitions(data)),
                ("groups", ",".join(data["groups"]) or "-"),
                ("pending-offsets", data["pending_offsets"]),
            ]
        )

    emit(fmt, data, text)
