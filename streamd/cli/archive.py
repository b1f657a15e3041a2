"""``streamd archive verify``: scrub the bucket offline (see
:mod:`streamd.broker.archive_verify`, imported lazily as ``serve`` imports the broker).

Exit codes: 0 every object named by a manifest is present and matches its checksum (orphans, if
any, are listed); 1 a problem was found (missing object, size or checksum mismatch, unreadable
manifest), with ``--strict`` also when orphans exist, or the scrub could not run (one line on
stderr). A progress bar (bytes verified) is drawn on stderr when it is a terminal.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

import click

from streamd.cli.common import (
    PhaseBars,
    config_options,
    echo_structured,
    format_option,
    human_bytes,
    render_fields,
    render_table,
    section,
)

ORPHANS_SHOWN = 50


@click.group()
def archive() -> None:
    """Inspect the archive in the bucket (offline: reads tiering.store directly).

    \b
    Example:
      streamd archive verify --config config/streamd.toml
    """


@archive.command()
@config_options
@click.option("--strict", is_flag=True, help="Orphaned objects are failures too (exit 1).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@format_option(help="Report format.")
def verify(
    config_path: str | None,
    overrides: tuple[str, ...],
    strict: bool,
    no_progress: bool,
    fmt: str,
) -> None:
    """Check every object the manifests of tiering.store name: present, of the right size,
    matching its CRC32C; list objects no manifest names (orphans). Exit 1 on any problem.

    \b
    Examples:
      streamd archive verify --config config/streamd.toml
      streamd archive verify --set tiering.store=s3://bucket/prefix \\
          --set tiering.s3.endpoint_url=http://127.0.0.1:9000 --format json
    """
    from streamd import config as config_mod
    from streamd.errors import ConfigError, StreamdError

    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s: %(message)s"
    )
    try:
        cfg = config_mod.load(config_path, overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    from streamd.broker.archive_verify import problem_rows, run_verify

    started = time.monotonic()
    try:
        with PhaseBars(not no_progress and sys.stderr.isatty(), in_bytes=True) as bar:
            report = asyncio.run(run_verify(cfg, bar))
    except StreamdError as exc:
        raise click.ClickException(f"cannot verify {cfg['tiering.store']}: {exc}") from None
    elapsed = time.monotonic() - started
    ok = report.ok(strict=strict)
    if fmt != "text":
        echo_structured(fmt, report.as_json(strict=strict) | {"seconds": round(elapsed, 3)})
    else:
        summary = render_fields(
            [
                ("store", report.store),
                ("objects", report.objects),
                ("bucket bytes", human_bytes(report.bucket_bytes)),
                ("partition manifests", report.partition_manifests),
                ("topic manifests", report.topic_manifests),
                ("cluster documents", report.cluster_documents),
                ("segments", report.segments),
                ("verified objects", report.verified_objects),
                ("verified bytes", human_bytes(report.verified_bytes)),
                ("problems", len(report.problems)),
                ("orphans", len(report.orphans)),
                ("seconds", f"{elapsed:.2f}"),
            ]
        )
        out = [section("archive", summary)]
        if report.problems:
            out.append(section("problems", render_table(
                ["kind", "partition", "key", "detail"], problem_rows(report.problems))))
        if report.orphans:
            rows = [(o.key, o.size) for o in report.orphans[:ORPHANS_SHOWN]]
            more = len(report.orphans) - ORPHANS_SHOWN
            table = render_table(["key", "bytes"], rows)
            if more > 0:
                table += f"\n... and {more} more (--format json lists all)"
            out.append(section("orphans (named by no manifest)", table))
        if report.unverifiable:
            out.append(section("unverifiable (their manifest is unreadable)",
                               "\n".join(report.unverifiable)))
        click.echo("\n".join(out).rstrip("\n"))
    if not ok:
        what = f"{len(report.problems)} problem(s)"
        if strict and report.orphans:
            what += f", {len(report.orphans)} orphan(s)"
        click.echo(f"archive verify FAILED: {what}", err=True)
        sys.exit(1)
