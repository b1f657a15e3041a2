"""Topic name validation.

A topic name becomes a directory name and part of object-store keys, so it is checked against
Kafka's rules before anything touches the filesystem: ``[a-zA-Z0-9._-]``, 1 to 249 characters,
and neither ``.`` nor ``..``.
"""

from __future__ import annotations

import re

from streamd.errors import InvalidTopic

MAX_TOPIC_NAME_LENGTH = 249
_LEGAL = re.compile(r"[a-zA-Z0-9._-]+")


def validate_topic_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidTopic("topic name must not be empty")
    if name in (".", ".."):
        raise InvalidTopic(f"topic name cannot be {name!r}")
    if len(name) > MAX_TOPIC_NAME_LENGTH:
        raise InvalidTopic(
            f"topic name is {len(name)} characters long; the limit is {MAX_TOPIC_NAME_LENGTH}"
        )
    if not _LEGAL.fullmatch(name):
        raise InvalidTopic(
            f"topic name {name!r} is illegal: it may contain only ASCII letters, digits, "
            "'.', '_' and '-'"
        )
