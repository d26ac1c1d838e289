"""Per-meter BACnet devices against the single device: start-up time of the BACnet server, memory, and the
round trip of a ReadProperty (present-value of Active_Power_Total of the last meter) direct and through the router.

A whole gateway runs in this process on simulated Modbus TCP meters; the client (the raw client of the conformance
suite) runs in a thread on its own UDP socket. `python bench/bacnet_router.py [meters ...]` prints one JSON line per
mode and meter count."""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "conformance"))

from rawbacnet import PROP, RawClient

from meter_gateway.app import Gateway
from meter_gateway.config import parse_config
from meter_gateway.profiles import load_profiles

READS = 300
VNET = 2001


def config(n: int, mode: str) -> str:
    """n generic meters on one simulated Modbus TCP bus, BACnet in the given mode."""
    meters = "\n".join(
        f"  - {{id: m{i}, bus: tcp, address: {i}, profile: generic, bacnet_instance_base: {1000 + 100 * i}}}"
        for i in range(1, n + 1)
    )
    extra = f", devices: per-meter, virtual_network: {VNET}" if mode == "per-meter" else ""
    return f"""
gateway: {{name: bench}}
buses:
  - {{id: tcp, type: modbus_tcp, simulated: true, port: 0}}
meters:
{meters}
upstream:
  bacnet: {{enabled: true, bind: 127.0.0.1, netmask: 8, port: 0, device_instance: 599{extra}}}
  modbus_tcp: {{enabled: false}}
  prometheus: {{enabled: false}}
"""


def reads(port: int, device: int, obj: tuple[int, int], route) -> list[float]:
    """Milliseconds per ReadProperty, READS times."""
    c = RawClient(("127.0.0.1", port))
    c.route = route
    out = []
    try:
        for _ in range(READS):
            t = time.perf_counter()
            ans = c.read(obj, PROP["present-value"])
            out.append((time.perf_counter() - t) * 1000)
            assert ans.kind == "complex", ans
    finally:
        c.close()
    return out


async def run(n: int, mode: str, profiles) -> dict:
    """One gateway: start-up of the BACnet server, memory, read round trips."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gateway.yaml"
        text = config(n, mode)
        path.write_text(text)
        gw = Gateway(parse_config(text, str(path), profiles=profiles), profiles, config_path=path)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        await gw.start()
        try:
            server = gw.servers[0]
            t = time.perf_counter()
            await gw._stop_server("bacnet")  # time the BACnet server alone: stop it, start it again
            t = time.perf_counter()
            await gw._start_server("bacnet")
            startup = time.perf_counter() - t
            server = gw.servers[0]
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            port = server.address()[1]
            last = 1000 + 100 * n
            if mode == "per-meter":
                ms = await asyncio.to_thread(reads, port, last, (0, 5), (VNET, last.to_bytes(3, "big")))
            else:
                ms = await asyncio.to_thread(reads, port, 599, (0, last + 5), None)
        finally:
            await gw.stop()
    return {
        "mode": mode,
        "meters": n,
        "bacnet_start_s": round(startup, 3),
        "max_rss_growth_mb": round((rss - rss0) / 1024, 1),
        "rp_median_ms": round(statistics.median(ms), 3),
        "rp_p95_ms": round(sorted(ms)[int(len(ms) * 0.95)], 3),
    }


async def main(sizes: list[int]) -> None:
    """One line per mode and size."""
    logging.disable(logging.WARNING)
    profiles = load_profiles()
    for n in sizes:
        for mode in ("single", "per-meter"):
            print(json.dumps(await run(n, mode, profiles)), flush=True)


if __name__ == "__main__":
    asyncio.run(main([int(a) for a in sys.argv[1:]] or [1, 32]))
