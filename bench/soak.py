"""`make soak`: 50 simulated meters with faults switching on and off, Modbus TCP, BACnet/IP and /metrics clients
reading continuously; samples memory, open file descriptors, task count and poll-period drift, and fails on growth.

SOAK_SECONDS (default 600) sets the duration."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import sys
import time
import urllib.request

from bacnet_peer import client_app, free_udp_port
from pymodbus.client import AsyncModbusTcpClient

from meter_gateway.app import Gateway
from meter_gateway.commands.run import keep_heap_compact
from meter_gateway.config import parse_config
from meter_gateway.core.catalogue import PollClass
from meter_gateway.profiles import load_profiles

N = 50
FAULTS = ["no_reply", "bad_crc", "exception", "noise", "none", "none", "none"]


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        return int(re.search(r"VmRSS:\s+(\d+)", fh.read()).group(1)) / 1024


async def bacnet_reader(my_port: int, target: str, objects: list[str], seconds: float) -> dict:
    """Run in its own process: a head-end reading present values in turn for `seconds`; returns its counts."""
    from bacpypes3.pdu import Address

    app = client_app(my_port, 3997, "soak-client")
    addr = Address(target)
    done = errors = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            await asyncio.wait_for(app.read_property(addr, objects[done % len(objects)], "present-value"), 10)
            done += 1
        except Exception:
            errors += 1
        await asyncio.sleep(0.02)
    app.close()
    return {"read_property": done, "errors": errors}


def slope(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope per hour."""
    n = len(samples)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    den = sum((t - mt) ** 2 for t, _ in samples) or 1.0
    return sum((t - mt) * (v - mv) for t, v in samples) / den * 3600


