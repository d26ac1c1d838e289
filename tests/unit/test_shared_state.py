"""What 250 meters of one profile share instead of holding per meter: read plans, point sets, not-read values,
and the compact ring of read-to-read periods (behaviour unchanged, memory per meter smaller)."""

from __future__ import annotations

import math
import time

from meter_gateway.config import MeterConfig, ModbusTcpBus
from meter_gateway.core.catalogue import DEFAULT_INTERVALS, load_catalogue
from meter_gateway.core.planner import plan_reads
from meter_gateway.core.quality import Quality
from meter_gateway.core.table import PointTable
from meter_gateway.drivers.modbus import ModbusDriver
from meter_gateway.polling import Periods


def test_periods_keep_the_newest_in_order():
    ring = Periods(4)
    assert len(ring) == 0 and list(ring) == []
    for p in (1.0, 2.0, 3.0):
        ring.append(p)
    assert list(ring) == [1.0, 2.0, 3.0] and len(ring) == 3
    for p in (4.0, 5.0, 6.0):
        ring.append(p)
    assert list(ring) == [3.0, 4.0, 5.0, 6.0] and len(ring) == 4
    assert max(ring) == 6.0 and sum(ring) / len(ring) == 4.5


def _meter(mid: str, unit: int) -> MeterConfig:
    return MeterConfig(id=mid, bus="tcp0", address=unit, profile="generic")


def test_meters_of_one_profile_share_one_plan_unless_split(profiles):
    driver = ModbusDriver(ModbusTcpBus(id="tcp0", type="modbus_tcp"), profiles)
    prof = profiles.get("generic")
    points = sorted(prof.points)
    a = driver.plan(_meter("a", 1), points)
    b = driver.plan(_meter("b", 2), list(reversed(points)))  # same set, other order: the same reads
    assert a is b
    assert a == plan_reads(prof, points)
    # a meter that refused a merged read has its own plan; the others keep theirs
    first = a[0]
    split = {(first.function, prof.points[n].address) for n, _ in first.points}
    driver._split["c"] = set(split)
    c = driver.plan(_meter("c", 3), points)
    assert c == plan_reads(prof, points, frozenset(split)) and c != a
    assert driver.plan(_meter("a", 1), points) is a


def test_meters_share_point_sets_and_not_read_values_but_not_updates():
    table = PointTable(load_catalogue(), lambda: 1_000_000.0)
    points = ["Active_Energy_Import", "Active_Power_Total"]
    table.add_meter("a", points, dict(DEFAULT_INTERVALS))
    table.add_meter("b", list(reversed(points)), dict(DEFAULT_INTERVALS))
    assert table.meter("a").points is table.meter("b").points
    table.update("a", "Active_Power_Total", 1.5)
    assert table.get("a", "Active_Power_Total").value == 1.5
    assert table.get("b", "Active_Power_Total").quality is Quality.UNKNOWN
    assert table.get("b", "Voltage_L1_N").quality is Quality.UNSUPPORTED
    table.set_comm("b", False, "silent")
    assert table.get("b", "Active_Power_Total").quality is Quality.COMM_FAILURE
    assert table.get("a", "Active_Power_Total").quality is Quality.GOOD


def test_staleness_refresh_skips_meters_yet_misses_no_stale_value():
    """The refresh looks only at meters that may hold a stale value: after every refresh no stored value is still
    good while older than stale_factor x its interval, whatever the order of reads, refreshes and reloads."""
    import random

    rng = random.Random(19)
    now = [1_000_000.0]
    table = PointTable(load_catalogue(), lambda: now[0], stale_factor=3)
    names = ["Active_Power_Total", "Voltage_L1_N", "Active_Energy_Import", "CT_Primary_Rating"]
    intervals = {**DEFAULT_INTERVALS}
    for mid in ("a", "b", "c"):
        table.add_meter(mid, names, intervals)
    seen: list[tuple[str, str]] = []
    table.add_listener(lambda mid, point, old, new: new.quality is Quality.STALE and seen.append((mid, point)))
    energy = 100.0
    for step in range(600):
        now[0] += rng.choice((0.2, 1.0, 1.0, 7.0, 40.0))
        for _ in range(rng.randrange(3)):
            point = rng.choice(names)
            value = (energy := energy + 0.001) if point == "Active_Energy_Import" else 1.0 + (step % 5)
            table.update(rng.choice("abc"), point, value)
        if step == 300:
            table.stale_factor = 1.5  # a reload tightens the rule: meters skipped until now are looked at again
        table.refresh_staleness()
        for mid in "abc":
            for point in names:
                v = table._values[mid][point]
                limit = table.stale_factor * intervals[table.catalogue.get(point).poll_class]
                assert not (v.quality is Quality.GOOD and now[0] - v.read_time > limit), (step, mid, point)
    assert len(seen) > 20  # values did turn stale along the way, and listeners heard of each


def test_next_meter_follows_due_times_back_off_and_early_requests():
    """The bus picks the meter due first (the first of equals), not before its back-off; an early poll request
    moves a meter ahead; each meter's next time is kept up to date instead of recomputed over every meter."""
    from meter_gateway.polling import BusRunner

    table = PointTable(load_catalogue(), lambda: 1_000_000.0)
    meters = [_meter(mid, unit) for unit, mid in enumerate("abc", start=1)]
    points = frozenset(["Active_Power_Total", "Voltage_L1_N", "Active_Energy_Import"])
    runner = BusRunner("tcp0", meters, {m.id: points for m in meters}, None, table)  # type: ignore[arg-type]
    assert runner._next() == (math.inf, None)  # nothing scheduled before start
    sa, sb, sc = (runner.schedules[m] for m in "abc")
    t0 = time.monotonic() + 1000.0  # due times ahead of the clock
    for s, t in ((sa, t0 + 30), (sb, t0 + 10), (sc, t0 + 10)):
        s.due = {pc: t + 5 * i for i, pc in enumerate(s.points_by_class)}
        s.reschedule()
    assert runner._next() == (t0 + 10, sb)  # b and c tie: the first
    sb.backoff_until = t0 + 50
    sb.reschedule()
    assert runner._next() == (t0 + 10, sc)
    runner.request_poll("a")  # due now
    t, s = runner._next()
    assert s is sa and t < t0
    sa.due.clear()
    sa.reschedule()
    assert runner._next() == (t0 + 10, sc)
