"""Bus cycle benchmark: N simulated meters on one paced RTU line; transactions and time of one full poll cycle.

Run: .venv/bin/python bench/bus_cycle.py [--meters 32] [--profile generic] [--baudrate 9600] [--turnaround 0.005]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from meter_gateway.config import parse_config
from meter_gateway.core.catalogue import POLLED_CLASSES, load_catalogue
from meter_gateway.core.planner import one_read_per_point
from meter_gateway.core.table import PointTable
from meter_gateway.drivers.modbus import ModbusDriver
from meter_gateway.polling import BusRunner
from meter_gateway.profiles import load_profiles
from meter_gateway.sim.modbus import RtuSimBus, make_meter


def request_bytes() -> int:
    """Bytes of a read request frame (unit, fc, address, count, CRC)."""
    return 8


def reply_bytes(block) -> int:
    """Bytes of the reply to a read block."""
    data = (block.count + 7) // 8 if block.is_bits else 2 * block.count
    return 5 + data


async def run(n: int, profile_name: str, baudrate: int, turnaround: float, cycles: int) -> dict:
    """Measure `cycles` full poll cycles of n meters; returns the figures."""
    profiles = load_profiles()
    prof = profiles.get(profile_name)
    meters_yaml = "\n".join(
        f"  - {{id: m{i}, bus: b, address: {i}, profile: {profile_name}, bacnet_instance_base: {1000 + 100 * i}, "
        f"modbus_unit: {i}}}"
        for i in range(1, n + 1)
    )
    sims = [make_meter(i, prof, seed=i) for i in range(1, n + 1)]
    bus = RtuSimBus(sims, baudrate=baudrate, paced=True, turnaround=turnaround, bits_per_char=10)
    port = await bus.start()
    cfg = parse_config(
        f"buses: [{{id: b, type: modbus_rtu, port: {port}, baudrate: {baudrate}, timeout: 1}}]\n"
        f"meters:\n{meters_yaml}\n",
        profiles=profiles,
    )
    table = PointTable(load_catalogue(), time.time)
    points = {}
    for m in cfg.meters:
        points[m.id] = frozenset(prof.points)
        table.add_meter(m.id, prof.points, m.intervals())
    driver = ModbusDriver(cfg.buses[0], profiles, port=port)
    runner = BusRunner("b", cfg.meters, points, driver, table)
    await driver.open()
    classes = tuple(pc for pc in POLLED_CLASSES)
    durations = []
    tx_per_cycle = 0
    for _ in range(cycles):
        t0 = time.monotonic()
        tx0 = driver.stats.transactions
        for s in runner.schedules.values():
            await runner.poll(s, tuple(pc for pc in classes if pc in s.points_by_class))
        durations.append(time.monotonic() - t0)
        tx_per_cycle = driver.stats.transactions - tx0
    blocks = [
        b
        for m in cfg.meters
        for b in driver.plan(m, [p for pc in classes for p in runner.schedules[m.id].points_by_class.get(pc, ())])
    ]
    char = 10 / baudrate
    # per transaction: request and reply on the wire, the meter turnaround, one 3.5-character silence between frames
    wire = sum((request_bytes() + reply_bytes(b)) * char + turnaround + 3.5 * char for b in blocks)
    naive = sum(one_read_per_point(prof, prof.points) for _ in cfg.meters)
    await driver.close()
    await bus.close()
    best = min(durations)
    return {
        "meters": n,
        "profile": profile_name,
        "baudrate": baudrate,
        "turnaround_s": turnaround,
        "transactions_per_cycle": tx_per_cycle,
        "one_read_per_point": naive,
        "ratio_vs_naive": round(tx_per_cycle / naive, 4),
        "cycle_time_s": round(best, 3),
        "cycle_times_s": [round(d, 3) for d in durations],
        "wire_time_lower_bound_s": round(wire, 3),
        "efficiency": round(wire / best, 3),
        "timeouts": driver.stats.timeouts,
        "crc_errors": driver.stats.crc_errors,
    }


def main() -> None:
    """Command-line entry."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--meters", type=int, default=32)
    ap.add_argument("--profile", default="generic")
    ap.add_argument("--baudrate", type=int, default=9600)
    ap.add_argument("--turnaround", type=float, default=0.005)
    ap.add_argument("--cycles", type=int, default=3)
    a = ap.parse_args()
    res = asyncio.run(run(a.meters, a.profile, a.baudrate, a.turnaround, a.cycles))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
