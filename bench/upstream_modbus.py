"""Modbus TCP throughput: requests per second reading 50 registers, 1 and 8 concurrent clients, against the gateway
(answering from its table) and against a bare pymodbus server serving the same 50 registers, in the same run."""

from __future__ import annotations

import asyncio
import time

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simutils import DataType

from meter_gateway.app import Gateway
from meter_gateway.config import parse_config
from meter_gateway.profiles import load_profiles

YAML = """
gateway: {name: bench}
buses: [{id: rtu, type: modbus_rtu, simulated: true}]
meters: [{id: m1, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000, modbus_unit: 1}]
upstream:
  bacnet: {enabled: false}
  prometheus: {enabled: false}
  modbus_tcp: {enabled: true, bind: 127.0.0.1, port: 0}
"""


async def hammer(port: int, clients: int, seconds: float) -> float:
    """Requests per second of `clients` connections each reading holding 0..49 in a loop."""
    conns = [AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0) for _ in range(clients)]
    for c in conns:
        assert await c.connect()
    count = 0
    end = time.monotonic() + seconds

    async def loop(c: AsyncModbusTcpClient) -> None:
        nonlocal count
        while time.monotonic() < end:
            r = await c.read_holding_registers(0, count=50, device_id=1)
            if r.isError():
                raise RuntimeError(f"error reply {r}")
            count += 1

    t0 = time.monotonic()
    await asyncio.gather(*(loop(c) for c in conns))
    elapsed = time.monotonic() - t0
    for c in conns:
        c.close()
    return count / elapsed


async def run(seconds: float = 4.0) -> dict:
    """Measure both servers with 1 and 8 clients."""
    profiles = load_profiles()
    gw = Gateway(parse_config(YAML, profiles=profiles), profiles)
    await gw.start()
    bare = ModbusTcpServer(
        [SimDevice(id=1, simdata=[SimData(0, values=list(range(50)), datatype=DataType.REGISTERS)])],
        address=("127.0.0.1", 0),
    )
    await bare.serve_forever(background=True)
    bare_port = bare.transport.sockets[0].getsockname()[1]
    try:
        await asyncio.sleep(1.0)
        gw_port = gw.servers[0].address()[1]
        out = {}
        for n in (1, 8):
            out[f"gateway_rps_{n}"] = round(await hammer(gw_port, n, seconds), 1)
            out[f"bare_pymodbus_rps_{n}"] = round(await hammer(bare_port, n, seconds), 1)
            out[f"ratio_{n}"] = round(out[f"gateway_rps_{n}"] / out[f"bare_pymodbus_rps_{n}"], 3)
        return out
    finally:
        await bare.shutdown()
        await gw.stop()


if __name__ == "__main__":
    import json

    print(json.dumps(asyncio.run(run())))
