"""Simulated generic Modbus TCP meters (units 1..N) in their own process: prints the port, serves until killed.

The browser tests kill this process to see a meter turn to communication failure in the page; bench/web_load.py
passes `--log FILE` to get one line per request received (monotonic time, unit, PDU head in hex), from which it
measures the gateway's poll rhythm from outside the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from meter_gateway.profiles import load_profiles
from meter_gateway.sim.modbus import TcpSimServer, make_meter


def _logged(meter, fh):
    """Wrap a simulated meter's PDU handler so that each request is written to `fh` as it arrives."""
    handle = meter.handle_pdu

    def handle_pdu(pdu: bytes) -> bytes:
        fh.write(f"{time.monotonic():.6f} {meter.unit} {pdu[:5].hex()}\n")
        return handle(pdu)

    meter.handle_pdu = handle_pdu


async def main() -> None:
    """Serve the simulated meters on 127.0.0.1 until the process is killed."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=1)
    ap.add_argument("--log", default="")
    args = ap.parse_args()
    profile = load_profiles().get("generic")
    meters = [make_meter(u, profile, seed=u + 2) for u in range(1, args.units + 1)]
    if args.log:
        fh = open(args.log, "w", buffering=1)  # noqa: SIM115 - open until the process is killed
        for m in meters:
            _logged(m, fh)
    server = TcpSimServer(meters)
    print(await server.start(), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
