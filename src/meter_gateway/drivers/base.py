"""The small interface every downstream driver implements, and the statistics every bus keeps."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import MeterConfig

log = logging.getLogger(__name__)


class DriverError(Exception):
    """Base of driver errors."""


class NoResponse(DriverError):
    """The meter did not answer (timeout, after retries) or the link is down."""


class FrameError(DriverError):
    """The reply was malformed (CRC, length, wrong unit/function)."""


class MeterException(DriverError):
    """The meter answered with a protocol exception (e.g. Modbus illegal address)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class WrongDevice(DriverError):
    """The meter answers but is not what its profile reads (another medium or make): refused, never published."""


class WriteRejected(DriverError):
    """The profile declares no way to write this point or command."""


@dataclass(frozen=True, slots=True)
class PointReading:
    """One decoded point from a poll: a value, or the reason there is none (sentinel, undecodable)."""

    point: str
    value: float | int | bool | None
    raw: tuple[int, ...] | None = None
    error: str | None = None


#: Upper bounds (seconds) of the poll-cycle duration histogram.
CYCLE_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)


@dataclass
class BusStats:
    """Counters of one bus, read by the upstream diagnostics and Prometheus."""

    transactions: int = 0
    failed_transactions: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    frame_errors: int = 0
    exceptions: int = 0
    link_resets: int = 0  # M-Bus SND_NKE sent and acknowledged (or, to 253, unanswered)
    repeated_replies: int = 0  # M-Bus telegrams received again in place of the next one (not read as new data)
    incomplete_reads: int = 0  # M-Bus readouts stopped by max_telegrams before the meter's last telegram
    loop_stalls: int = 0  # transactions repeated because the gateway's own event loop was held up past the timeout
    busy_time: float = 0.0  # seconds the bus spent in transactions
    cycles: int = 0
    last_cycle_duration: float | None = None
    cycle_durations: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    started: float = 0.0  # monotonic time the bus started
    cycle_bucket_counts: list[int] = field(default_factory=lambda: [0] * len(CYCLE_BUCKETS))
    cycle_sum: float = 0.0

    def observe_cycle(self, duration: float) -> None:
        """Record one full poll cycle (every meter of the bus polled once)."""
        self.cycles += 1
        self.last_cycle_duration = duration
        self.cycle_durations.append(duration)
        self.cycle_sum += duration
        for i, bound in enumerate(CYCLE_BUCKETS):
            if duration <= bound:
                self.cycle_bucket_counts[i] += 1

    def as_dict(self) -> dict[str, Any]:
        """Plain counters for CLI and JSON output."""
        return {k: v for k, v in self.__dict__.items() if k not in ("cycle_durations",)}


class Driver(ABC):
    """A downstream bus: owns its transport; one poll task uses it at a time (plus accepted writes)."""

    kind: str = "abstract"

    #: frames kept for `meter-gateway trace` (commissioning): the newest ones, per bus
    TRACE_FRAMES = 1000

    def __init__(self) -> None:
        self.stats = BusStats()
        self._stall_logged = False
        self.frames: deque[tuple[int, float, str, bytes]] = deque(maxlen=self.TRACE_FRAMES)
        self._frame_seq = 0

    def record_frame(self, direction: str, data: bytes) -> None:
        """Keep a frame sent ("tx") or received ("rx") for `trace`: sequence number, wall-clock time, bytes."""
        self._frame_seq += 1
        self.frames.append((self._frame_seq, time.time(), direction, bytes(data)))
        if log.isEnabledFor(logging.DEBUG):  # log_level: debug shows the bus traffic too
            bus = getattr(getattr(self, "bus", None), "id", "?")
            log.debug("bus %s %s %s", bus, direction.upper(), bytes(data).hex(" ").upper())

    def held_up(self, t0: float, timeout: float, bus_id: str) -> bool:
        """Whether a transaction begun at monotonic t0 outlived its timeout because the gateway itself was held up.

        A timeout noticed long after it was due means the event loop was busy (a garbage collection, a burst of
        work): the request may have left late or its whole reply been handled late, which says nothing about the
        meter. The caller repeats the transaction once instead of counting a failure.
        """
        if time.monotonic() - t0 <= 1.5 * timeout + 0.05:
            return False
        self.stats.loop_stalls += 1
        if not self._stall_logged:
            self._stall_logged = True
            log.warning(
                "bus %s: a transaction outlived its %s s timeout because the gateway was busy; repeated",
                bus_id,
                timeout,
            )
        return True

    @abstractmethod
    async def open(self) -> None:
        """Open the transport (serial port or TCP connection). Must not raise for a missing meter."""

    @abstractmethod
    async def close(self) -> None:
        """Close the transport; idempotent."""

    @abstractmethod
    async def read(self, meter: MeterConfig, points: Sequence[str]) -> list[PointReading]:
        """Read the given points of one meter; raise NoResponse when the meter does not answer at all."""

    @abstractmethod
    async def write(self, meter: MeterConfig, point: str, value: float | int | bool) -> None:
        """Write a configuration point or carry out a command (value: for Sync_Clock the Unix time)."""

    def transactions_for(self, meter: MeterConfig, points: Sequence[str]) -> int:
        """How many bus transactions reading `points` takes (for planning and statistics)."""
        return 1
