"""Latency of the HTTP side (aiohttp) on one keep-alive connection, and the cost of one login check.

`python bench/http_latency.py [requests]`: a gateway with two simulated meters; GET /health, /api/overview,
/api/meters/a and /metrics N times each (default 100) with the control token; prints median and p95 per path and
the time of one argon2id password check with the library's default parameters (what `hash-password` makes).
/metrics is paced on purpose (at most 10 % of the event loop, see servers/prometheus.py SCRAPE_DUTY).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from argon2 import PasswordHasher

from meter_gateway.app import Gateway
from meter_gateway.config import parse_config
from meter_gateway.profiles import load_profiles

CONFIG = """
gateway: {{state_dir: {tmp}}}
buses: [{{id: rtu, type: modbus_rtu, simulated: true}}]
meters:
  - {{id: a, bus: rtu, address: 1, profile: eastron_sdm630}}
  - {{id: b, bus: rtu, address: 2, profile: eastron_sdm630}}
upstream: {{bacnet: {{enabled: false}}, modbus_tcp: {{enabled: false}}, prometheus: {{port: 0}}}}
"""


async def main(n: int) -> None:
    """Start a gateway, time the paths, stop."""
    tmp = Path(tempfile.mkdtemp())
    path = tmp / "gateway.yaml"
    path.write_text(CONFIG.format(tmp=tmp))
    profiles = load_profiles()
    gw = Gateway(parse_config(path.read_text(), str(path), profiles=profiles), profiles, config_path=path)
    await gw.start()
    await asyncio.sleep(3)
    srv = gw.server("prometheus")
    host, port = srv.address()
    headers = {"Authorization": f"Bearer {srv.auth.control_token}"}
    try:
        async with aiohttp.ClientSession(headers=headers) as s:
            for p in ("/health", "/api/overview", "/api/meters/a", "/metrics"):
                times = []
                for _ in range(n):
                    t = time.perf_counter()
                    async with s.get(f"http://{host}:{port}{p}") as r:
                        await r.read()
                    times.append(time.perf_counter() - t)
                times.sort()
                p95 = times[int(0.95 * (len(times) - 1))]
                print(f"{p:16} median {statistics.median(times) * 1000:7.2f} ms   p95 {p95 * 1000:7.2f} ms")
    finally:
        await gw.stop()
    ph = PasswordHasher()
    h = ph.hash("benchmark-password")
    t = time.perf_counter()
    for _ in range(5):
        ph.verify(h, "benchmark-password")
    print(f"argon2id check ({h.split('$')[3]}): {(time.perf_counter() - t) / 5 * 1000:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100))
