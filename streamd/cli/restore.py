"""``streamd restore``: rebuild a broker's data_dir from its bucket (offline).

The work happens in :mod:`streamd.broker.restore` (imported lazily, as ``serve`` does); this
module parses options, draws the progress bar (rich, on stderr) and prints the summary.

Exit codes: 0 restored (or planned) completely; 3 restored, but something could not be (a
missing segment, an unreadable manifest, a topic that could not be created: see the summary);
1 with one line on stderr when nothing was restored (unreachable bucket, no streamd data under
the prefix, unknown manifest format, non-empty data_dir without ``--force``...).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import click

from streamd.cli.common import (
    PhaseBars,
    config_options,
    configure_logging,
    echo_structured,
    format_option,
    kafka_topic_id,
    render_fields,
    render_table,
    section,
)

PARTIAL_EXIT = 3
RANGES_SHOWN = 8


@click.command()
@config_options
@click.option(
    "--topic", "topics", multiple=True, metavar="NAME", help="Restore only this topic (repeatable)."
)
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option("--force", is_flag=True, help="Restore into a non-empty data_dir.")
@click.option(
    "--allow-missing-manifest",
    is_flag=True,
    help="Restore a partition whose objects exist without a manifest empty, from the offset "
    "after its highest archived one (its archived records are not served).",
)
@format_option(help="Summary format.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--log-level",
    default="WARNING",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="INFO logs each restore step on stderr.",
)
@click.option(
    "--log-format", default="text", show_default=True, type=click.Choice(["text", "json"])
)
def restore(
    config_path: str | None,
    overrides: tuple[str, ...],
    topics: tuple[str, ...],
    dry_run: bool,
    force: bool,
    allow_missing_manifest: bool,
    fmt: str,
    no_progress: bool,
    log_level: str,
    log_format: str,
) -> None:
    """Rebuild data_dir from tiering.store: topics (same ids and configs), every archived
    record (served from the bucket), committed group offsets, ACLs and users.

    Reads only metadata and manifests; no segment is downloaded. The broker must not be running.
    Per partition it states the offsets restored and how many offsets the cluster archive
    recorded that are not in the bucket (lost: "unarchived"). Exit 3 when anything could not
    be restored (see NOT RESTORED), 1 when nothing was.

    \b
    Examples:
      streamd restore --config streamd.toml --dry-run
      streamd restore --set data_dir=/var/lib/streamd --set tiering.store=s3://bucket/prefix
      streamd restore --config streamd.toml --topic orders --force
    """
    from streamd import config as config_mod
    from streamd.errors import ConfigError, StreamdError

    configure_logging(log_level, log_format)
    try:
        cfg = config_mod.load(config_path, overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    from streamd.broker.restore import run_restore

    started = time.monotonic()
    try:
        with PhaseBars(not no_progress and sys.stderr.isatty()) as progress:
            result = asyncio.run(
                run_restore(
                    cfg,
                    topics=topics,
                    dry_run=dry_run,
                    force=force,
                    allow_missing_manifest=allow_missing_manifest,
                    progress=progress,
                )
            )
    except StreamdError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {cfg.data_dir}: {exc}") from None
    elapsed = time.monotonic() - started
    if fmt != "text":
        echo_structured(fmt, summary_json(result, elapsed))
    else:
        click.echo(summary_text(result, elapsed).rstrip("\n"))
    if not result.complete:
        missing = len(result.not_restored)
        verb = "would be" if dry_run else "was"
        click.echo(
            f"restore incomplete: {missing} item(s) could not be restored or {verb} "
            "restored with gaps (see NOT RESTORED)",
            err=True,
        )
        sys.exit(PARTIAL_EXIT)


def _ranges(partitions: Any) -> str:
    shown = [f"{p.partition}:[{p.start_offset},{p.next_offset})" for p in partitions]
    more = len(shown) - RANGES_SHOWN
    return " ".join(shown[:RANGES_SHOWN]) + (f" (+{more} more)" if more > 0 else "")


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def summary_text(result: Any, elapsed: float) -> str:
    plan = result.plan
    title = "restore plan (dry run, nothing written)" if not result.written else "restored"
    acls = "-" if plan.acls is None else len(plan.acls.get("acls", []))
    users = "-" if plan.credentials is None else len(plan.credentials.get("users", {}))
    fields = render_fields(
        [
            ("store", plan.store),
            ("data_dir", result.data_dir),
            ("cluster id", plan.cluster_id),
            ("metadata archived", _when(plan.metadata_archived_at_ms)),
            ("offsets archived", _when(plan.offsets_archived_at_ms)),
            ("topics", len(plan.topics)),
            ("partitions", sum(len(t.partitions) for t in plan.topics)),
            ("segments", sum(t.segments for t in plan.topics)),
            ("bucket bytes", sum(t.bucket_bytes for t in plan.topics)),
            ("unarchived offsets", sum(p.unarchived for t in plan.topics for p in t.partitions)),
            ("groups", len(plan.offsets)),
            ("group offsets", sum(len(v) for v in plan.offsets.values())),
            ("acls", acls),
            ("users", users),
            ("seconds", f"{elapsed:.2f}"),
        ],
    )
    rows = [
        (
            t.name,
            kafka_topic_id(t.topic_id),
            len(t.partitions),
            t.segments,
            t.bucket_bytes,
            _ranges(t.partitions),
            sum(p.unarchived for p in t.partitions),
            ",".join(f"{k}={v}" for k, v in sorted(t.overrides.items())) or "-",
        )
        for t in plan.topics
    ]
    out = section(title, fields)
    out += "\n" + section(
        "topics",
        render_table(
            ["topic", "id", "partitions", "segments", "bytes", "offsets", "unarchived", "configs"],
            rows,
        ),
    )
    parts = [
        (f"{t.name}-{p.partition}", p.start_offset, p.next_offset,
         "-" if p.known_end is None else p.known_end, p.unarchived)
        for t in plan.topics
        for p in t.partitions
        if p.unarchived or p.known_end is not None
    ]
    if parts:
        out += "\n" + section(
            "partitions",
            render_table(["partition", "start", "next", "recorded end", "unarchived"], parts),
        )
    notes = [
        *result.notes,
        *(f"{t.name}: {n}" for t in plan.topics for n in t.notes),
        *(f"{t.name}-{p.partition}: {n}" for t in plan.topics for p in t.partitions
          for n in p.notes),
    ]
    if notes:
        out += "\n" + section("notes", "\n".join(notes))
    if result.not_restored:
        out += "\n" + section(
            "not restored",
            render_table(["what", "why"], [(s.what, s.why) for s in result.not_restored]),
        )
    return out


def summary_json(result: Any, elapsed: float) -> dict[str, Any]:
    plan = result.plan
    return {
        "written": result.written,
        "complete": result.complete,
        "store": plan.store,
        "data_dir": str(result.data_dir),
        "cluster_id": plan.cluster_id,
        "seconds": round(elapsed, 3),
        "topics": [
            {
                "name": t.name,
                "topic_id": kafka_topic_id(t.topic_id),
                "configs": t.overrides,
                "bucket_bytes": t.bucket_bytes,
                "partitions": [
                    {
                        "partition": p.partition,
                        "start_offset": p.start_offset,
                        "next_offset": p.next_offset,
                        "segments": p.segments,
                        "bucket_bytes": p.bucket_bytes,
                        "recorded_end_offset": p.known_end,
                        "unarchived_offsets": p.unarchived,
                        "notes": list(p.notes),
                    }
                    for p in t.partitions
                ],
                "notes": list(t.notes),
            }
            for t in plan.topics
        ],
        "groups": {g: len(v) for g, v in plan.offsets.items()},
        "acls": None if plan.acls is None else len(plan.acls.get("acls", [])),
        "users": None if plan.credentials is None else sorted(plan.credentials.get("users", {})),
        "notes": list(result.notes),
        "not_restored": [{"what": s.what, "why": s.why} for s in result.not_restored],
    }
