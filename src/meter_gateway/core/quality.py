"""The one quality model every upstream presents (DESIGN.md section 5)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Quality(StrEnum):
    """How far a value can be trusted."""

    GOOD = "good"
    STALE = "stale"  # last read older than N x its poll interval
    COMM_FAILURE = "comm-failure"  # the meter does not answer
    BAD_DATA = "bad-data"  # the meter answered something implausible; last good value kept
    UNSUPPORTED = "unsupported"  # the meter's profile has no such point
    WRONG_DEVICE = "wrong-device"  # the meter is not what its profile reads (e.g. an M-Bus heat meter): refused
    UNKNOWN = "unknown"  # never read yet (start-up)


@dataclass(frozen=True, slots=True)
class PointValue:
    """A value with its quality, the time of the read that produced it and the time it last changed."""

    value: float | int | bool | None
    quality: Quality
    read_time: float | None = None  # wall-clock seconds of the read that produced `value`
    change_time: float | None = None  # wall-clock seconds when `value` last changed
    raw: tuple[int, ...] | None = None  # raw register words (or None)
    reason: str = ""  # why quality is not good

    @property
    def is_good(self) -> bool:
        """True when the value may be presented as current."""
        return self.quality is Quality.GOOD
