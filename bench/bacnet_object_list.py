"""Object-list read element by element (as bacepics and many head-ends do): time per element against the number of
objects, through the gateway's bacpypes3 application in this process (no network, so the figure is the device's own
cost), and the same reads as datagrams answered by the fast path. `python bench/bacnet_object_list.py` prints one JSON
line per size; the cost must not grow with the size."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import time

from bacpypes3.apdu import ReadPropertyRequest
from bacpypes3.local.analog import AnalogInputObject
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address

from meter_gateway.servers.bacnet import _GatewayApplication

READS = 500


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def per_element(n: int) -> tuple[float, float]:
    """Milliseconds per object-list[i] read with n analog inputs in the device: normal path, fast path."""
    device = DeviceObject(
        objectIdentifier=("device", 599),
        objectName="bench",
        vendorIdentifier=999,
        maxApduLengthAccepted=1476,
        segmentationSupported="segmentedBoth",
    )
    port = NetworkPortObject(f"127.0.0.1/8:{_free_port()}", objectIdentifier=("network-port", 1), objectName="np")
    objects = [AnalogInputObject(objectIdentifier=("analog-input", i), objectName=f"ai{i}") for i in range(n)]
    app = _GatewayApplication.from_object_list([device, port, *objects])

    async def response(_apdu) -> None:
        return None

    app.response = response  # the answers are built and encoded up to the transaction layer, then dropped
    t0 = time.perf_counter()
    for i in range(1, READS + 1):
        req = ReadPropertyRequest(
            objectIdentifier=("device", 599), propertyIdentifier="objectList", propertyArrayIndex=i
        )
        req.pduSource = Address("127.0.0.1:47808")
        await app.do_ReadPropertyRequest(req)
    elapsed = time.perf_counter() - t0
    # the same reads as datagrams through the fast path (servers/bacnet_fast.py), as the socket hands them over
    frames = []
    for i in range(1, READS + 1):
        index = i.to_bytes(1 if i < 256 else 2, "big")
        apdu = bytes((0x02, 0x05, i % 256, 12, 0x0C)) + struct.pack(">I", (8 << 22) | 599) + b"\x19\x4c"
        apdu += bytes((0x28 | len(index),)) + index
        frames.append(struct.pack(">BBH", 0x81, 0x0A, 6 + len(apdu)) + b"\x01\x04" + apdu)
    fast = app.fast_reads
    t0 = time.perf_counter()
    for frame in frames:
        assert fast.answer(frame, ("127.0.0.1", 47808)) is not None
    fast_elapsed = time.perf_counter() - t0
    await asyncio.sleep(0.1)  # let the sockets finish binding before closing them
    app.close()
    return 1000 * elapsed / READS, 1000 * fast_elapsed / READS


async def main() -> None:
    logging.disable(logging.CRITICAL)
    for n in (500, 5000, 13250):
        ms, fast_ms = await per_element(n)
        print(
            json.dumps(
                {"objects": n + 2, "ms_per_object_list_element": round(ms, 3), "fast_path_ms": round(fast_ms, 4)}
            ),
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main())
