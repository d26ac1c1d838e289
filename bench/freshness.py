"""Freshness: time from a value change inside a simulated meter to its visibility upstream, poll wait excluded.

One generic meter on a simulated RTU line (pty) is polled by the gateway, whose Modbus TCP slave and BACnet/IP device
run on loopback. The bench pins Active_Power_Total of the simulated meter to a new marker value at random moments and
timestamps, per change (all CLOCK_MONOTONIC, which is system-wide on Linux, so the processes share it):

- t_change: the marker is set in the simulator;
- t_read:   the simulated meter answers the poll request that carries the marker (its register read is wrapped);
- t_table:  the gateway's point table holds the marker (a table listener, for the breakdown);
- t_modbus: a Modbus TCP client in another process, reading the register pair in a tight loop, first sees it;
- t_cov:    a BACnet client in the same other process receives the COV notification carrying it.

Freshness = t_visible - t_read; the poll wait (t_read - t_change) only depends on the poll interval and is reported
for context. The pty is not paced: serial wire time of the reply is not part of these figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import statistics
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bacnet_peer import client_app, free_udp_port

from meter_gateway.sim.physics import LoadModel

POINT = "Active_Power_Total"  # power class, float32 at holding 0 upstream, analog-input base+5 in BACnet
INTERVAL = 0.5  # the power class poll interval (the smallest the configuration accepts)
CHANGES = 120
BUDGET_S = 70.0  # the change loop stops here even if fewer changes were measured
CHANGE_TIMEOUT_S = 3.0

YAML = """
gateway: {{name: bench-freshness}}
buses: [{{id: rtu, type: modbus_rtu, simulated: true}}]
meters:
  - {{id: m1, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000, modbus_unit: 1,
     poll_intervals: {{power: {interval}}}}}
upstream:
  bacnet: {{enabled: true, bind: 127.0.0.1, netmask: 8, port: 0}}
  modbus_tcp: {{enabled: true, bind: 127.0.0.1, port: 0}}
  prometheus: {{enabled: false}}
"""


def marker(k: int) -> float:
    """The k-th marker value: exact in float32, in the point's range, 0.5 kW apart (COV increment 0.1 kW)."""
    return 100.0 + 0.5 * (k % 1600)


# -- client process ---------------------------------------------------------------------------------------------------
async def client(
    my_port: int, bacnet_target: str, obj: str, modbus_port: int, unit: int, reg: int, seconds: float
) -> None:
    """Run in the client process: report every new value seen over Modbus and every COV value as JSON lines."""
    from bacpypes3.basetypes import PropertyIdentifier
    from bacpypes3.pdu import Address
    from bacpypes3.primitivedata import ObjectIdentifier
    from pymodbus.client import AsyncModbusTcpClient

    def emit(**kw: Any) -> None:
        sys.stdout.write(json.dumps(kw) + "\n")
        sys.stdout.flush()

    loop = asyncio.get_running_loop()
    end = time.monotonic() + seconds
    app = client_app(my_port, 3997, "bench-fresh")
    mb = AsyncModbusTcpClient("127.0.0.1", port=modbus_port, timeout=2, retries=0)
    if not await mb.connect():
        emit(error="modbus connect failed")
        app.close()
        return
    subscribed = asyncio.Event()
    reads = 0

    async def cov() -> None:
        async with app.change_of_value(Address(bacnet_target), ObjectIdentifier(obj), None, True, 300) as scm:
            subscribed.set()
            while True:
                prop, value = await scm.get_value()
                t = time.monotonic()
                if prop == PropertyIdentifier.presentValue:
                    emit(src="cov", v=float(value), t=t)

    stop = asyncio.Event()

    async def modbus() -> None:
        nonlocal reads
        last = None
        while not stop.is_set():
            r = await mb.read_holding_registers(reg, count=2, device_id=unit)
            t = time.monotonic()
            reads += 1
            if r.isError():
                continue
            v = struct.unpack(">f", struct.pack(">HH", *r.registers))[0]
            if v != last:
                emit(src="modbus", v=v, t=t)
                last = v

    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    cov_task = asyncio.create_task(cov())
    await asyncio.wait_for(subscribed.wait(), 10)
    t0 = time.monotonic()
    mb_task = asyncio.create_task(modbus())
    emit(ready=True)
    # stop when the bench closes stdin, or by ourselves at the deadline
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stdin.readline(), max(0.0, end - time.monotonic()))
    elapsed = time.monotonic() - t0
    stop.set()  # let the request in flight finish: a cancelled one leaves pymodbus an orphan reply to complain about
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(mb_task, 3)
    cov_task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(cov_task, 3)
    mb.close()
    app.close()
    emit(done=True, modbus_reads=reads, seconds=round(elapsed, 2))


