"""Times typed into the message browser: epoch milliseconds or ISO-8601 (UTC unless a zone is
given, a bare date is midnight UTC)."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_time(text: str) -> int:
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: expected epoch milliseconds or ISO-8601 "
            "(2024-01-01T00:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)
