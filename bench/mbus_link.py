"""M-Bus link-layer cost: frames the master sends and bytes on the wire per readout, and the wire time they take at
2400 baud (11 bits per character, 8E1), for primary and secondary addressing, one and three telegrams.

The meters are the simulator's (they follow the EN 13757-2 FCB rule) on a pty; the figures are counted, not timed:
the wire time is computed from the bytes that crossed the pty. Run: .venv/bin/python bench/mbus_link.py
"""

from __future__ import annotations

import asyncio

from meter_gateway.config import parse_config
from meter_gateway.drivers.mbus import MbusDriver
from meter_gateway.profiles import load_profiles
from meter_gateway.sim.mbus import MbusSimBus, make_mbus_meter

BITS = 11
BAUD = 2400
READS = 5


async def main() -> None:
    """Print frames and wire time per readout (first read, then steady state)."""
    profiles = load_profiles()
    print(f"{'meter':28s} {'frames per read':18s} {'bytes/read':>10s} {'wire ms/read':>12s}")
    for telegrams in (1, 3):
        meters = [
            make_mbus_meter("ale3", 5, profiles.get("mbus_saia_burgess_ale3")),
            make_mbus_meter("fin", "12345678", profiles.get("mbus_finder_7e"), 1),
        ]
        for m in meters:
            m.telegrams = telegrams
        sim = MbusSimBus(meters)
        port = await sim.start()
        cfg = parse_config(
            f"buses: [{{id: mb, type: mbus, port: {port}, parity: N, timeout: 0.1}}]\n"
            "meters:\n"
            "  - {id: ale3, bus: mb, address: 5, profile: mbus_saia_burgess_ale3, bacnet_instance_base: 1000}\n"
            "  - {id: fin, bus: mb, address: '12345678', profile: mbus_finder_7e, bacnet_instance_base: 1100}\n",
            profiles=profiles,
        )
        driver = MbusDriver(cfg.buses[0], profiles, port=port)
        await driver.open()
        try:
            for mid, how in (("ale3", "primary"), ("fin", "secondary")):
                frames, wire = [], []
                for _ in range(READS):
                    mark, b0 = len(sim.log), driver.stats.bytes_sent + driver.stats.bytes_received
                    await driver.read(cfg.meter(mid), ["Active_Energy_Import"])
                    frames.append(len(sim.log) - mark)
                    wire.append(driver.stats.bytes_sent + driver.stats.bytes_received - b0)
                ms = wire[-1] * BITS / BAUD * 1000
                print(f"{how + f', {telegrams} telegram(s)':28s} {frames!s:18s} {wire[-1]:10d} {ms:12.0f}")
        finally:
            await driver.close()
            await sim.close()


if __name__ == "__main__":
    asyncio.run(main())
