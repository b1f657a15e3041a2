"""The ``streamd`` command line: ``serve`` and ``restore`` run the broker side; the rest are
client commands speaking Kafka (and the admin HTTP API for streamd's extras).

Every failure exits non-zero with one line on stderr that says what to fix; no tracebacks.
"""

from __future__ import annotations

import logging
import sys

import click

from streamd.errors import ConfigError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="streamd")
def cli() -> None:
    """streamd: a Kafka-API-compatible broker with tiered storage to S3."""


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key by its dotted name (repeatable).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def serve(config_path: str | None, overrides: tuple[str, ...], log_level: str) -> None:
    """Run the broker in the foreground until SIGINT/SIGTERM.

    \b
    Example:
      streamd serve --set data_dir=/tmp/streamd --set kafka.listen=127.0.0.1:9092
    """
    from streamd import config as config_mod

    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        cfg = config_mod.load(config_path, overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    from streamd.broker.app import run

    try:
        run(cfg)
    except OSError as exc:
        raise click.ClickException(f"cannot start: {exc}") from None


def main() -> None:
    cli(prog_name="streamd")


if __name__ == "__main__":
    main()
