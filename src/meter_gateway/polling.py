"""One poll task per bus: due poll classes per meter, staggered meters, back-off for silent meters, statistics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from array import array
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from operator import attrgetter

from .aio import cancel_and_wait
from .config import MeterConfig
from .core.catalogue import PointKind, PollClass, load_catalogue
from .core.table import COMM_STATUS, PointTable
from .drivers.base import Driver, DriverError, NoResponse, WrongDevice

log = logging.getLogger(__name__)


class Periods:
    """The newest read-to-read periods of one poll class, oldest first: a ring of machine floats (a deque of float
    objects costs four times the memory, and there is one per meter and class)."""

    __slots__ = ("_full", "_next", "_ring")

    def __init__(self, size: int = 64) -> None:
        self._ring = array("d", bytes(8 * size))
        self._next = 0
        self._full = False

    def append(self, period: float) -> None:
        """Add the newest period, dropping the oldest beyond the ring's size."""
        self._ring[self._next] = period
        self._next = (self._next + 1) % len(self._ring)
        self._full = self._full or self._next == 0

    def __len__(self) -> int:
        return len(self._ring) if self._full else self._next

    def __iter__(self) -> Iterator[float]:
        if self._full:
            yield from self._ring[self._next :]
        yield from self._ring[: self._next]


@dataclass(slots=True)
class MeterSchedule:
    """Polling state of one meter on its bus."""

    meter: MeterConfig
    points_by_class: dict[PollClass, tuple[str, ...]]
    due: dict[PollClass, float] = field(default_factory=dict)  # monotonic times
    failures: int = 0
    backoff_until: float = 0.0
    polls: int = 0  # polls answered
    attempts: int = 0  # polls tried, answered or not
    last_poll: float | None = None  # monotonic time of the last successful poll
    bad_points: set[str] = field(default_factory=set)  # points whose last read was refused (bad data)
    last_read: dict[PollClass, float] = field(default_factory=dict)  # monotonic start of the last good read
    periods: dict[PollClass, Periods] = field(default_factory=dict)  # recent read-to-read periods per class
    #: when the meter is next due (its earliest class, not before its back-off): kept by `reschedule()` whenever
    #: `due` or `backoff_until` changes, so finding the next meter of a bus does not look into every meter's classes
    next_at: float = math.inf

    def reschedule(self) -> None:
        """Recompute `next_at` after a change of `due` or `backoff_until`."""
        self.next_at = max(min(self.due.values()), self.backoff_until) if self.due else math.inf

    def period_stats(self, pc: PollClass) -> tuple[float, float] | None:
        """(mean, max) of the recent periods of a poll class, or None before two good reads."""
        d = self.periods.get(pc)
        if not d:
            return None
        return sum(d) / len(d), max(d)


PERIODS_KEPT = 64  # read-to-read periods remembered per meter and poll class
_next_at = attrgetter("next_at")


