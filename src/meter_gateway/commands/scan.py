"""`meter-gateway scan`: find the meters on a bus and print what to put in gateway.yaml."""

from __future__ import annotations

import asyncio
import sys

from ..config import MbusBus
from ._common import add_config_arg, load_or_exit


def add_parser(sub) -> None:
    """Register the subcommand."""
    p = sub.add_parser("scan", help="list the meters answering on a bus (Modbus unit ids, M-Bus addresses)")
    add_config_arg(p)
    p.add_argument("bus", help="bus id from the configuration")
    p.add_argument("--first", type=int, default=None, help="first address to probe")
    p.add_argument("--last", type=int, default=None, help="last address to probe")
    p.add_argument("--no-secondary", action="store_true", help="M-Bus: skip the secondary wildcard search")
    p.set_defaults(func=_main)


def _main(args) -> int:
    cfg, profiles = load_or_exit(args.config)
    try:
        bus = cfg.bus(args.bus)
    except StopIteration:
        print(f"error: no bus {args.bus!r}; buses: {', '.join(b.id for b in cfg.buses)}", file=sys.stderr)
        return 2
    if bus.simulated:
        print(f"error: bus {bus.id} is simulated: scan a real line (simulated: false)", file=sys.stderr)
        return 2
    found = asyncio.run(_scan(bus, profiles, args))
    if not found:
        print(f"no meter answered on {bus.id}")
        return 1
    print(f"# {len(found)} meter(s) on bus {bus.id}; add to `meters:` in gateway.yaml (ids and bases are suggestions)")
    for i, f in enumerate(found, start=1):
        address = f["address"] if isinstance(f["address"], int) else f"'{f['address']}'"
        variant = f", variant: {f['variant']}" if f.get("variant") else ""
        if "identified" in f:  # Modbus: say whether the model was identified or only guessed
            note = f"  # identified: {f['evidence']}" if f["identified"] else "  # GUESS from plausible readings: check"
        else:  # M-Bus: why this profile (manufacturer, medium, version) or why none
            note = f"  # {f['note']}" if f.get("note") else ""
        print(
            f"  - {{id: {bus.id}-{i}, bus: {bus.id}, address: {address}, profile: {f['profile'] or 'CHOOSE'}"
            f"{variant}, bacnet_instance_base: {1000 * i}, modbus_unit: {i}}}{note}"
        )
    return 0


async def _scan(bus, profiles, args) -> list[dict]:
    if isinstance(bus, MbusBus):
        from ..drivers.mbus import MbusDriver

        driver = MbusDriver(bus, profiles)
        await driver.open()
        try:
            lo, hi = args.first if args.first is not None else 0, args.last if args.last is not None else 250
            addresses: list[int | str] = list(await driver.scan_primary(range(lo, hi + 1)))
            if not args.no_secondary:
                addresses += await driver.scan_secondary()
            return [await _identify(driver, profiles, a) for a in addresses]
        finally:
            await driver.close()
    from ..drivers.modbus import ModbusDriver, scan_modbus

    driver = ModbusDriver(bus, profiles)
    await driver.open()
    try:
        lo, hi = args.first or 1, args.last or 247
        return [{"address": f.pop("unit"), **f} for f in await scan_modbus(driver, range(lo, hi + 1))]
    finally:
        await driver.close()


async def _identify(driver, profiles, address: int | str) -> dict:
    """Read a found M-Bus meter's header and propose the profile that matches its manufacturer, medium, version."""
    from ..drivers.base import DriverError
    from ..profiles.mbus import propose_profile

    try:
        payloads, _records = await driver.read_telegrams(address)
    except DriverError as exc:
        return {"address": address, "profile": None, "note": f"header not read ({exc}): choose a profile"}
    header = next((p.header for p in payloads if p.header is not None), None)
    if header is None:
        return {"address": address, "profile": None, "note": "telegram without a header: choose a profile"}
    name, why = propose_profile(profiles, header.manufacturer, header.medium, header.version)
    return {"address": address, "profile": name, "note": why}
