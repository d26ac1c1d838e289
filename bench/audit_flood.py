"""Audit log growth under a flood of refused writes (issue 21: 465 kB/s, fsynced, before the rate limit).

`python bench/audit_flood.py [seconds]`: a gateway on a simulated meter with writes disabled; clients on 4
connections write distinct values to HR 1005 (Demand_Interval) as fast as they can, then the same value; prints
requests/s and audit bytes/s for both floods.
"""

from __future__ import annotations

import asyncio
import struct
import sys
import tempfile
import time
from pathlib import Path

from meter_gateway.app import Gateway
from meter_gateway.config import parse_config
from meter_gateway.profiles import load_profiles

YAML = """
gateway: {name: flood}
buses: [{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.3}]
meters:
  - {id: a, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000, modbus_unit: 1}
upstream:
  bacnet: {enabled: false}
  modbus_tcp: {enabled: true, bind: 127.0.0.1, port: 0}
  prometheus: {enabled: false}
writes: {enabled: false, audit_log: AUDIT}
"""


async def flood(port: int, seconds: float, distinct: bool) -> int:
    async def one(k: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            value = float(n * 4 + k) if distinct else 30.0
            pdu = struct.pack(">BHHB", 16, 1004, 2, 4) + struct.pack(">f", value)
            writer.write(struct.pack(">HHHB", n & 0xFFFF, 0, len(pdu) + 1, 1) + pdu)
            await reader.readexactly(9)
            n += 1
        writer.close()
        return n

    return sum(await asyncio.gather(*(one(k) for k in range(4))))


async def main(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        audit = Path(tmp) / "audit.jsonl"
        profiles = load_profiles()
        gw = Gateway(parse_config(YAML.replace("AUDIT", str(audit)), profiles=profiles), profiles)
        await gw.start()
        port = gw.servers[0].address()[1]
        for distinct in (True, False):
            size0 = audit.stat().st_size
            n = await flood(port, seconds, distinct)
            size1 = audit.stat().st_size
            kind = "distinct values" if distinct else "one repeated value"
            print(
                f"{kind}: {n / seconds:.0f} refused writes/s, audit {(size1 - size0) / seconds / 1000:.1f} kB/s"
                f" ({(size1 - size0) / max(1, n):.1f} bytes per attempt)"
            )
        await gw.stop()
        records = audit.read_text().splitlines()
        import json

        total = sum(json.loads(r).get("count", 1) for r in records)
        print(f"after stop: {len(records)} records standing for {total} attempts")


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0))
