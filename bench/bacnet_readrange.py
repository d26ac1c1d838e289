"""ReadRange of a Trend Log holding a full buffer: time per request through the gateway's bacpypes3 application in
this process (the answer is built and encoded, then dropped; no network). `python bench/bacnet_readrange.py`
prints one JSON line per range; the cost must follow what the answer carries (max-APDU 1476: about 70 records), not
the buffer size."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from zoneinfo import ZoneInfo

from bacpypes3.apdu import ReadRangeRequest
from bacpypes3.basetypes import Range, RangeByPosition, RangeByTime
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address

from meter_gateway.bacnet_model import ObjectSpec
from meter_gateway.config import BacnetTrendSection
from meter_gateway.core.catalogue import load_catalogue
from meter_gateway.servers.bacnet import _GatewayApplication
from meter_gateway.servers.bacnet_trend import bacnet_datetime, make_trend_logs, meter_trend_specs, read_range

READS = 100
BUFFER = 2000
ZONE = ZoneInfo("Europe/Paris")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main() -> None:
    cat = {p.name: p for p in load_catalogue()}
    spec = ObjectSpec("m", cat["Active_Energy_Import"], "accumulator", 1001, "m.Active_Energy_Import", "energy")
    cfg = BacnetTrendSection(enabled=True, interval=900, buffer_size=BUFFER)
    (log,) = make_trend_logs(meter_trend_specs(cfg, [spec]), cfg)
    t0 = 1_790_000_000.0
    for i in range(BUFFER + 500):  # a ring that has wrapped
        log._gw_buffer.add(t0 + 900 * i, "unsigned", 100_000 + i, (0, 0, 0, 0))
    device = DeviceObject(
        objectIdentifier=("device", 599),
        objectName="bench",
        vendorIdentifier=999,
        maxApduLengthAccepted=1476,
        segmentationSupported="segmentedBoth",
    )
    port = NetworkPortObject(f"127.0.0.1/8:{_free_port()}", objectIdentifier=("network-port", 1), objectName="np")
    app = _GatewayApplication.from_object_list([device, port, log])
    sizes: list[int] = []

    async def response(apdu) -> None:
        sizes.append(len(apdu.encode().pduData))

    app.response = response
    middle = log._gw_buffer.records[BUFFER // 2].ts
    ranges = {
        "by position 1, count 2000": Range(byPosition=RangeByPosition(referenceIndex=1, count=BUFFER)),
        "by position 2000, count -2000": Range(byPosition=RangeByPosition(referenceIndex=BUFFER, count=-BUFFER)),
        "by time (middle), count 100": Range(
            byTime=RangeByTime(referenceTime=bacnet_datetime(middle, ZONE), count=100)
        ),
    }
    for name, rng in ranges.items():
        start = time.perf_counter()
        for _ in range(READS):
            req = ReadRangeRequest(objectIdentifier=("trendLog", 1001), propertyIdentifier="logBuffer", range=rng)
            req.pduSource = Address("127.0.0.1:47808")
            req.apduMaxResp = 5  # 1476 octets, no segmentation
            req.apduSA = 0
            await read_range(app, req, ZONE)
        ms = 1000 * (time.perf_counter() - start) / READS
        print(json.dumps({"range": name, "buffer": BUFFER, "ms_per_request": round(ms, 2), "octets": sizes[-1]}))
    await asyncio.sleep(0.1)
    app.close()


if __name__ == "__main__":
    asyncio.run(main())
