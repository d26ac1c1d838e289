"""Cost of a table change reaching the BACnet objects: microseconds per changed value in BacnetServer._on_change.

A gateway with `meters` simulated meters and its BACnet device on loopback; every point of every meter is changed
`rounds` times (value alternating between two readings, quality good; and a round of quality changes), calling the
table listener as the point table does; then the value changes again with a property monitor on every object (what
a COV subscription or an event algorithm adds: bacpypes3's own assignment, which tells the watcher). No network
traffic; the figure is the device's own CPU cost per change. `python bench/bacnet_on_change.py` prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time

from bacnet_peer import start_gateway

from meter_gateway.core.quality import PointValue, Quality


async def run(meters: int = 50, rounds: int = 20) -> dict:
    """Start the gateway, change every point `rounds` times, return microseconds per change."""
    gw = await start_gateway(meters)
    try:
        server = next(s for s in gw.servers if s.name == "bacnet")
        keys = list(server._by_point)
        now = time.time()
        # values as the table would hold them: two readings per point, alternating (every call is a change)
        pairs = []
        for mid, point in keys:
            spec = server._by_point[(mid, point)][0]._gw_spec
            t = spec.object_type
            if t == "multi-state-value":
                a, b = tuple(spec.point.allowed_values or (0, 1))[:2]
            elif t in ("binary-input", "binary-output"):
                a, b = False, True
            elif t == "datetime-value":
                a, b = now - 3600, now - 60
            else:
                a, b = 100.0, 100.5
            pairs.append((mid, point, PointValue(a, Quality.GOOD, now, now), PointValue(b, Quality.GOOD, now, now)))
        on_change = server._on_change
        for mid, point, va, _vb in pairs:  # warm up
            on_change(mid, point, va, va)

        def timed(changes: list) -> tuple[float, float]:
            """Wall and CPU microseconds per change, each point alternating between its two values `rounds` times."""
            t0, c0 = time.perf_counter(), time.thread_time()
            for r in range(rounds):
                for mid, point, va, vb in changes:
                    on_change(mid, point, va, vb if r % 2 == 0 else va)
            n = rounds * len(changes)
            return 1e6 * (time.perf_counter() - t0) / n, 1e6 * (time.thread_time() - c0) / n

        value_us, value_cpu_us = timed(pairs)
        # quality changes: good -> communication failure -> good (reliability and status flags change)
        bad = [(mid, point, va, PointValue(None, Quality.COMM_FAILURE, now, now)) for mid, point, va, _ in pairs]
        quality_us, quality_cpu_us = timed(bad)
        # the same value changes into objects someone watches (a COV subscriber, an event algorithm: a property
        # monitor), which take bacpypes3's own assignment so that the watcher is told
        for objs in server._by_point.values():
            for obj in objs:
                obj._property_monitors["presentValue"].append(lambda old, new: None)
        watched_us, watched_cpu_us = timed(pairs)
        objects = sum(len(v) for v in server._by_point.values())
        return {
            "meters": meters,
            "points": len(pairs),
            "objects": objects,
            "us_per_value_change": round(value_us, 2),
            "cpu_us_per_value_change": round(value_cpu_us, 2),
            "us_per_quality_change": round(quality_us, 2),
            "cpu_us_per_quality_change": round(quality_cpu_us, 2),
            "us_per_value_change_watched": round(watched_us, 2),
            "cpu_us_per_value_change_watched": round(watched_cpu_us, 2),
        }
    finally:
        await gw.stop()


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    print(json.dumps(asyncio.run(run(n))))
