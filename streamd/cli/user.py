"""``streamd user``: SCRAM users (AlterUserScramCredentials / DescribeUserScramCredentials).

The password goes to the broker only as a salted SCRAM credential computed by librdkafka.
``create`` also changes the password of an existing user. ``delete`` without ``--mechanism``
removes every mechanism the user has.
"""

from __future__ import annotations

from typing import Any

import click
from confluent_kafka.admin import (
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

from streamd.cli.common import (
    CliError,
    admin_client,
    client_command,
    emit,
    format_option,
    guard,
    result,
    settings,
    table_dicts,
)

SCRAM = {
    "SCRAM-SHA-256": ScramMechanism.SCRAM_SHA_256,
    "SCRAM-SHA-512": ScramMechanism.SCRAM_SHA_512,
}
_NAMES = {v: k for k, v in SCRAM.items()}


@click.group()
def user() -> None:
    """Manage SCRAM users.

    \b
    Example:
      streamd user create alice --password s3cret --mechanism SCRAM-SHA-512
    """


def _describe(admin: Any, names: list[str] | None) -> dict[str, list[Any]]:
    with guard():
        if names is None:
            found = result(
                admin.describe_user_scram_credentials(request_timeout=settings().timeout)
            )
        else:
            futures = admin.describe_user_scram_credentials(
                names, request_timeout=settings().timeout
            )
            found = {}
            for name, fut in futures.items():
                try:
                    found[name] = result(fut, f"user {name}")
                except CliError:
                    found[name] = None
    return {
        name: list(d.scram_credential_infos) if d is not None else [] for name, d in found.items()
    }


@user.command()
@client_command
@click.argument("name")
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="The user's password (prompted for when omitted).",
)
@click.option(
    "--mechanism",
    type=click.Choice(sorted(SCRAM), case_sensitive=False),
    default="SCRAM-SHA-256",
    show_default=True,
)
@click.option("--iterations", type=click.IntRange(min=4096), default=4096, show_default=True)
def create(name: str, password: str, mechanism: str, iterations: int) -> None:
    """Create a SCRAM user, or set a new password for an existing one.

    \b
    Example:
      streamd user create alice --password s3cret --mechanism SCRAM-SHA-512
    """
    if not password:
        raise CliError("the password must not be empty")
    info = ScramCredentialInfo(SCRAM[mechanism.upper()], iterations)
    admin = admin_client()
    with guard(f"user {name}"):
        futures = admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(name, info, password.encode())],
            request_timeout=settings().timeout,
        )
    result(futures[name], f"user {name}")
    click.echo(f"Created user {name} ({mechanism.upper()})")


@user.command(name="list")
@client_command
@format_option
def list_(fmt: str) -> None:
    """List SCRAM users with their mechanisms.

    \b
    Example:
      streamd user list --format json
    """
    admin = admin_client()
    found = _describe(admin, None)
    rows = [
        {
            "user": name,
            "mechanism": _NAMES.get(i.mechanism, str(i.mechanism)),
            "iterations": i.iterations,
        }
        for name in sorted(found)
        for i in found[name]
    ]
    emit(fmt, rows, lambda: table_dicts(rows, ["user", "mechanism", "iterations"]))


@user.command()
@client_command
@click.argument("names", nargs=-1, required=True)
@click.option(
    "--mechanism",
    type=click.Choice(sorted(SCRAM), case_sensitive=False),
    help="Delete only this mechanism (default: all of the user's).",
)
def delete(names: tuple[str, ...], mechanism: str | None) -> None:
    """Delete SCRAM users.

    \b
    Example:
      streamd user delete alice bob
    """
    admin = admin_client()
    if mechanism is not None:
        wanted = {n: [SCRAM[mechanism.upper()]] for n in names}
    else:
        found = _describe(admin, list(names))
        wanted = {n: [i.mechanism for i in found.get(n, [])] for n in names}
    missing = [n for n, mechs in wanted.items() if not mechs]
    if missing:
        raise CliError(f"user {missing[0]} not found")
    deletions: list[UserScramCredentialAlteration] = [
        UserScramCredentialDeletion(n, m) for n, mechs in wanted.items() for m in mechs
    ]
    with guard():
        futures = admin.alter_user_scram_credentials(deletions, request_timeout=settings().timeout)
    for n in names:
        result(futures[n], f"user {n}")
        click.echo(f"Deleted user {n}")
