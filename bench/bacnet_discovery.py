"""Who-Is through the per-meter router (upstream.bacnet.discovery): how long a head-end needs to find every meter
device, and how many I-Ams a flood of remote-broadcast Who-Is buys, with the limits and without them.

A whole gateway runs in this process on simulated Modbus TCP meters; the clients are plain UDP sockets in a thread
(one per source address, 127.0.0.x). `python bench/bacnet_discovery.py [meters] [answers_per_second]` prints one
JSON line per case."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import tempfile
import time
from pathlib import Path

from meter_gateway.app import Gateway
from meter_gateway.config import parse_config
from meter_gateway.profiles import load_profiles

VNET = 2001


def config(n: int, discovery: str) -> str:
    """n generic meters on one simulated Modbus TCP bus, one BACnet device per meter behind the router."""
    meters = "\n".join(
        f"  - {{id: m{i}, bus: tcp{(i - 1) // 200}, address: {(i - 1) % 200 + 1}, profile: generic, "
        f"bacnet_instance_base: {1000 + 100 * i}}}"
        for i in range(1, n + 1)
    )
    buses = "\n".join(
        f"  - {{id: tcp{b}, type: modbus_tcp, simulated: true, port: 0}}" for b in range((n + 199) // 200)
    )
    return f"""
gateway: {{name: bench}}
buses:
{buses}
meters:
{meters}
upstream:
  bacnet: {{enabled: true, bind: 127.0.0.1, netmask: 8, port: 0, device_instance: 599, devices: per-meter,
           virtual_network: {VNET}, discovery: {discovery}}}
  modbus_tcp: {{enabled: false}}
  prometheus: {{enabled: false}}
"""


WHO_IS = bytes.fromhex("810a000c" + "0120" + f"{VNET:04x}" + "00ff" + "1008")  # remote broadcast to the virtual net


def who_is(port: int, source: str, count: int, want: int, quiet: float, limit: float) -> dict:
    """Send `count` Who-Is from `source`; I-Ams until `want` distinct devices answered and `quiet` s passed."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(0.05)
        t0 = time.monotonic()
        for _ in range(count):
            s.sendto(WHO_IS, ("127.0.0.1", port))
        sent = time.monotonic() - t0
        devices: set[bytes] = set()
        i_ams, all_found, last = 0, None, time.monotonic()
        while time.monotonic() - t0 < limit and time.monotonic() - last < quiet:
            try:
                data = s.recv(1500)
            except TimeoutError:
                continue
            at = data.find(b"\x10\x00\xc4", 4)  # I-Am, then the device's object identifier
            if at > 0:
                i_ams += 1
                last = time.monotonic()
                devices.add(data[at + 3 : at + 7])
                if len(devices) >= want and all_found is None:
                    all_found = last - t0
    return {
        "who_is_sent": count,
        "send_s": round(sent, 3),
        "i_ams": i_ams,
        "devices": len(devices),
        "all_found_s": round(all_found, 3) if all_found is not None else None,
    }


BACNET_STACK = Path(__file__).resolve().parents[1].parent / "shared" / "tools" / "bacnet-stack" / "bin"


def bacwi(port: int, timeout_ms: int) -> dict:
    """bacnet-stack's bacwi --dnet (an independent client): the meter devices it lists within its APDU timeout."""
    import os
    import re
    import subprocess

    tool = Path(os.environ.get("BACNET_STACK_BIN") or BACNET_STACK) / "bacwi"
    if not tool.exists():
        return {"case": "bacwi", "skipped": f"{tool} not found"}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        own = s.getsockname()[1]
    env = {**os.environ, "BACNET_IFACE": "lo", "BACNET_IP_PORT": str(own), "BACNET_APDU_TIMEOUT": str(timeout_ms)}
    args = [str(tool), "--mac", f"127.0.0.1:{port}", "--dnet", str(VNET)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, check=False).stdout
    found = set(re.findall(rf"^\s*(\d+)\s+\S+\s+{VNET}\s", out, re.M))
    return {"case": f"bacwi --dnet {VNET}, APDU timeout {timeout_ms} ms", "devices": len(found)}


async def run(n: int, discovery: str, cases: list[tuple[str, str, int]], profiles) -> list[dict]:
    """One gateway, the cases one after the other (name, source address, Who-Is sent)."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gateway.yaml"
        text = config(n, discovery)
        path.write_text(text)
        gw = Gateway(parse_config(text, str(path), profiles=profiles), profiles, config_path=path)
        await gw.start()
        try:
            port = gw.servers[0].address()[1]
            for name, source, count in cases:
                if name == "bacwi":
                    r = await asyncio.to_thread(bacwi, port, count)
                    out.append({"meters": n, "discovery": discovery, **r})
                    continue
                r = await asyncio.to_thread(who_is, port, source, count, n, 3.0, 120.0)
                out.append({"case": name, "meters": n, "discovery": discovery, **r})
        finally:
            await gw.stop()
    return out


async def main(n: int, rate: int) -> None:
    """With the limits (defaults but answers_per_second), then without them."""
    logging.disable(logging.WARNING)
    profiles = load_profiles()
    limited = f"{{answers_per_second: {rate}}}"
    cases = [
        ("one Who-Is (a head-end discovering)", "127.0.0.2", 1),
        ("flood of 1000 from one source", "127.0.0.3", 1000),
        ("flood of 20 from one source", "127.0.0.4", 20),
        ("bacwi", "", 3000),
    ]
    for r in await run(n, limited, cases, profiles):
        print(json.dumps(r), flush=True)
    for r in await run(n, "{enabled: false}", [("flood of 20 from one source", "127.0.0.4", 20)], profiles):
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(args[0] if args else 250, args[1] if len(args) > 1 else 100))
