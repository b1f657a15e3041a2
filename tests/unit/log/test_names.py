import pytest

from streamd.errors import InvalidTopic
from streamd.log.names import validate_topic_name


@pytest.mark.parametrize("name", ["a", "orders", "my.topic_v2-1", "x" * 249, "..."])
def test_legal_names(name: str) -> None:
    validate_topic_name(name)


@pytest.mark.parametrize(
    "name", ["", ".", "..", "x" * 250, "a/b", "a b", "ünï", "../etc", "a\x00", "t:1"]
)
def test_illegal_names(name: str) -> None:
    with pytest.raises(InvalidTopic):
        validate_topic_name(name)
