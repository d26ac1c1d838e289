"""Scale benchmark: 250 meters x every point, simulated in a separate process, polled over Modbus TCP.

Measures start-up time to the first full table, resident memory and the gateway's CPU share at steady polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import subprocess
import sys
import time

from meter_gateway.app import Gateway
from meter_gateway.config import parse_config
from meter_gateway.core.quality import Quality
from meter_gateway.profiles import load_profiles

PER_SIM = 125  # meters per simulator endpoint (unit ids 1-125)


def rss_mib() -> float:
    """Resident memory of this process in MiB."""
    with open("/proc/self/status") as fh:
        m = re.search(r"VmRSS:\s+(\d+) kB", fh.read())
    return int(m.group(1)) / 1024 if m else float("nan")


def cpu_seconds() -> float:
    """User + system CPU time of this process."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def start_simulator(units: str) -> tuple[subprocess.Popen, int]:
    """Start `meter-gateway simulate --tcp 0` in its own process; returns it and its port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "meter_gateway.cli", "simulate", "--tcp", "0", "--units", units],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = await asyncio.to_thread(proc.stdout.readline)
    m = re.search(r":(\d+)\s*$", line.strip())
    if not m:
        proc.kill()
        raise RuntimeError(f"simulator did not start: {line!r}")
    return proc, int(m.group(1))


def build_config(n: int, ports: list[int], servers: bool) -> str:
    """A config with n generic meters spread over the simulator endpoints."""
    buses = "\n".join(
        f"  - {{id: tcp{j}, type: modbus_tcp, host: 127.0.0.1, port: {p}, timeout: 2}}" for j, p in enumerate(ports)
    )
    meters = []
    for i in range(n):
        j, unit = divmod(i, PER_SIM)
        meters.append(
            f"  - {{id: m{i + 1}, bus: tcp{j}, address: {unit + 1}, profile: generic, "
            f"bacnet_instance_base: {10000 + 100 * i}" + (f", modbus_unit: {i + 1}}}" if i < 247 else "}")
        )
    up = "enabled: true, bind: 127.0.0.1, port: 0" if servers else "enabled: false"
    return (
        f"gateway: {{name: scale}}\nbuses:\n{buses}\nmeters:\n" + "\n".join(meters) + "\n"
        f"upstream: {{bacnet: {{enabled: false}}, modbus_tcp: {{{up}}}, prometheus: {{{up}}}}}\n"
    )


async def run(n: int = 250, steady_s: float = 30.0, servers: bool = False) -> dict:
    """Start the gateway on n simulated meters and measure it."""
    sims = []
    try:
        for k in range((n + PER_SIM - 1) // PER_SIM):
            count = min(PER_SIM, n - k * PER_SIM)
            sims.append(await start_simulator(f"1-{count}"))
        profiles = load_profiles()
        text = build_config(n, [p for _, p in sims], servers)
        # Modbus TCP unit ids stop at 247: meters beyond that are served over BACnet and Prometheus only
        cfg = parse_config(text, profiles=profiles)
        rss0 = rss_mib()
        gw = Gateway(cfg, profiles)
        t0 = time.monotonic()
        await gw.start()
        try:
            ids = gw.table.meter_ids
            supported = {
                mid: gw.meter_points(mid) - {"Reset_Demand_Peak", "Sync_Clock", "Communication_Status"} for mid in ids
            }

            def full() -> bool:
                snap = gw.table.snapshot()
                return all(snap[mid][p].quality is Quality.GOOD for mid in ids for p in supported[mid])

            while not full():
                if time.monotonic() - t0 > 300:
                    raise RuntimeError("table not full after 300 s")
                await asyncio.sleep(0.1)
            startup = time.monotonic() - t0
            c0, w0 = cpu_seconds(), time.monotonic()
            await asyncio.sleep(steady_s)
            cpu_share = (cpu_seconds() - c0) / (time.monotonic() - w0)
            tx = sum(r.driver.stats.transactions for r in gw.buses.values())
            return {
                "meters": n,
                "points": sum(len(s) for s in supported.values()),
                "startup_to_full_table_s": round(startup, 2),
                "rss_mib": round(rss_mib(), 1),
                "rss_before_start_mib": round(rss0, 1),
                "cpu_share_steady": round(cpu_share, 4),
                "steady_window_s": steady_s,
                "transactions": tx,
                "upstream_servers": servers,
            }
        finally:
            await gw.stop()
    finally:
        for proc, _ in sims:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.poll() is None:
                proc.kill()


if __name__ == "__main__":
    import json

    n = int(os.environ.get("SCALE_METERS", "250"))
    print(json.dumps(asyncio.run(run(n, float(os.environ.get("SCALE_STEADY_S", "30"))))))
