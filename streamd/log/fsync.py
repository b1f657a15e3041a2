"""When appended bytes are forced to disk.

- ``always``: an append is acknowledged only after an fsync covering it (group commit: one
  fsync covers every batch written since the previous one).
- ``<ms>`` (interval): appends return after the write; the broker's housekeeping fsyncs every
  partition at least every ``<ms>`` milliseconds.
- ``never``: the operating system decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from streamd.errors import ConfigError


@dataclass(frozen=True, slots=True)
class FsyncPolicy:
    mode: Literal["always", "interval", "never"]
    interval_ms: int = 0

    @classmethod
    def parse(cls, text: str | int) -> FsyncPolicy:
        raw = str(text).strip().lower()
        if raw == "always":
            return cls("always")
        if raw == "never":
            return cls("never")
        if raw.startswith("interval:"):
            raw = raw.removeprefix("interval:")
        try:
            interval = int(raw)
        except ValueError:
            raise ConfigError(
                f"fsync: {text!r} must be 'always', 'never' or an interval in milliseconds"
            ) from None
        if interval <= 0:
            raise ConfigError(f"fsync: interval must be a positive number of ms, got {interval}")
        return cls("interval", interval)

    @property
    def always(self) -> bool:
        return self.mode == "always"

    def __str__(self) -> str:
        return str(self.interval_ms) if self.mode == "interval" else self.mode