# -- bench side -------------------------------------------------------------------------------------------------------
@dataclass
class PinnedLoad(LoadModel):
    """The simulator's load model; points in `pins` keep the value the bench gave them while the rest moves on."""

    pins: dict[str, float] = field(default_factory=dict)

    def _instant(self, now: float) -> None:
        super()._instant(now)
        self.values.update(self.pins)


def pinned_model(old: LoadModel) -> PinnedLoad:
    """A copy of a simulated meter's load model (same seed, load and values) that honours pins."""
    return PinnedLoad(seed=old.seed, base_kw=old.base_kw, phases=old.phases, clock=old.clock, values=dict(old.values))


def stamp_reads(sim: Any, point: str, first_read: dict[float, float]) -> None:
    """Wrap the simulated meter's register reads: first_read[value] = when the meter first answered with it."""
    prof = sim.profile
    fn = prof.function_of(point)
    table = 3 if fn == 3 else fn
    addr = prof.points[point].address
    original = sim.read_registers

    def read_registers(tbl: int, address: int, count: int) -> list[int] | None:
        regs = original(tbl, address, count)
        if regs is not None and tbl == table and address <= addr < address + count:
            first_read.setdefault(float(sim.model.values[point]), time.monotonic())
        return regs

    sim.read_registers = read_registers


def pct(data: list[float], q: int) -> float:
    """The q-th percentile (inclusive method), in the data's unit."""
    if len(data) == 1:
        return data[0]
    return statistics.quantiles(data, n=100, method="inclusive")[q - 1]


def summary(values_s: list[float]) -> dict:
    """p50, p99 and max in milliseconds."""
    if not values_s:
        return {"n": 0}
    ms = [v * 1000 for v in values_s]
    return {"n": len(ms), "p50_ms": round(pct(ms, 50), 2), "p99_ms": round(pct(ms, 99), 2), "max_ms": round(max(ms), 2)}


