"""The web pages' recent history (web/api.py RecentHistory): exact values, same answers, bounded size."""

from __future__ import annotations

import json
import math
import random
import struct

from meter_gateway.core.catalogue import DEFAULT_INTERVALS, load_catalogue
from meter_gateway.core.codec import to_engineering
from meter_gateway.core.quality import Quality
from meter_gateway.core.table import PointTable
from meter_gateway.web.api import HISTORY_POINTS, HISTORY_STEP, RecentHistory, Ring

POWER, IMPORT, EXPORT = HISTORY_POINTS


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def f32(x: float) -> float:
    """x rounded to a float32 (what a meter's float register holds)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def make(meters: list[str]) -> tuple[PointTable, Clock]:
    clock = Clock()
    table = PointTable(load_catalogue(), clock, stale_factor=3)
    for mid in meters:
        table.add_meter(mid, HISTORY_POINTS, dict(DEFAULT_INTERVALS), max_power_kw=1000)
    return table, clock


def test_answers_are_the_samples_taken_exactly():
    """Every kind of value a meter sends comes back identical (JSON too), window after window."""
    rnd = random.Random(19)
    table, clock = make(["dec", "f32", "f64", "flaky", "late"])
    hist = RecentHistory(table)
    hist.size = 40  # a small window, wrapped several times
    taken: dict[tuple[str, str], list[list]] = {}
    energy = {m: 1000.0 for m in table.meter_ids}
    raw = 123_456_700
    for n in range(150):
        clock.t += HISTORY_STEP
        raw += rnd.randrange(0, 300)
        table.update("dec", IMPORT, to_engineering(raw, 0.01))  # a uint32 register of 0.01 kWh
        table.update("dec", POWER, to_engineering(rnd.randrange(-50000, 50000), 0.001))  # steps beyond int16
        table.update("f32", IMPORT, f32(100000.0 + n * 0.37))  # float32 registers
        table.update("f32", POWER, f32(rnd.uniform(-50, 50)))
        energy["f64"] += 0.1  # binary noise: 1000.3000000000001 ...
        table.update("f64", IMPORT, energy["f64"])
        table.update("f64", POWER, -0.0 if n % 7 == 0 else rnd.uniform(-50, 50))
        table.update("f64", EXPORT, n if n < 20 else 20 + (n - 20) / 3)  # float32 at first, then not
        # a full window, with a bad sample in it, then values that need a wider encoding
        energy["late"] = to_engineering(500_000 + n, 0.01) if n < 110 else energy["late"] + 0.1
        if n == 95:
            table.mark_bad("late", IMPORT, "sentinel", log_it=False)
        else:
            table.update("late", IMPORT, energy["late"])
        table.update("late", POWER, f32(n / 7) if n < 120 else n / 7)
        if n % 50 < 10:  # not good for a while, then good again for longer than the window
            table.set_comm("flaky", False, "no answer")
        else:
            table.set_comm("flaky", True)
            table.update("flaky", POWER, to_engineering(n, 1))
            if n % 13 == 0:
                table.mark_bad("flaky", IMPORT, "sentinel", log_it=False)
            else:
                table.update("flaky", IMPORT, to_engineering(n * 10 + 3, 0.1))
        for mid in table.meter_ids:
            for p in HISTORY_POINTS:
                v = table.get(mid, p)
                good = v.value is not None and v.quality in (Quality.GOOD, Quality.STALE)
                taken.setdefault((mid, p), []).append([clock.t, float(v.value) if good else None, str(v.quality)])
        hist.sample()
        if n % 9 == 0 or n > 140:
            for (mid, p), samples in taken.items():
                for back in (3, hist.size, 2 * hist.size):
                    t0 = clock.t - (back - 1) * HISTORY_STEP
                    want = [s for s in samples[-hist.size :] if s[0] >= t0]
                    got = hist.since(mid, p, t0)
                    assert json.dumps(got) == json.dumps(want), (n, mid, p, back)
    enc = {(mid, p): hist.rings[(mid, p)].encoding for mid, p in taken}
    assert enc[("dec", IMPORT)] == enc[("flaky", IMPORT)] == "h" and enc[("dec", POWER)] == "i"
    assert enc[("f32", POWER)] == "f" and enc[("late", IMPORT)] == enc[("late", POWER)] == "d"
    assert enc[("f64", IMPORT)] == enc[("f64", POWER)] == enc[("f64", EXPORT)] == "d"
    assert hist.rings[("flaky", POWER)].q is None  # all good for a whole window: no quality bytes held
    assert hist.rings[("flaky", IMPORT)].q is not None  # a bad sample in the window


def test_gaps_and_a_ring_older_than_its_window():
    """Rounds a point was not sampled in are no samples; a ring sampled again after a window starts afresh."""
    times = [float(r) for r in range(100)]
    ring = Ring(10, 0)
    ring.add(0, 1.5, 0)
    ring.add(3, 2.5, 0)
    assert ring.samples(times[:10], 4, 0.0) == [[0.0, 1.5, "good"], [3.0, 2.5, "good"]]
    ring.add(30, 7.25, 0)
    assert len(ring) == 1
    times[30 % 10] = 30.0
    assert ring.samples(times[:10], 31, 0.0) == [[30.0, 7.25, "good"]]


def test_six_hours_hold_one_window_per_point():
    """After more than HISTORY_HOURS of rounds every point holds one window of samples and one time per round."""
    table, clock = make([f"m{i}" for i in range(3)])
    hist = RecentHistory(table)
    raw = 500_000
    for n in range(hist.size + 300):
        clock.t += HISTORY_STEP
        raw += 7
        for mid in table.meter_ids:
            table.update(mid, IMPORT, to_engineering(raw, 0.01))
            table.update(mid, EXPORT, to_engineering(n, 0.01))
            table.update(mid, POWER, f32(n / 3))
        hist.sample()
    assert len(hist.times) == hist.size
    assert len(hist.rings) == 9 and all(len(r) == hist.size for r in hist.rings.values())
    samples = hist.since("m1", IMPORT, 0.0)
    assert len(samples) == hist.size and samples[-1] == [clock.t, to_engineering(raw, 0.01), "good"]
    assert all(r.q is None and r.encoding in "hf" for r in hist.rings.values())
    assert not math.isnan(samples[0][1])
