"""The point table: one current value per (meter, point), with quality, sanity checks and change listeners."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from .catalogue import Catalogue, PointDef, PointKind, PollClass
from .quality import PointValue, Quality

log = logging.getLogger(__name__)

COMM_STATUS = "Communication_Status"

Listener = Callable[[str, str, PointValue, PointValue], None]
"""Called as listener(meter_id, point_name, old, new) whenever a value or its quality changes."""


@dataclass(slots=True)
class MeterState:
    """Per-meter bookkeeping in the table."""

    meter_id: str
    points: frozenset[str]  # points the profile supports
    intervals: dict[PollClass, float]
    max_power_kw: float
    energy_wrap: float | None  # declared wrap value of energy registers, if any
    online: bool | None = None  # None until first poll result
    comm_reason: str = ""
    last_good: dict[PollClass, float] = field(default_factory=dict)
    errors: int = 0
    bad_data: int = 0
    alarms: list[str] = field(default_factory=list)
    profile_warning: str = ""  # the meter does not identify as its configured profile (set at start)
    #: no good value of the meter turns stale before this time (a lower bound kept by the table): the periodic
    #: staleness refresh skips the meter until then instead of looking at each of its points every second
    stale_check: float = -math.inf


_NOT_READ = PointValue(None, Quality.UNKNOWN, reason="")
_UNSUPPORTED = PointValue(None, Quality.UNSUPPORTED, reason="")


@dataclass(frozen=True, slots=True)
class Alarm:
    """A data-quality alarm raised by the table (energy going backwards, impossible jump)."""

    time: float
    meter_id: str
    point: str
    message: str


class PointTable:
    """Holds every point of every meter; all upstream servers read from here and nothing else."""

    def __init__(self, catalogue: Catalogue, clock: Callable[[], float], stale_factor: float = 3.0) -> None:
        self.catalogue = catalogue
        self.clock = clock
        self._stale_factor = stale_factor
        self._poll_class = {p.name: p.poll_class for p in catalogue}
        self._values: dict[str, dict[str, PointValue]] = {}
        self._meters: dict[str, MeterState] = {}
        self._listeners: list[Listener] = []
        self._alarm_listeners: list[Callable[[Alarm], None]] = []
        self.alarms: list[Alarm] = []
        #: meters of one profile share one frozenset of point names (a set per meter costs ~1 KiB each)
        self._point_sets: dict[frozenset[str], frozenset[str]] = {}

    @property
    def stale_factor(self) -> float:
        """A good value turns stale when older than this many times its poll interval."""
        return self._stale_factor

    @stale_factor.setter
    def stale_factor(self, factor: float) -> None:
        self._stale_factor = factor
        for state in self._meters.values():
            state.stale_check = -math.inf  # look at every point again on the next refresh

    # -- set-up ---------------------------------------------------------------------------------
    def add_meter(
        self,
        meter_id: str,
        points: Iterable[str],
        intervals: dict[PollClass, float],
        max_power_kw: float = 1000.0,
        energy_wrap: float | None = None,
    ) -> None:
        """Register a meter and the points its profile supports; other points read as unsupported."""
        supported = frozenset(points) | {COMM_STATUS}
        unknown = supported - set(self.catalogue.names())
        if unknown:
            raise KeyError(f"meter {meter_id}: unknown points {sorted(unknown)}")
        supported = self._point_sets.setdefault(supported, supported)
        self._meters[meter_id] = MeterState(meter_id, supported, dict(intervals), max_power_kw, energy_wrap)
        # PointValue is frozen: every meter's not-yet-read and unsupported points share two instances
        self._values[meter_id] = {p.name: _NOT_READ if p.name in supported else _UNSUPPORTED for p in self.catalogue}

    def remove_meter(self, meter_id: str) -> None:
        """Forget a meter (configuration reload)."""
        self._meters.pop(meter_id, None)
        self._values.pop(meter_id, None)

    def add_listener(self, listener: Listener) -> None:
        """Call `listener` on every change of value or quality."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling `listener`."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def add_alarm_listener(self, listener: Callable[[Alarm], None]) -> None:
        """Call `listener` for each data-quality alarm."""
        self._alarm_listeners.append(listener)

    def remove_alarm_listener(self, listener: Callable[[Alarm], None]) -> None:
        """Stop calling `listener` for alarms."""
        if listener in self._alarm_listeners:
            self._alarm_listeners.remove(listener)

    # -- queries --------------------------------------------------------------------------------
    @property
    def meter_ids(self) -> tuple[str, ...]:
        """Ids of all meters in the table, in insertion order."""
        return tuple(self._meters)

    def meter(self, meter_id: str) -> MeterState:
        """Bookkeeping of one meter."""
        return self._meters[meter_id]

    def supports(self, meter_id: str, point: str) -> bool:
        """Whether the meter's profile provides `point`."""
        return point in self._meters[meter_id].points

    def get(self, meter_id: str, point: str) -> PointValue:
        """Current value of one point, with staleness evaluated now."""
        return self._effective(meter_id, self.catalogue.get(point), self._values[meter_id][point], self.clock())

    def meter_values(self, meter_id: str) -> dict[str, PointValue]:
        """All points of one meter, with staleness evaluated now."""
        now = self.clock()
        vals = self._values[meter_id]
        return {p.name: self._effective(meter_id, p, vals[p.name], now) for p in self.catalogue}

    def snapshot(self) -> dict[str, dict[str, PointValue]]:
        """A consistent copy of the whole table, staleness evaluated at one instant."""
        now = self.clock()
        return {
            mid: {p.name: self._effective(mid, p, vals[p.name], now) for p in self.catalogue}
            for mid, vals in self._values.items()
        }

    def seconds_since_good(self, meter_id: str, poll_class: PollClass) -> float | None:
        """Seconds since the last good read of a poll class, or None if never."""
        t = self._meters[meter_id].last_good.get(poll_class)
        return None if t is None else max(0.0, self.clock() - t)

    def _effective(self, meter_id: str, p: PointDef, v: PointValue, now: float) -> PointValue:
        if v.quality is not Quality.GOOD or p.name == COMM_STATUS:
            return v
        interval = self._meters[meter_id].intervals.get(p.poll_class)
        if interval and v.read_time is not None and now - v.read_time > self.stale_factor * interval:
            return replace(v, quality=Quality.STALE, reason=f"last read {now - v.read_time:.0f} s ago")
        return v

    # -- updates from drivers -------------------------------------------------------------------
    def _set(self, meter_id: str, point: str, new: PointValue) -> None:
        vals = self._values[meter_id]
        old = vals[point]
        vals[point] = new
        if new.quality is Quality.GOOD and new.read_time is not None and point != COMM_STATUS:
            state = self._meters[meter_id]
            interval = state.intervals.get(self._poll_class[point])
            if interval and new.read_time + self._stale_factor * interval < state.stale_check:
                state.stale_check = new.read_time + self._stale_factor * interval
        if old.value != new.value or old.quality is not new.quality:
            for listener in tuple(self._listeners):
                try:
                    listener(meter_id, point, old, new)
                except Exception:  # a broken listener must not stop polling
                    log.exception("table listener %r failed", listener)

    def update(
        self,
        meter_id: str,
        point: str,
        value: float | int | bool,
        raw: tuple[int, ...] | None = None,
        read_time: float | None = None,
    ) -> PointValue:
        """Store a freshly read value after sanity checks; returns what the table now holds."""
        now = self.clock() if read_time is None else read_time
        pdef = self.catalogue.get(point)
        old = self._values[meter_id][point]
        state = self._meters[meter_id]
        if isinstance(value, float) and not math.isfinite(value):
            return self._reject(meter_id, point, old, now, f"non-finite value {value}")
        implausible = pdef.implausible(value)
        if implausible:
            return self._reject(meter_id, point, old, now, implausible)
        if pdef.is_energy and old.value is not None and old.read_time is not None:
            problem = self._energy_problem(state, pdef, float(old.value), float(value), now - old.read_time)
            if problem:
                return self._reject(meter_id, point, old, now, problem)
        change = now if (old.value != value or old.change_time is None) else old.change_time
        new = PointValue(value, Quality.GOOD, now, change, raw, "")
        self._set(meter_id, point, new)
        state.last_good[pdef.poll_class] = now
        return new

    def _energy_problem(self, state: MeterState, pdef: PointDef, old: float, new: float, dt: float) -> str:
        delta = new - old
        if delta < 0:
            if state.energy_wrap and old > 0.9 * state.energy_wrap and new < 0.1 * state.energy_wrap:
                return ""  # declared register wrap
            return f"energy went backwards from {old} to {new} {pdef.unit}"
        # the largest increase the meter can produce in dt, plus one register step of margin
        limit = state.max_power_kw * max(dt, 1.0) / 3600.0 * 1.05 + (pdef.resolution or 0.01)
        if delta > limit:
            return f"energy jumped {delta:.3f} {pdef.unit} in {dt:.0f} s (max {limit:.3f} at {state.max_power_kw} kW)"
        return ""

    def _reject(
        self, meter_id: str, point: str, old: PointValue, now: float, reason: str, log_it: bool = True
    ) -> PointValue:
        state = self._meters[meter_id]
        state.bad_data += 1
        alarm = Alarm(now, meter_id, point, reason)
        self.alarms.append(alarm)
        del self.alarms[:-1000]
        if log_it and old.quality is not Quality.BAD_DATA:
            log.warning("meter %s point %s: bad data, value not published: %s", meter_id, point, reason)
        for listener in tuple(self._alarm_listeners):
            listener(alarm)
        # keep the last good value and its read time: the value is not presented fresher than it is
        new = replace(old, quality=Quality.BAD_DATA, reason=reason)
        self._set(meter_id, point, new)
        return new

    def mark_bad(self, meter_id: str, point: str, reason: str, log_it: bool = True) -> PointValue:
        """Flag a point whose reply could not be decoded (sentinel, NaN...): last good value stays."""
        old = self._values[meter_id][point]
        return self._reject(meter_id, point, old, self.clock(), reason, log_it)

    def flag_meter(self, meter_id: str, message: str) -> None:
        """Raise a meter-level alarm that stays on the meter (e.g. its profile does not match the model)."""
        state = self._meters[meter_id]
        state.profile_warning = message
        alarm = Alarm(self.clock(), meter_id, "", message)
        self.alarms.append(alarm)
        for listener in tuple(self._alarm_listeners):
            listener(alarm)

    def set_comm(self, meter_id: str, online: bool, reason: str = "") -> None:
        """Record the meter's communication state; offline turns every read point into comm-failure."""
        state = self._meters[meter_id]
        if state.online is online:
            return
        first = state.online is None
        state.online = online
        state.comm_reason = reason
        now = self.clock()
        if online:
            log.info("meter %s: communication %s", meter_id, "established" if first else "restored")
        else:
            state.errors += 1
            log.warning("meter %s: communication lost: %s", meter_id, reason)
        self._set(meter_id, COMM_STATUS, PointValue(online, Quality.GOOD, now, now, None, ""))
        if online:
            # commands are never read from the meter: their quality follows the link (read points recover when read)
            for name in state.points:
                old = self._values[meter_id][name]
                if old.quality is Quality.COMM_FAILURE and self.catalogue.get(name).kind is PointKind.COMMAND:
                    self._set(meter_id, name, replace(old, quality=Quality.GOOD, reason=""))
        else:
            for name in state.points:
                if name == COMM_STATUS:
                    continue
                old = self._values[meter_id][name]
                if old.quality is not Quality.UNSUPPORTED:
                    self._set(meter_id, name, replace(old, quality=Quality.COMM_FAILURE, reason=reason))

    def set_wrong_device(self, meter_id: str, reason: str) -> None:
        """The meter answered but is not what its profile reads: every read point wrong-device, no value kept."""
        state = self._meters[meter_id]
        if state.comm_reason != reason or state.online is not False:
            log.error("meter %s: refused: %s", meter_id, reason)
        state.online = False
        state.comm_reason = reason
        now = self.clock()
        self._set(meter_id, COMM_STATUS, PointValue(False, Quality.GOOD, now, now, None, ""))
        for name in state.points:
            if name == COMM_STATUS:
                continue
            old = self._values[meter_id][name]
            if old.quality is not Quality.UNSUPPORTED and old.quality is not Quality.WRONG_DEVICE:
                self._set(meter_id, name, PointValue(None, Quality.WRONG_DEVICE, None, None, None, reason))

    def is_online(self, meter_id: str) -> bool:
        """True when the meter's last poll succeeded."""
        return bool(self._meters[meter_id].online)

    def refresh_staleness(self) -> None:
        """Notify listeners of values that turned stale since the last call (call periodically)."""
        now = self.clock()
        good = Quality.GOOD
        points = [(p.name, p.poll_class) for p in self.catalogue if p.name != COMM_STATUS]
        for mid, vals in self._values.items():
            state = self._meters[mid]
            if now < state.stale_check - 0.001:  # (a margin for rounding) no good value of the meter is stale yet
                continue
            # the same rule as _effective, inlined: this runs every second over every point of a meter that may
            # have a stale value; what stays good sets the meter's next check (values stored meanwhile lower it)
            limits = {pc: self._stale_factor * iv for pc, iv in state.intervals.items() if iv}
            state.stale_check = math.inf
            nxt = math.inf
            for name, pc in points:
                v = vals[name]
                if v.quality is good and v.read_time is not None and pc in limits:
                    if now - v.read_time > limits[pc]:
                        self._set(mid, name, self._effective(mid, self.catalogue.get(name), v, now))
                    elif v.read_time + limits[pc] < nxt:
                        nxt = v.read_time + limits[pc]
            state.stale_check = min(state.stale_check, nxt)
