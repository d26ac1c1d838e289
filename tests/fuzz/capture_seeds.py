"""Capture real Modbus TCP requests as seeds for the mutation fuzzer: `python tests/fuzz/capture_seeds.py`.

Starts a gateway on simulated meters, puts a recording TCP proxy in front of its Modbus TCP server and drives two
independent clients through it: mbpoll (if installed) and pymodbus' client. Every request frame the proxy sees is
written, one hex frame per line, to tests/data/modbus-tcp-seeds/requests.hex.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

from meter_gateway.app import Gateway
from meter_gateway.config import parse_config
from meter_gateway.profiles import load_profiles

OUT = Path(__file__).resolve().parents[1] / "data" / "modbus-tcp-seeds" / "requests.hex"
YAML = """
gateway: {name: capture}
buses: [{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.3}]
meters:
  - {id: a, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000, modbus_unit: 1,
     allow_config_writes: true}
  - {id: b, bus: rtu, address: 2, profile: eastron_sdm630, mid: true, bacnet_instance_base: 2000, modbus_unit: 2}
upstream:
  bacnet: {enabled: false}
  modbus_tcp: {enabled: true, bind: 127.0.0.1, port: 0}
  prometheus: {enabled: false}
writes: {enabled: true, allow_modbus: [127.0.0.0/8], audit_log: /dev/null}
"""


async def main() -> None:
    profiles = load_profiles()
    gw = Gateway(parse_config(YAML, profiles=profiles), profiles)
    await gw.start()
    await asyncio.sleep(2)
    target = gw.servers[0].address()
    frames: list[bytes] = []

    async def pipe(reader, writer, record: bool) -> None:
        buf = b""
        while data := await reader.read(4096):
            writer.write(data)
            if record:
                buf += data
                while len(buf) >= 6 and len(buf) >= 6 + int.from_bytes(buf[4:6], "big"):
                    n = 6 + int.from_bytes(buf[4:6], "big")
                    frames.append(buf[:n])
                    buf = buf[n:]
        writer.close()

    async def client(reader, writer) -> None:
        up_r, up_w = await asyncio.open_connection(*target)
        await asyncio.gather(pipe(reader, up_w, True), pipe(up_r, writer, False))

    proxy = await asyncio.start_server(client, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    mbpoll = shutil.which("mbpoll")
    if mbpoll:
        for args in (
            ["-a", "1", "-r", "1", "-c", "12", "-t", "4:float", "-B"],
            ["-a", "1", "-r", "1", "-c", "8", "-t", "3:int", "-B"],
            ["-a", "2", "-r", "101", "-c", "5", "-t", "3"],
            ["-a", "1", "-r", "1", "-c", "3", "-t", "0"],
            ["-a", "1", "-r", "1", "-c", "23", "-t", "1"],
            ["-a", "1", "-r", "1005", "-t", "4:float", "-B", "30"],
            ["-a", "1", "-r", "1", "-t", "0", "1"],
            ["-a", "9", "-r", "1", "-c", "2"],
        ):
            await asyncio.to_thread(
                subprocess.run, [mbpoll, "-m", "tcp", "-p", str(port), "-1", *args, "127.0.0.1"], capture_output=True
            )
    c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=3, retries=0)
    await c.connect()
    dt = c.DATATYPE
    await c.read_holding_registers(20, count=12, device_id=1)
    await c.read_holding_registers(1000, count=18, device_id=2)
    await c.read_input_registers(0, count=8, device_id=2)
    await c.read_input_registers(100, count=24, device_id=1)
    await c.read_coils(0, count=3, device_id=1)
    await c.read_discrete_inputs(0, count=23, device_id=2)
    await c.write_coil(0, True, device_id=1)
    await c.write_coils(0, [False, False, True], device_id=1)
    await c.write_register(1004, 0, device_id=1)
    await c.write_registers(1004, c.convert_to_registers(15.0, dt.FLOAT32), device_id=1)
    await c.write_registers(1014, c.convert_to_registers(110.0, dt.FLOAT32), device_id=2)
    await c.readwrite_registers(
        read_address=1004,
        read_count=2,
        write_address=1004,
        values=c.convert_to_registers(30.0, dt.FLOAT32),
        device_id=1,
    )
    await c.mask_write_register(address=1004, and_mask=0xFFFF, or_mask=0, device_id=1)
    await c.diag_read_diagnostic_register(device_id=1)
    await c.diag_query_data(b"\x12\x34", device_id=1)
    await c.read_device_information(device_id=1)
    await c.report_device_id(device_id=1)
    c.close()
    await asyncio.sleep(0.5)
    proxy.close()
    await gw.stop()
    unique = list(dict.fromkeys(frames))
    OUT.write_text("".join(f.hex() + "\n" for f in unique))
    print(f"{len(unique)} request frames written to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
