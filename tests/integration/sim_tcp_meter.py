"""A simulated generic Modbus TCP meter (unit 1) in its own process: prints its port, serves until killed.

The browser tests kill this process to see a meter turn to communication failure in the page.
"""

from __future__ import annotations

import asyncio
import sys

from meter_gateway.profiles import load_profiles
from meter_gateway.sim.modbus import TcpSimServer, make_meter


async def main() -> None:
    """Serve one simulated meter on 127.0.0.1 (port 0 or argv[1]) until the process is killed."""
    server = TcpSimServer([make_meter(1, load_profiles().get("generic"), seed=3)])
    port = await server.start()
    print(port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