async def main(duration: float) -> int:
    def bus_of(i: int) -> tuple[str, int]:
        """Meters 46-50 sit behind a third endpoint that drops its connections now and then."""
        return ("b2", i - 45) if i > 45 else (f"b{i % 2}", i // 2 + 1)

    meters = "\n".join(
        f"  - {{id: m{i}, bus: {bus_of(i)[0]}, address: {bus_of(i)[1]}, profile: generic, "
        f"bacnet_instance_base: {1000 * i}, modbus_unit: {i}, poll_intervals: {{power: 2, voltage: 4, "
        f"energy: 6, alarm: 2, status: 4}}}}"
        for i in range(1, N + 1)
    )
    text = (
        "gateway: {name: soak}\nbuses:\n"
        "  - {id: b0, type: modbus_rtu, simulated: true, timeout: 0.1, retries: 0, backoff_max: 5}\n"
        "  - {id: b1, type: modbus_tcp, simulated: true, port: 0, timeout: 0.2, retries: 0, backoff_max: 5}\n"
        "  - {id: b2, type: modbus_tcp, simulated: true, port: 0, timeout: 0.2, retries: 0, backoff_max: 5}\n"
        f"meters:\n{meters}\nupstream:\n  bacnet: {{enabled: true, bind: 127.0.0.1, netmask: 8, port: 0}}\n"
        "  modbus_tcp: {enabled: true, bind: 127.0.0.1, port: 0}\n"
        "  prometheus: {enabled: true, bind: 127.0.0.1, port: 0}\n"
    )
    profiles = load_profiles()
    keep_heap_compact()  # as `meter-gateway run` does
    gw = Gateway(parse_config(text, profiles=profiles), profiles)
    await gw.start()
    rng = random.Random(1)
    mb_port = next(s for s in gw.servers if s.name == "modbus_tcp").address()[1]
    pm_port = next(s for s in gw.servers if s.name == "prometheus").address()[1]
    bn_port = next(s for s in gw.servers if s.name == "bacnet").address()[1]
    client_port = free_udp_port()
    objects = [f"analog-input,{1000 * i + idx}" for i in range(1, N + 1) for idx in (5, 11, 17)]
    bacnet_proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--bacnet-client",
        str(client_port),
        f"127.0.0.1:{bn_port}",
        json.dumps(objects),
        str(duration),
        stdout=asyncio.subprocess.PIPE,
    )
    samples: dict[str, list[tuple[float, float]]] = {"rss": [], "fds": [], "tasks": [], "drift": []}
    requests = 0
    t0 = time.monotonic()

    async def reader():
        """A SCADA polling every unit in turn, as fast as it gets answers."""
        nonlocal requests
        c = AsyncModbusTcpClient("127.0.0.1", port=mb_port, timeout=3, retries=0)
        await c.connect()
        while True:
            await c.read_holding_registers(0, count=50, device_id=rng.randint(1, N))
            requests += 1
            await asyncio.sleep(0.01)

    async def scraper():
        """Prometheus scraping every 5 s (a busy setting; 15-60 s is usual)."""
        nonlocal requests
        while True:
            await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://127.0.0.1:{pm_port}/metrics").read())
            requests += 1
            await asyncio.sleep(5)

    tasks = [asyncio.create_task(reader()), asyncio.create_task(scraper())]
    healthy = [f"m{i}" for i in range(1, 6)]  # these never get faults: their poll periods measure drift
    try:
        while time.monotonic() - t0 < duration:
            for mid, sim in gw.simulators.items():
                if mid not in healthy and rng.random() < 0.1:
                    sim.fault = rng.choice(FAULTS)
            # one Modbus TCP endpoint drops its connections now and then (a gateway or switch restarting)
            gw.sim_buses["b2"].reset_connections = rng.random() < 0.05
            await asyncio.sleep(5)
            t = time.monotonic() - t0
            samples["rss"].append((t, rss_mib()))
            samples["fds"].append((t, len(os.listdir("/proc/self/fd"))))
            samples["tasks"].append((t, len(asyncio.all_tasks())))
            drifts = []
            for mid in healthy:
                sched = gw.runner_of(mid).schedules[mid]
                st = sched.period_stats(PollClass.POWER)
                if st:
                    drifts.append(st[1] / 2.0 - 1.0)
                    if os.environ.get("SOAK_DEBUG"):
                        print(mid, gw.config.meter(mid).bus, round(st[1], 2))
            samples["drift"].append((t, max(drifts) if drifts else 0.0))
            print(
                f"t={t:6.0f}s rss={samples['rss'][-1][1]:.1f}MiB fds={samples['fds'][-1][1]:.0f} "
                f"tasks={samples['tasks'][-1][1]:.0f} worst-period-drift={samples['drift'][-1][1]:+.2f} "
                f"requests={requests}",
                flush=True,
            )
    finally:
        for task in tasks:
            task.cancel()
        try:
            out, _ = await asyncio.wait_for(bacnet_proc.communicate(), 60)
            bacnet = json.loads(out.decode().strip().splitlines()[-1])
        except (TimeoutError, ValueError, IndexError):
            bacnet_proc.kill()
            bacnet = {"read_property": 0, "errors": -1}
        await gw.stop()
    half = lambda k: samples[k][len(samples[k]) // 2 :]  # noqa: E731 - after warm-up
    report = {
        "duration_s": duration,
        "meters": N,
        "requests": requests,
        "bacnet_read_property": bacnet["read_property"],
        "bacnet_errors": bacnet["errors"],
        "rss_mib_start": samples["rss"][0][1],
        "rss_mib_end": samples["rss"][-1][1],
        "rss_slope_mib_per_h": round(slope(half("rss")), 2),
        "fd_slope_per_h": round(slope(half("fds")), 2),
        "task_slope_per_h": round(slope(half("tasks")), 2),
        "worst_drift": round(max(v for _, v in samples["drift"]), 3),
        "drift_slope_per_h": round(slope(half("drift")), 3),
    }
    print(json.dumps(report))
    grew = (
        report["fd_slope_per_h"] > 10
        or report["task_slope_per_h"] > 10
        or report["rss_slope_mib_per_h"] > 20
        or report["drift_slope_per_h"] > 1.0
    )
    return 1 if grew else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--bacnet-client":
        port, target, objs, secs = int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]), float(sys.argv[5])
        print(json.dumps(asyncio.run(bacnet_reader(port, target, objs, secs))))
        sys.exit(0)
    sys.exit(asyncio.run(main(float(os.environ.get("SOAK_SECONDS", "600")))))