class BusRunner:
    """Owns a driver and polls its meters; the only user of the bus besides accepted writes."""

    def __init__(
        self,
        bus_id: str,
        meters: list[MeterConfig],
        meter_points: dict[str, frozenset[str]],
        driver: Driver,
        table: PointTable,
        fail_after: int = 2,
        backoff_max: float = 60.0,
    ) -> None:
        self.bus_id = bus_id
        self.driver = driver
        self.table = table
        self.fail_after = fail_after
        self.backoff_max = backoff_max
        cat = load_catalogue()
        self.schedules: dict[str, MeterSchedule] = {}
        classes: dict[frozenset[str], dict[PollClass, tuple[str, ...]]] = {}  # meters of one profile share tuples
        for m in meters:
            supported = meter_points[m.id]
            shared = classes.get(supported)
            if shared is None:
                by_class: dict[PollClass, list[str]] = {}
                for p in cat:
                    if p.name in supported and p.kind is not PointKind.COMMAND and p.name != COMM_STATUS:
                        by_class.setdefault(p.poll_class, []).append(p.name)
                shared = classes[supported] = {k: tuple(v) for k, v in by_class.items()}
            self.schedules[m.id] = MeterSchedule(m, dict(shared))
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._gate = asyncio.Lock()  # held around each poll; `paused()` holds it to have the line alone
        self.cycle_started: float | None = None
        self._cycle_seen: set[str] = set()
        #: set once every meter of the bus has been polled (answered or not) since start: the first full round
        self.first_round = asyncio.Event()

    @property
    def meters(self) -> list[MeterConfig]:
        """The meters of this bus."""
        return [s.meter for s in self.schedules.values()]

    async def start(self) -> None:
        """Open the driver and start polling."""
        await self.driver.open()
        now = time.monotonic()
        for s in self.schedules.values():
            for pc in s.points_by_class:
                s.due[pc] = now  # first poll reads everything, meter after meter
            s.reschedule()
        self._task = asyncio.create_task(self._run(), name=f"poll-{self.bus_id}")

    async def stop(self) -> None:
        """Stop polling and close the driver."""
        if self._task is not None:
            if not await cancel_and_wait(self._task):
                log.error("bus %s: the poll task did not stop", self.bus_id)
            self._task = None
        await self.driver.close()

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[Driver]:
        """Hold this bus's polling (after the poll in progress) while the caller uses its driver alone."""
        async with self._gate:
            log.info("bus %s: polling paused", self.bus_id)
            try:
                yield self.driver
            finally:
                log.info("bus %s: polling resumed", self.bus_id)

    def request_poll(self, meter_id: str, classes: tuple[PollClass, ...] | None = None) -> None:
        """Ask for an early poll of a meter (e.g. configuration after a write)."""
        s = self.schedules[meter_id]
        now = time.monotonic()
        for pc in classes or tuple(s.points_by_class):
            if pc in s.due:
                s.due[pc] = now
        s.reschedule()
        self._wake.set()

    def _next(self) -> tuple[float, MeterSchedule | None]:
        s = min(self.schedules.values(), key=_next_at, default=None)  # the first of the earliest, as before
        if s is None or s.next_at == math.inf:
            return math.inf, None
        return s.next_at, s

    async def _run(self) -> None:
        n = max(1, len(self.schedules))
        t_start = time.monotonic()
        # meter i of n starts the rhythm of all its classes at i/n of its fastest interval: the classes of one meter
        # stay aligned (10 s, 30 s and 60 s polls coincide and merge into the same reads) and meters spread evenly
        offsets = {
            mid: i / n * min((s.meter.interval(pc) for pc in s.points_by_class), default=10.0)
            for i, (mid, s) in enumerate(self.schedules.items())
        }
        first = set(self.schedules)
        while True:
            t, s = self._next()
            if s is None:
                await asyncio.sleep(3600)
                continue
            delay = t - time.monotonic()
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                continue
            now = time.monotonic()
            due = tuple(pc for pc, d in s.due.items() if d <= now + 0.05)
            if s.failures and len(due) > 1:
                due = due[:1]  # probe a silent meter with one class; the rest follows once it answers
            async with self._gate:
                ok = await self.poll(s, due)
            after = time.monotonic()
            mid = s.meter.id
            for pc in due:
                interval = s.meter.interval(pc)
                nxt = t_start + offsets[mid] + interval if mid in first else s.due[pc] + interval
                while nxt <= after:
                    nxt += interval  # a late poll skips the slots it missed and keeps the rhythm
                s.due[pc] = nxt
            first.discard(mid)
            if not ok:
                k = min(s.failures, 10)
                base = min(s.meter.interval(pc) for pc in s.due) if s.due else 10.0
                s.backoff_until = after + min(self.backoff_max, base * (2 ** max(0, k - self.fail_after)))
            else:
                s.backoff_until = 0.0
            s.reschedule()

    async def poll(self, s: MeterSchedule, classes: tuple[PollClass, ...]) -> bool:
        """Read the points of the given classes from one meter into the table; False if it did not answer."""
        points = [p for pc in classes for p in s.points_by_class.get(pc, ())]
        mid = s.meter.id
        t0 = time.monotonic()
        s.attempts += 1
        try:
            readings = await self.driver.read(s.meter, points)
        except WrongDevice as exc:  # refused at once, every point flagged, nothing published
            s.failures += 1
            self.table.set_wrong_device(mid, str(exc))
            self._cycle_done(mid, t0)
            return False
        except (NoResponse, DriverError) as exc:
            s.failures += 1
            if s.failures >= self.fail_after:
                self.table.set_comm(mid, False, str(exc))
            else:
                log.debug("meter %s: %s (failure %d of %d)", mid, exc, s.failures, self.fail_after)
            self._cycle_done(mid, t0)
            return False
        except Exception:
            log.exception("meter %s: unexpected error while polling", mid)
            s.failures += 1
            return False
        read_time = time.time()
        if s.failures >= self.fail_after:
            # back from communication failure: every class is read again now, not at its next slot, so no point
            # keeps its comm-failure quality for up to a configuration interval once the meter answers
            for pc in s.due:
                if pc not in classes:
                    s.due[pc] = t0
            s.reschedule()
        s.failures = 0
        self.table.set_comm(mid, True)
        bad = {}
        was_bad = bool(s.bad_points)
        healed = s.bad_points.intersection(points)  # flagged by an earlier poll, read again now
        for r in readings:
            if r.error is not None:
                # sentinel, exception reply, undecodable: not published, last good value kept and flagged
                self.table.mark_bad(mid, r.point, r.error, log_it=False)
                bad[r.point] = r.error
                continue
            s.bad_points.discard(r.point)
            self.table.update(mid, r.point, r.value, r.raw, read_time=read_time)  # type: ignore[arg-type]
        if bad and not set(bad) <= s.bad_points:  # one line per change of state of the meter, not per point
            first = next(iter(bad.items()))
            log.warning("meter %s: %d point(s) not published (bad data), e.g. %s: %s", mid, len(bad), *first)
        elif was_bad and not bad and not s.bad_points:
            log.info("meter %s: every point publishes again", mid)
        s.bad_points |= set(bad)
        if healed and not bad and s.bad_points:
            # the meter answers what it refused before (as after a spell of exception replies): points of other
            # classes flagged then are read again now, not at their next slot (for configuration, up to its interval)
            for pc, names in s.points_by_class.items():
                if pc not in classes and pc in s.due and s.bad_points.intersection(names):
                    s.due[pc] = t0
        for pc in classes:
            prev = s.last_read.get(pc)
            if prev is not None:
                periods = s.periods.get(pc)
                if periods is None:
                    periods = s.periods[pc] = Periods(PERIODS_KEPT)
                periods.append(t0 - prev)
            s.last_read[pc] = t0
        s.last_poll = t0
        s.polls += 1
        self._cycle_done(mid, t0)
        return True

    def _cycle_done(self, meter_id: str, t0: float) -> None:
        """A poll cycle ends when every meter of the bus has been polled once since it began."""
        if self.cycle_started is None:
            self.cycle_started = t0
        self._cycle_seen.add(meter_id)
        if len(self._cycle_seen) >= len(self.schedules):
            self.first_round.set()
            self.driver.stats.observe_cycle(time.monotonic() - self.cycle_started)
            self._cycle_seen.clear()
            self.cycle_started = None

    async def write(self, meter_id: str, point: str, value: float | int | bool) -> None:
        """Pass an accepted write to the meter (between two poll transactions)."""
        await self.driver.write(self.schedules[meter_id].meter, point, value)

    async def read_now(self, meter_id: str, points: list[str]) -> None:
        """Read points immediately into the table (read-back after a write)."""
        s = self.schedules[meter_id]
        readings = await self.driver.read(s.meter, points)
        now = time.time()
        for r in readings:
            if r.error is None:
                self.table.update(meter_id, r.point, r.value, r.raw, read_time=now)  # type: ignore[arg-type]
