"""The ``streamd`` command line: ``serve`` (and ``restore``) run the broker side; ``topic``,
``group``, ``acl``, ``user`` and ``cluster`` are client commands speaking Kafka through
confluent-kafka and streamd's admin HTTP API through urllib. They never import broker internals;
only ``serve`` imports the broker, lazily.

Every failure exits non-zero with one line on stderr that says what to fix; no tracebacks.
Ctrl-C ends a command with exit code 130, except ``topic consume`` where it is the normal way
to stop tailing (exit 0, as rpk).
"""

from __future__ import annotations

import logging
from typing import Any

import click
from confluent_kafka import KafkaException

from streamd.cli import acl, archive, cluster, group, restore, topic, transaction, transform, user
from streamd.cli import profile as profiles
from streamd.cli.common import (
    MECHANISMS,
    CliError,
    Settings,
    config_options,
    configure_logging,
    describe_kafka_error,
)
from streamd.cli.specs import SpecError


class StreamdGroup(click.Group):
    """Turns what escapes a command into one line on stderr (click prints ClickExceptions)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KafkaException as exc:
            raise CliError(describe_kafka_error(exc)) from None
        except SpecError as exc:
            raise CliError(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=StreamdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="streamd")
@click.option(
    "--brokers",
    envvar="STREAMD_BROKERS",
    default="localhost:9092",
    show_default=True,
    metavar="HOST:PORT[,...]",
    help="Kafka bootstrap brokers (env STREAMD_BROKERS).",
)
@click.option(
    "--admin-url",
    envvar="STREAMD_ADMIN_URL",
    default="http://localhost:9644",
    show_default=True,
    help="streamd admin API (env STREAMD_ADMIN_URL).",
)
@click.option("--user", envvar="STREAMD_USER", help="SASL user name (env STREAMD_USER).")
@click.option("--password", envvar="STREAMD_PASSWORD", help="SASL password (env STREAMD_PASSWORD).")
@click.option(
    "--mechanism",
    envvar="STREAMD_MECHANISM",
    default="SCRAM-SHA-256",
    show_default=True,
    type=click.Choice(MECHANISMS, case_sensitive=False),
    help="SASL mechanism.",
)
@click.option("--tls", is_flag=True, help="Connect with TLS.")
@click.option(
    "--tls-ca",
    type=click.Path(exists=True, dir_okay=False),
    help="CA bundle to verify the broker's certificate (implies --tls).",
)
@click.option(
    "--profile",
    "profile_name",
    envvar="STREAMD_PROFILE",
    metavar="NAME",
    help="Connection profile (env STREAMD_PROFILE; default: the current one, see "
    "`streamd profile`).",
)
@click.option(
    "--timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds to wait for the broker on each request.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    brokers: str,
    admin_url: str,
    user: str | None,
    password: str | None,
    mechanism: str,
    tls: bool,
    tls_ca: str | None,
    profile_name: str | None,
    timeout: float,
) -> None:
    """streamd: a Kafka-API-compatible broker with tiered storage to S3.

    \b
    Examples:
      streamd serve --set data_dir=/tmp/streamd
      streamd --brokers 127.0.0.1:9092 topic create orders -p 3
      echo hello | streamd topic produce orders
      streamd topic consume orders -n 1
    """
    obj = ctx.ensure_object(Settings)
    obj.brokers, obj.admin_url = brokers, admin_url
    obj.user, obj.password, obj.mechanism = user, password, mechanism.upper()
    obj.tls, obj.tls_ca, obj.timeout = tls, tls_ca, timeout
    if ctx.invoked_subcommand not in ("profile", "serve", "restore", "archive", None):
        profiles.apply(ctx, obj, profile_name)


@cli.command()
@config_options
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="json: one JSON object per line (time, level, logger, message).",
)
def serve(
    config_path: str | None, overrides: tuple[str, ...], log_level: str, log_format: str
) -> None:
    """Run the broker in the foreground until SIGINT/SIGTERM.

    \b
    Example:
      streamd serve --set data_dir=/tmp/streamd --set kafka.listen=127.0.0.1:9092
      streamd serve --config config/streamd.toml --log-format json
    """
    from streamd import config as config_mod
    from streamd.errors import ConfigError, StreamdError

    configure_logging(log_level, log_format)
    try:
        cfg = config_mod.load(config_path, overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    from streamd.broker.app import run, streamd_version

    logging.getLogger("streamd").info(
        "streamd %s starting: config %s, data_dir %s",
        streamd_version(), config_path or "(none: defaults, environment, --set)", cfg.data_dir,
    )
    try:
        run(cfg)
    except (OSError, StreamdError) as exc:
        raise click.ClickException(f"cannot start: {exc}") from None


# Offline broker-side commands (``restore``) register here, next to ``serve``.
cli.add_command(restore.restore)
cli.add_command(archive.archive)

cli.add_command(topic.topic)
cli.add_command(group.group)
cli.add_command(acl.acl)
cli.add_command(user.user)
cli.add_command(cluster.cluster)
cli.add_command(profiles.profile)
cli.add_command(transaction.transaction)
cli.add_command(transform.transform)


def main() -> None:
    cli(prog_name="streamd")


if __name__ == "__main__":
    main()
