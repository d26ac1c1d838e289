"""`meter-gateway simulate`: run simulated Modbus meters on a serial port, a new pty, or a TCP port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from ..profiles import load_profiles


def add_parser(sub) -> None:
    """Register the subcommand."""
    p = sub.add_parser("simulate", help="run simulated Modbus meters (RTU on a pty/serial port, or TCP)")
    p.add_argument("--profile", default="generic", help="profile of every simulated meter (default generic)")
    p.add_argument("--units", default="1", help="unit ids, e.g. 1-8 or 1,2,5 (default 1)")
    p.add_argument("--tcp", type=int, metavar="PORT", help="serve Modbus TCP on 127.0.0.1:PORT (0 = free port)")
    p.add_argument("--host", default="127.0.0.1", help="TCP bind address (default 127.0.0.1)")
    p.add_argument("--baudrate", type=int, default=9600, help="pace replies at this baud rate (with --paced)")
    p.add_argument("--paced", action="store_true", help="delay replies by their wire time at --baudrate")
    p.add_argument("--profile-dir", action="append", default=[], help="extra profile directory")
    p.set_defaults(func=_main)


def parse_units(text: str) -> list[int]:
    """Parse '1-3,7' into [1, 2, 3, 7]."""
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    if not out or any(not 1 <= u <= 247 for u in out):
        raise ValueError("unit ids must be within 1-247")
    return out


def _main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        units = parse_units(args.units)
    except ValueError as exc:
        print(f"error: --units: {exc}", file=sys.stderr)
        return 2
    reg = load_profiles(args.profile_dir)
    if args.profile not in reg:
        print(f"error: unknown profile {args.profile!r}; available: {', '.join(reg.names())}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(args, reg.get(args.profile), units))


async def _serve(args, profile, units: list[int]) -> int:
    from ..sim.modbus import RtuSimBus, TcpSimServer, make_meter

    meters = [make_meter(u, profile, seed=u) for u in units]
    if args.tcp is not None:
        srv = TcpSimServer(meters, host=args.host, port=args.tcp)
        port = await srv.start()
        print(f"simulated {profile.name} meters {units} on Modbus TCP {args.host}:{port}", flush=True)
    else:
        srv = RtuSimBus(meters, baudrate=args.baudrate, paced=args.paced)
        port = await srv.start()
        print(f"simulated {profile.name} meters {units} on serial port {port} (8N1)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(asyncio.CancelledError):
        await stop.wait()
    await srv.close()
    return 0
