"""Capture real BACnet/IP requests as seeds for the mutation fuzzer: `python tests/fuzz/capture_bacnet_seeds.py`.

Starts a gateway on simulated meters, puts a recording UDP proxy in front of its BACnet/IP device and runs the
test suite's bacpypes3 client (tests/integration/bacnet_client.py, in its own process) through it. Every
datagram the client sends is written, one hex datagram per line, to tests/data/bacnet-seeds/requests.hex.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

from helpers import BacnetClient
from meter_gateway.app import Gateway
from meter_gateway.config import parse_config
from meter_gateway.profiles import load_profiles

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "bacnet-seeds" / "requests.hex"
YAML = """
gateway: {name: capture}
buses: [{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.3}]
meters:
  - {id: a, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000, modbus_unit: 1,
     allow_config_writes: true}
upstream:
  bacnet: {enabled: true, bind: 127.0.0.1, netmask: 8, port: 0, device_instance: 599}
  modbus_tcp: {enabled: false}
  prometheus: {enabled: false}
writes: {enabled: true, allow_bacnet: [127.0.0.0/8], audit_log: /dev/null}
"""


def free_udp() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy(asyncio.DatagramProtocol):
    """Forwards client datagrams to the device (recording them) and the device's answers back."""

    def __init__(self, target: tuple[str, int], frames: list[bytes]) -> None:
        self.target, self.frames = target, frames
        self.client: tuple[str, int] | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if addr[1] == self.target[1]:
            if self.client:
                self.transport.sendto(data, self.client)
        else:
            self.client = addr
            self.frames.append(data)
            self.transport.sendto(data, self.target)


async def main() -> None:
    profiles = load_profiles()
    gw = Gateway(parse_config(YAML, profiles=profiles), profiles)
    await gw.start()
    await asyncio.sleep(2)
    target = next(s for s in gw.servers if s.name == "bacnet").address()
    frames: list[bytes] = []
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: Proxy(target, frames), local_addr=("127.0.0.1", 0))
    proxy_port = transport.get_extra_info("sockname")[1]
    client = await BacnetClient.start(proxy_port)  # a bacpypes3 client in its own process
    try:
        await client("whois")
        for obj, prop in (
            ("device,599", "object-name"),
            ("device,599", "object-list"),
            ("analog-input,1011", "present-value"),
            ("accumulator,1001", "present-value"),
            ("binary-input,1031", "status-flags"),
            ("multi-state-input,1037", "state-text"),
        ):
            await client("rp", obj=obj, prop=prop)
        await client("rpm", obj="analog-input,1011", props=["all"])
        await client("wp", obj="analog-value,1047", value=30.0)
        await client("wp", obj="binary-output,1030", value="active")
        await client("wp", obj="analog-input,1011", value=1.0)
        await client("subscribe", obj="analog-input,1011")
        await client("notifications", wait=1.0)
    finally:
        await client.close()
    transport.close()
    await gw.stop()
    unique = list(dict.fromkeys(frames))
    OUT.write_text("".join(f.hex() + "\n" for f in unique))
    print(f"{len(unique)} datagrams written to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