async def run(changes: int = CHANGES, interval: float = INTERVAL, budget_s: float = BUDGET_S, seed: int = 8) -> dict:
    """Start the gateway and the client process, make the changes, return the figures."""
    from meter_gateway.app import Gateway
    from meter_gateway.config import parse_config
    from meter_gateway.profiles import load_profiles

    profiles = load_profiles()
    gw = Gateway(parse_config(YAML.format(interval=interval), profiles=profiles), profiles)
    await gw.start()
    proc: asyncio.subprocess.Process | None = None
    reader: asyncio.Task | None = None
    try:
        sim = gw.simulators["m1"]
        model = pinned_model(sim.model)
        sim.model = model
        first_read: dict[float, float] = {}
        stamp_reads(sim, POINT, first_read)
        first_table: dict[float, float] = {}

        def on_change(meter_id: str, point: str, old: Any, new: Any) -> None:
            if point == POINT and new.value is not None:
                first_table.setdefault(float(new.value), time.monotonic())

        gw.table.add_listener(on_change)
        servers = {s.name: s for s in gw.servers}
        mb_port = servers["modbus_tcp"].address()[1]
        bn_port = servers["bacnet"].address()[1]
        instance = 1000 + gw.catalogue.get(POINT).index
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--client",
            str(free_udp_port()),
            f"127.0.0.1:{bn_port}",
            f"analog-input,{instance}",
            str(mb_port),
            "1",
            "0",
            str(budget_s + 30),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stdin is not None

        async def ready() -> None:
            assert proc is not None and proc.stdout is not None
            while True:  # the subscription's first notification (the value before any change) may come first
                line = await proc.stdout.readline()
                if not line:
                    raise RuntimeError("freshness client ended before it was ready")
                ev = json.loads(line)
                if ev.get("ready"):
                    return
                if "error" in ev:
                    raise RuntimeError(f"freshness client: {ev['error']}")

        await asyncio.wait_for(ready(), 30)
        seen: dict[str, dict[float, float]] = {"modbus": {}, "cov": {}}
        arrived = asyncio.Event()
        done: dict = {}

        async def read_events() -> None:
            assert proc is not None and proc.stdout is not None
            async for raw in proc.stdout:
                ev = json.loads(raw)
                if "src" in ev:
                    seen[ev["src"]].setdefault(ev["v"], ev["t"])
                    arrived.set()
                elif ev.get("done"):
                    done.update(ev)

        reader = asyncio.create_task(read_events())
        await asyncio.sleep(2 * interval)  # the first polls (every class) are over
        rng = random.Random(seed)
        rows = []
        missed = 0
        t_end = time.monotonic() + budget_s
        for k in range(changes):
            if time.monotonic() > t_end:
                break
            await asyncio.sleep(rng.uniform(0, interval))  # a random phase against the poll rhythm
            v = marker(k)
            model.pins[POINT] = v
            model.values[POINT] = v
            t_change = time.monotonic()
            limit = t_change + CHANGE_TIMEOUT_S
            while not (v in seen["modbus"] and v in seen["cov"]) and time.monotonic() < limit:
                arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), max(0.0, limit - time.monotonic()))
            if v not in first_read or v not in seen["modbus"] or v not in seen["cov"]:
                missed += 1
                continue
            rows.append(
                {
                    "poll_wait": first_read[v] - t_change,
                    "read_to_table": first_table.get(v, float("nan")) - first_read[v],
                    "modbus": seen["modbus"][v] - first_read[v],
                    "cov": seen["cov"][v] - first_read[v],
                    "table_to_modbus": seen["modbus"][v] - first_table.get(v, float("nan")),
                    "table_to_cov": seen["cov"][v] - first_table.get(v, float("nan")),
                }
            )
        proc.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 10)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, 2)

        def col(key: str) -> list[float]:
            return [r[key] for r in rows if r[key] == r[key]]  # drop NaN (no table timestamp)

        mb, cv = summary(col("modbus")), summary(col("cov"))
        reads = done.get("modbus_reads", 0)
        return {
            "point": POINT,
            "poll_interval_s": interval,
            "changes": len(rows),
            "missed": missed,
            "modbus": mb,
            "bacnet_cov": cv,
            "poll_wait": summary(col("poll_wait")),
            "read_to_table": summary(col("read_to_table")),
            "table_to_modbus": summary(col("table_to_modbus")),
            "table_to_bacnet_cov": summary(col("table_to_cov")),
            "modbus_client_reads_per_s": round(reads / done["seconds"], 1) if done.get("seconds") else None,
            "freshness_modbus_p50_ms": mb.get("p50_ms"),
            "freshness_modbus_p99_ms": mb.get("p99_ms"),
            "freshness_bacnet_cov_p50_ms": cv.get("p50_ms"),
            "freshness_bacnet_cov_p99_ms": cv.get("p99_ms"),
        }
    finally:
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        await gw.stop()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        a = sys.argv[2:]
        asyncio.run(client(int(a[0]), a[1], a[2], int(a[3]), int(a[4]), int(a[5]), float(a[6])))
    else:
        print(json.dumps(asyncio.run(run())))
