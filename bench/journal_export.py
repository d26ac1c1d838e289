"""Billing exports against a large journal while a Modbus client reads every 100 ms: export time and the longest
Modbus read wait. `python bench/journal_export.py` (the scenarios of issue 22: 3 years at 15 min, 6 months at 60 s).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from pymodbus.client import AsyncModbusTcpClient

from meter_gateway.app import Gateway
from meter_gateway.config import parse_config
from meter_gateway.journal.store import Reading, open_journal
from meter_gateway.profiles import load_profiles

YAML = """
gateway: {name: bench, timezone: Europe/Paris}
buses: [{id: rtu, type: modbus_rtu, simulated: true}]
meters:
  - {id: a, tenant: T1, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000, modbus_unit: 1}
  - {id: b, tenant: T2, bus: rtu, address: 2, profile: generic, bacnet_instance_base: 2000, modbus_unit: 2}
upstream:
  bacnet: {enabled: false}
  modbus_tcp: {enabled: true, bind: 127.0.0.1, port: 0}
  prometheus: {enabled: true, bind: 127.0.0.1, port: 0}
journal: {enabled: true, interval: INTERVAL, path: JOURNAL}
writes: {audit_log: AUDIT}
"""


def build(path: Path, interval: int, days: int) -> tuple[int, int, int]:
    """A journal of two meters over `days` written through the gateway's store; returns (start, end, rows)."""
    end = int(time.time()) // interval * interval - interval
    start = end - days * 86400
    store, events, _ = open_journal(path)
    store.append(events)
    batch: list[Reading] = []
    n = 0
    for i, b in enumerate(range(start, end + 1, interval)):
        for k, m in enumerate(("a", "b")):
            batch.append(
                Reading(m, f"T{k + 1}", "", "Acme", False, "Active_Energy_Import", "interval", b, "ok", "",
                        f"{i * 0.01 * (k + 1):.2f}", "kWh", "generic", 1, b - 2.0, "synchronized", "good")
            )  # fmt: skip
        if len(batch) >= 20000:
            n += store.append(batch)
            batch.clear()
    n += store.append(batch)
    store.checkpoint()
    store.close()
    return start, end, n


def get(url: str) -> tuple[int, int]:
    with urllib.request.urlopen(url, timeout=600) as r:
        return r.status, len(r.read())


async def scenario(interval: int, days: int, exports: int = 3) -> dict:
    """One journal size: build, start a gateway on it, run `exports` concurrent full-range exports."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.monotonic()
        start, end, rows = await asyncio.to_thread(build, tmp / "journal.sqlite", interval, days)
        built = time.monotonic() - t0
        text = (
            YAML.replace("INTERVAL", str(interval))
            .replace("JOURNAL", str(tmp / "journal.sqlite"))
            .replace("AUDIT", str(tmp / "audit.jsonl"))
        )
        profiles = load_profiles()
        gw = Gateway(parse_config(text, profiles=profiles), profiles, config_path=tmp / "gateway.yaml")
        await gw.start()
        try:
            while gw.journal.store is None:
                await asyncio.sleep(0.05)
            prom = next(s for s in gw.servers if s.name == "prometheus").address()
            host, port = next(s for s in gw.servers if s.name == "modbus_tcp").address()
            c = AsyncModbusTcpClient(host, port=port, timeout=30, retries=0)
            await c.connect()
            waits: list[float] = []
            stop = asyncio.Event()

            async def reader() -> None:
                loop = asyncio.get_running_loop()
                while not stop.is_set():
                    t = loop.time()
                    await c.read_holding_registers(0, count=2, device_id=1)
                    waits.append(loop.time() - t)
                    await asyncio.sleep(0.1)

            tz = ZoneInfo("Europe/Paris")
            day = lambda t: datetime.fromtimestamp(t, tz).strftime("%Y-%m-%dT%H:%M")  # noqa: E731
            url = f"http://{prom[0]}:{prom[1]}/export?from={day(start)}&to={day(end)}&format=csv"
            task = asyncio.create_task(reader())
            await asyncio.sleep(0.5)
            t1 = time.monotonic()
            answers = await asyncio.gather(*(asyncio.to_thread(get, url) for _ in range(exports)))
            took = time.monotonic() - t1
            await asyncio.sleep(0.3)
            stop.set()
            await task
            c.close()
        finally:
            await gw.stop()
    return {
        "interval_s": interval,
        "days": days,
        "rows": rows,
        "build_s": round(built, 1),
        "exports": exports,
        "statuses": [a[0] for a in answers],
        "exports_s": round(took, 2),
        "modbus_reads": len(waits),
        "modbus_wait_max_ms": round(max(waits) * 1000, 1),
        "modbus_wait_median_ms": round(sorted(waits)[len(waits) // 2] * 1000, 1),
    }


async def main() -> list[dict]:
    """Both scenarios of the issue."""
    out = []
    for interval, days in ((900, 3 * 365), (60, 182)):
        r = await scenario(interval, days)
        print(
            f"journal export  {days:5} days at {interval:4} s ({r['rows']} rows): {r['exports']} concurrent exports "
            f"in {r['exports_s']} s, Modbus read wait max {r['modbus_wait_max_ms']} ms "
            f"(median {r['modbus_wait_median_ms']} ms, {r['modbus_reads']} reads)",
            file=sys.stderr,
        )
        out.append(r)
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
