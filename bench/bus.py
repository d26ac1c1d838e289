"""Bus benchmarks: poll-cycle efficiency against the wire's physical limit, and meter capacity per RS485 line.

Simulated meters are paced at the line's baud rate (11 bits per character, as 8E1 or 8N2 framing takes), with a
configurable meter turnaround, on a pty; the gateway's real scheduler and pymodbus master poll them.
"""

from __future__ import annotations

import math
import sys
import time

from meter_gateway.config import parse_config
from meter_gateway.core.catalogue import PollClass, load_catalogue
from meter_gateway.core.planner import one_read_per_point
from meter_gateway.core.table import PointTable
from meter_gateway.drivers.modbus import ModbusDriver
from meter_gateway.polling import BusRunner
from meter_gateway.profiles import load_profiles
from meter_gateway.sim.modbus import RtuSimBus, make_meter

BITS = 11  # bits per character on the wire
REQUEST_BYTES = 8


def reply_bytes(block) -> int:
    """Bytes of the reply to one read block."""
    return 5 + ((block.count + 7) // 8 if block.is_bits else 2 * block.count)


def wire_time(blocks, baudrate: int, turnaround: float) -> float:
    """Physical lower bound of a set of reads: bytes on the wire, one 3.5-char silence and one turnaround each."""
    char = BITS / baudrate
    return sum((REQUEST_BYTES + reply_bytes(b)) * char + 3.5 * char + turnaround for b in blocks)


class Line:
    """N simulated meters on a paced pty and the gateway's bus runner polling them."""

    def __init__(self, n: int, profile: str, baudrate: int, turnaround: float) -> None:
        self.n, self.profile_name, self.baudrate, self.turnaround = n, profile, baudrate, turnaround
        self.profiles = load_profiles()
        self.prof = self.profiles.get(profile)

    async def __aenter__(self) -> Line:
        sims = [make_meter(i, self.prof, seed=i) for i in range(1, self.n + 1)]
        self.sim = RtuSimBus(sims, baudrate=self.baudrate, paced=True, turnaround=self.turnaround, bits_per_char=BITS)
        port = await self.sim.start()
        gap = 3.5 * BITS / self.baudrate
        meters = "\n".join(
            f"  - {{id: m{i}, bus: b, address: {i}, profile: {self.profile_name},"
            f" bacnet_instance_base: {1000 + 100 * i}, modbus_unit: {i}}}"
            for i in range(1, self.n + 1)
        )
        cfg = parse_config(
            f"buses: [{{id: b, type: modbus_rtu, port: {port}, baudrate: {self.baudrate}, timeout: 1,"
            f" inter_frame_gap: {gap}}}]\nmeters:\n{meters}\n",
            profiles=self.profiles,
        )
        self.cfg = cfg
        self.table = PointTable(load_catalogue(), time.time)
        pts = {}
        for m in cfg.meters:
            pts[m.id] = frozenset(self.prof.points)
            self.table.add_meter(m.id, self.prof.points, m.intervals())
        self.driver = ModbusDriver(cfg.buses[0], self.profiles, port=port)
        self.runner = BusRunner("b", cfg.meters, pts, self.driver, self.table)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.stop()
        await self.sim.close()


async def efficiency(n: int, profile: str, baudrate: int = 9600, turnaround: float = 0.005) -> dict:
    """One full poll cycle (every class of every meter): measured time vs wire-time lower bound."""
    async with Line(n, profile, baudrate, turnaround) as line:
        await line.driver.open()
        scheds = list(line.runner.schedules.values())
        blocks = [
            b
            for s in scheds
            for b in line.driver.plan(s.meter, [p for pc in s.points_by_class for p in s.points_by_class[pc]])
        ]
        best = math.inf
        tx = 0
        for _ in range(2):
            tx0 = line.driver.stats.transactions
            t0 = time.monotonic()
            for s in scheds:
                await line.runner.poll(s, tuple(s.points_by_class))
            best = min(best, time.monotonic() - t0)
            tx = line.driver.stats.transactions - tx0
        lower = wire_time(blocks, baudrate, turnaround)
        naive = n * one_read_per_point(line.prof, line.prof.points)
        return {
            "meters": n,
            "profile": profile,
            "baudrate": baudrate,
            "transactions_per_cycle": tx,
            "one_read_per_point": naive,
            "transactions_ratio": round(tx / naive, 4),
            "cycle_time_s": round(best, 4),
            "wire_limit_s": round(lower, 4),
            "efficiency": round(lower / best, 4),
            "errors": line.driver.stats.timeouts + line.driver.stats.crc_errors,
        }


def minute_plan(line: Line, meter) -> list:
    """The reads one meter needs per minute at the spec's rates (classes aligned: 10 s, 30 s, 60 s marks)."""
    s = line.runner.schedules[meter.id]

    def reads(classes):
        pts = [p for pc in classes if pc in s.points_by_class for p in s.points_by_class[pc]]
        return line.driver.plan(meter, pts)

    fast = (PollClass.POWER, PollClass.ALARM)
    mid = (*fast, PollClass.VOLTAGE, PollClass.STATUS)
    full = (*mid, PollClass.ENERGY)
    return 4 * reads(fast) + reads(mid) + reads(full)


async def computed_capacity(profile: str, baudrate: int, turnaround: float) -> tuple[int, float]:
    """Physical maximum of meters per line at the spec's rates, from the wire time of one minute of reads."""
    async with Line(1, profile, baudrate, turnaround) as line:
        per_minute = wire_time(minute_plan(line, line.cfg.meters[0]), baudrate, turnaround)
        cfg_blocks = line.driver.plan(
            line.cfg.meters[0], line.runner.schedules["m1"].points_by_class.get(PollClass.CONFIG, ())
        )
        per_minute += wire_time(cfg_blocks, baudrate, turnaround) / 60
    return int(60 // per_minute), per_minute


async def measured_minute(
    n: int, profile: str, baudrate: int, turnaround: float, tolerate_errors: bool = False
) -> tuple[float, int]:
    """Bus seconds one meter-minute of reads takes on the paced line, measured over n meters back to back, and
    the failed transactions (an error unless tolerated)."""
    async with Line(n, profile, baudrate, turnaround) as line:
        await line.driver.open()
        plans = {m.id: minute_plan(line, m) for m in line.cfg.meters}
        unit_of = {m.id: int(m.address) for m in line.cfg.meters}
        t0 = time.monotonic()
        for mid, blocks in plans.items():
            for b in blocks:
                await line.driver._call(unit_of[mid], b.function, b.address, b.count)
        elapsed = time.monotonic() - t0
        errors = line.driver.stats.timeouts + line.driver.stats.crc_errors
        if errors and not tolerate_errors:
            raise RuntimeError(f"{errors} failed transactions during the capacity measurement")
        return elapsed / n, errors


async def capacity(profile: str, baudrate: int, turnaround: float = 0.005, sample: int = 8) -> dict:
    """Meters per line at the spec's rates, found by running that many paced meters.

    A line keeps up with n meters when one minute of their reads (every meter's plan, back to back) takes at most
    60 s on the paced line. A short sample of `sample` meters gives a first guess; n meters are then run, one more
    or one fewer each time, until n keeps up and n + 1 does not (or n + 1 exceeds the wire-time bound, which no
    line can beat). Every figure in `runs` is a full minute of n meters' reads, measured.
    """
    computed, per_minute = await computed_capacity(profile, baudrate, turnaround)
    guess = int(60 // (await measured_minute(sample, profile, baudrate, turnaround, tolerate_errors=True))[0])
    runs: dict[int, dict] = {}

    async def keeps_up(n: int) -> bool:
        """Whether one minute of n meters' reads fits in 60 s without a failed transaction (a retry costs time)."""
        if n not in runs:
            per_meter, errors = await measured_minute(n, profile, baudrate, turnaround, tolerate_errors=True)
            runs[n] = {"seconds": round(per_meter * n, 3), "failed_transactions": errors}
            print(f"  capacity run @ {baudrate} Bd: {n} meters, {runs[n]}", file=sys.stderr, flush=True)
        return runs[n]["seconds"] <= 60.0 and not runs[n]["failed_transactions"]

    n = max(1, min(guess, computed))
    if await keeps_up(n):
        while n + 1 <= computed and await keeps_up(n + 1):
            n += 1
    else:
        while n > 1 and not await keeps_up(n - 1):
            n -= 1
        n -= 1
    measured = n
    return {
        "profile": profile,
        "baudrate": baudrate,
        "turnaround_s": turnaround,
        "wire_seconds_per_meter_minute": round(per_minute, 4),
        "measured_seconds_per_meter_minute": round(runs[measured]["seconds"] / measured, 4) if measured else None,
        "computed_max_meters": computed,
        "measured_max_meters": measured,
        "ratio": round(measured / computed, 3) if computed else None,
        "sample_guess": guess,
        "runs": {str(k): v for k, v in sorted(runs.items())},  # meters -> one minute of their reads, measured
    }
