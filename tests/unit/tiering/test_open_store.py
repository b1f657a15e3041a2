from __future__ import annotations

from pathlib import Path

import pytest

from streamd.errors import ConfigError
from streamd.tiering.local_store import LocalStore
from streamd.tiering.s3_store import S3Store
from streamd.tiering.store import open_store


def test_file_url(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/objs")
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path / "objs"


def test_s3_url_with_prefix() -> None:
    store = open_store(
        "s3://my-bucket/some/prefix/",
        s3_options={"endpoint_url": "http://127.0.0.1:9", "region": "eu-west-1"},
    )
    assert isinstance(store, S3Store)
    assert store.description == "s3://my-bucket/some/prefix at http://127.0.0.1:9"


@pytest.mark.parametrize(
    "url", ["file://relative/dir", "file:relative", "s3://", "http://x/y", "s3://b?x=1", "/abs/dir"]
)
def test_bad_urls_name_the_config_key(url: str) -> None:
    with pytest.raises(ConfigError, match="tiering.store"):
        open_store(url)


def test_bad_s3_options() -> None:
    with pytest.raises(ConfigError, match="tiering.s3"):
        open_store("s3://b", s3_options={"no_such_option": 1})
    with pytest.raises(ConfigError, match="access_key_id"):
        open_store("s3://b", s3_options={"access_key_id": "only-half"})


def test_empty_strings_mean_unset() -> None:
    """streamd.config writes "" for unset S3 settings; they must fall back to the AWS chain."""
    store = open_store(
        "s3://b", s3_options={"endpoint_url": "", "access_key_id": "", "secret_access_key": ""}
    )
    assert isinstance(store, S3Store)
    assert store.description == "s3://b at the default AWS endpoint"
