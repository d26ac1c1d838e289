"""BACnet/IP throughput: ReadProperty per second with one request in flight, and ReadPropertyMultiple points per
second, against the gateway serving 32 simulated meters. The client runs in its own process."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from bacnet_peer import client_app, free_udp_port, start_gateway

CLIENT_SECONDS = 5.0


async def client(my_port: int, target: str, objects: list[str]) -> dict:
    """Run in the client process: measure and return the figures."""
    from bacpypes3.pdu import Address

    app = client_app(my_port, 3998, "bench-client")
    addr = Address(target)
    await app.who_is(0, 4194303, addr, timeout=3)
    n = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < CLIENT_SECONDS:
        await app.read_property(addr, objects[n % len(objects)], "present-value")
        n += 1
    rp = n / (time.monotonic() - t0)
    points = 0
    batch = 20
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < CLIENT_SECONDS:
        params: list = []
        for k in range(batch):
            params += [objects[(i + k) % len(objects)], ["present-value"]]
        res = await app.read_property_multiple(addr, params)
        points += len(res)
        i += batch
    rpm = points / (time.monotonic() - t0)
    app.close()
    return {"read_property_per_s": round(rp, 1), "rpm_points_per_s": round(rpm, 1), "rpm_batch": batch}


async def run(meters: int = 32) -> dict:
    """Start the gateway with `meters` simulated meters and measure it from a client process."""
    gw = await start_gateway(meters)
    try:
        port = gw.servers[0].address()[1]
        objects = [f"analog-input,{1000 * i + idx}" for i in range(1, meters + 1) for idx in (5, 11, 17, 25)]
        my_port = free_udp_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--client",
            str(my_port),
            f"127.0.0.1:{port}",
            json.dumps(objects),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        return {"meters": meters, "objects": len(gw.servers[0].objects)} | json.loads(
            out.decode().strip().splitlines()[-1]
        )
    finally:
        await gw.stop()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        print(json.dumps(asyncio.run(client(int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])))))
    else:
        print(json.dumps(asyncio.run(run())))
