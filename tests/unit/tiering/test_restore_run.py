"""``run_restore`` (broker side) over a local-directory bucket: refusal of a non-empty data_dir,
dry run, group offsets / ACLs / users / cluster id written in their stores' own formats,
``--topic``, and idempotence."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamd import config as config_mod
from streamd.broker.restore import describe_contents, run_restore
from streamd.groups.offset_log import OffsetLog
from streamd.security.acl import AclBinding, Operation, PatternType, Permission, ResourceType
from streamd.security.scram import MECHANISMS, ScramCredential
from streamd.security.store import AclStore, CredentialStore, credential_to_json
from streamd.tiering.local_store import LocalStore
from streamd.tiering.restore import RestoreError
from tests.unit.tiering.test_restore import archived_world

ACL = AclBinding(
    resource_type=ResourceType.TOPIC, name="t", pattern_type=PatternType.LITERAL,
    principal="User:alice", host="*", operation=Operation.READ, permission=Permission.ALLOW,
)
CRED = ScramCredential.from_password(MECHANISMS["SCRAM-SHA-256"], "secret", 4096)


@pytest.fixture
async def archive(tmp_path: Path) -> Path:
    bucket = LocalStore(tmp_path / "bucket", fsync=False)
    world, _ = await archived_world(tmp_path, bucket)
    world.acls = {"version": 1, "acls": [ACL.to_json()]}
    world.creds = {"version": 1, "users": {"alice": {"SCRAM-SHA-256": credential_to_json(CRED)}}}
    await world.tick()
    await world.close()
    return tmp_path / "bucket"


def cfg(tmp_path: Path, bucket: Path, data: str = "restored") -> config_mod.BrokerConfig:
    return config_mod.load(
        None, [f"data_dir={tmp_path / data}", f"tiering.store=file://{bucket}"], environ={}
    )


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".clean-shutdown"
    }


async def test_full_restore_writes_every_store(tmp_path: Path, archive: Path) -> None:
    config = cfg(tmp_path, archive)
    result = await run_restore(config)
    assert result.written and result.complete, result.not_restored
    assert result.restored_groups == 1 and result.restored_offsets == 1
    data = config.data_dir

    offsets = OffsetLog(data / "groups")
    snapshot = offsets.load()
    offsets.close()
    assert snapshot["g"][("t", 0)].offset == 17 and snapshot["g"][("t", 0)].metadata == "m"
    acls = AclStore(data / "security")
    acls.load()
    assert acls.all() == (ACL,)
    creds = CredentialStore(data / "security")
    creds.load()
    assert creds.get("alice", "SCRAM-SHA-256") == CRED
    assert '"c1"' in (data / "cluster.json").read_text()

    first = files(data)
    with pytest.raises(RestoreError, match=r"is not empty \(.*2 topic\(s\): t, u.*--force"):
        await run_restore(config)
    await run_restore(config, force=True)
    assert files(data) == first, "a second run yields the same data_dir"


async def test_dry_run_writes_nothing(tmp_path: Path, archive: Path) -> None:
    config = cfg(tmp_path, archive)
    result = await run_restore(config, dry_run=True)
    assert not result.written and [t.name for t in result.plan.topics] == ["t", "u"]
    assert not config.data_dir.exists()


async def test_topic_restore_keeps_the_rest_of_the_data_dir(
    tmp_path: Path, archive: Path
) -> None:
    config = cfg(tmp_path, archive)
    other = OffsetLog(config.data_dir / "groups")
    other.load()
    other.close()
    assert describe_contents(config.data_dir) == "groups/"
    result = await run_restore(config, topics=["u"], force=True)
    assert [t.name for t in result.plan.topics] == ["u"]
    assert sorted(p.name for p in (config.data_dir / "topics").iterdir()) == ["u"]
    assert not (config.data_dir / "security").exists(), "--topic leaves ACLs and users alone"


def test_describe_contents_ignores_empty_directories(tmp_path: Path) -> None:
    assert describe_contents(tmp_path / "missing") == ""
    (tmp_path / "d" / "topics").mkdir(parents=True)
    assert describe_contents(tmp_path / "d") == ""
    (tmp_path / "d" / "cluster.json").write_text("{}")
    assert describe_contents(tmp_path / "d") == "cluster.json"


def test_restore_command_refuses_and_plans(tmp_path: Path, archive: Path) -> None:
    from click.testing import CliRunner

    from streamd.cli.main import cli

    args = ["restore", "--set", f"data_dir={tmp_path / 'cli'}",
            "--set", f"tiering.store=file://{archive}"]
    runner = CliRunner()
    dry = runner.invoke(cli, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "restore plan (dry run" in dry.output.lower() and "0:[0," in dry.output
    assert not (tmp_path / "cli").exists()
    done = runner.invoke(cli, args)
    assert done.exit_code == 0, done.output
    again = runner.invoke(cli, args)
    assert again.exit_code == 1 and "is not empty" in again.output
