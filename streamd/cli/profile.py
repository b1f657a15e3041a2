"""``streamd profile``: named connection settings (brokers, admin API, SASL, TLS), as rpk's
profiles.

Profiles live in one YAML file, ``$STREAMD_CONFIG_DIR/profiles.yaml`` (default
``$XDG_CONFIG_HOME/streamd`` or ``~/.config/streamd``), written with mode 0600 because it may
hold a password. ``current`` names the profile used when ``--profile`` (env
``STREAMD_PROFILE``) does not. Precedence: built-in defaults < profile < ``STREAMD_*``
environment < command-line flags, so a flag always wins over the profile.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from streamd.cli.common import MECHANISMS, CliError, Settings, emit, format_option, table_dicts

FIELDS = ("brokers", "admin_url", "user", "password", "mechanism", "tls", "tls_ca")


def profiles_path() -> Path:
    explicit = os.environ.get("STREAMD_CONFIG_DIR")
    if explicit:
        return Path(explicit) / "profiles.yaml"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "streamd" / "profiles.yaml"


def load() -> dict[str, Any]:
    import yaml

    path = profiles_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {"current": None, "profiles": {}}
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise CliError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("profiles", {}), dict):
        raise CliError(f"{path}: expected 'current' and a 'profiles' mapping")
    doc.setdefault("profiles", {})
    doc.setdefault("current", None)
    return doc


def save(doc: dict[str, Any]) -> Path:
    import yaml

    path = profiles_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    os.replace(tmp, path)
    return path


def apply(ctx: click.Context, settings: Settings, name: str | None) -> None:
    """Fill the settings a flag or the environment did not give from profile ``name`` (or
    the current profile)."""
    doc = load()
    chosen = name or doc.get("current")
    if not chosen:
        return
    profile = doc["profiles"].get(chosen)
    if profile is None:
        if name is None:
            return
        have = ", ".join(sorted(doc["profiles"])) or "none"
        raise CliError(f"no profile {name!r} in {profiles_path()} (profiles: {have})")
    for field in FIELDS:
        if field not in profile or profile[field] is None:
            continue
        source = ctx.get_parameter_source(field)
        if source in (None, click.core.ParameterSource.DEFAULT):
            value = profile[field]
            setattr(settings, field, value.upper() if field == "mechanism" else value)


@click.group()
def profile() -> None:
    """Named connection settings (brokers, admin URL, SASL user, TLS), as rpk profiles.

    \b
    Example:
      streamd profile create prod --brokers b1:9092,b2:9092 --user admin --password s3cret
      streamd profile use prod
    """


@profile.command()
@click.argument("name")
@click.option("--brokers", metavar="HOST:PORT[,...]", help="Kafka bootstrap brokers.")
@click.option("--admin-url", help="streamd admin API URL.")
@click.option("--user", help="SASL user name.")
@click.option("--password", help="SASL password (stored in the profile file, mode 0600).")
@click.option("--mechanism", type=click.Choice(MECHANISMS, case_sensitive=False))
@click.option("--tls", is_flag=True, default=None, help="Connect with TLS.")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), help="CA bundle.")
@click.option("--no-use", is_flag=True, help="Do not make it the current profile.")
def create(name: str, no_use: bool, **values: Any) -> None:
    """Create (or replace) a profile and make it the current one.

    \b
    Example:
      streamd profile create local --brokers 127.0.0.1:9092 --admin-url http://127.0.0.1:9644
    """
    if not name.strip() or "/" in name:
        raise CliError(f"invalid profile name {name!r}")
    doc = load()
    entry = {k: v for k, v in values.items() if v is not None}
    if "tls_ca" in entry:
        entry["tls_ca"] = str(Path(entry["tls_ca"]).resolve())
    if "mechanism" in entry:
        entry["mechanism"] = str(entry["mechanism"]).upper()
    doc["profiles"][name] = entry
    if not no_use:
        doc["current"] = name
    path = save(doc)
    click.echo(f"Created profile {name} in {path}" + ("" if no_use else " (now current)"))


@profile.command()
@click.argument("name")
def use(name: str) -> None:
    """Make NAME the profile used by default.

    \b
    Example:
      streamd profile use prod
    """
    doc = load()
    if name not in doc["profiles"]:
        have = ", ".join(sorted(doc["profiles"])) or "none"
        raise CliError(f"no profile {name!r} (profiles: {have})")
    doc["current"] = name
    save(doc)
    click.echo(f"Using profile {name}")


@profile.command(name="list")
@format_option
def list_(fmt: str) -> None:
    """List profiles; the current one is marked.

    \b
    Example:
      streamd profile list
    """
    doc = load()
    rows = [
        {
            "name": name,
            "current": name == doc.get("current"),
            "brokers": p.get("brokers"),
            "admin_url": p.get("admin_url"),
            "user": p.get("user"),
            "tls": bool(p.get("tls") or p.get("tls_ca")),
        }
        for name, p in sorted(doc["profiles"].items())
    ]
    emit(fmt, rows, lambda: table_dicts(
        [dict(r, current="*" if r["current"] else "") for r in rows],
        ["current", "name", "brokers", "admin_url", "user", "tls"],
    ))


@profile.command()
@click.argument("name")
def delete(name: str) -> None:
    """Delete a profile.

    \b
    Example:
      streamd profile delete old
    """
    doc = load()
    if doc["profiles"].pop(name, None) is None:
        raise CliError(f"no profile {name!r}")
    if doc.get("current") == name:
        doc["current"] = None
    save(doc)
    click.echo(f"Deleted profile {name}")


@profile.command()
def current() -> None:
    """Print the name of the current profile.

    \b
    Example:
      streamd profile current
    """
    name = load().get("current")
    if not name:
        raise CliError("no current profile: create one with `streamd profile create NAME`")
    click.echo(name)
