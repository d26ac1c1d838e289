"""`meter-gateway scan`: find the meters on a bus and print what to put in gateway.yaml."""

from __future__ import annotations

import asyncio
import logging
import sys

from ..config import INSTANCE_BLOCK, MbusBus
from ..scanning import scan_driver
from ._common import add_config_arg, load_or_exit, serial_port_problem


class ScanError(Exception):
    """The scan cannot run (missing or busy port); str() is the message for the user."""


def add_parser(sub) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "scan",
        help="list the meters answering on a bus (Modbus unit ids, M-Bus addresses) with the lines for `meters:`",
        description="Works with no meter configured yet (`meters: []`) and on simulated buses. "
        "Exit status: 0 meters found, 1 none answered, 2 the bus cannot be scanned (unknown, port missing or busy).",
    )
    add_config_arg(p)
    p.add_argument("bus", help="bus id from the configuration")
    p.add_argument("--first", type=int, default=None, help="first address to probe")
    p.add_argument("--last", type=int, default=None, help="last address to probe")
    p.add_argument("--no-secondary", action="store_true", help="M-Bus: skip the secondary wildcard search")
    p.set_defaults(func=_main)


def _main(args) -> int:
    cfg, profiles = load_or_exit(args.config)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        bus = cfg.bus(args.bus)
    except StopIteration:
        print(f"error: no bus {args.bus!r}; buses: {', '.join(b.id for b in cfg.buses)}", file=sys.stderr)
        return 2
    found = _scan_by_gateway(cfg, bus, args)
    if isinstance(found, str):
        print(f"error: {found}", file=sys.stderr)
        return 2
    if found is None:
        try:
            check_port(bus)
            found = asyncio.run(_scan(cfg, bus, profiles, args))
        except ScanError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if not found:
        print(f"no meter answered on {bus.id}")
        return 1
    for line in proposal(cfg, bus, found):
        print(line)
    return 0


def _scan_by_gateway(cfg, bus, args) -> list[dict] | str | None:
    """Ask the running gateway (it owns the line) to scan between polls; None when no gateway answers."""
    from ..live import fetch_scan, target

    up = cfg.upstream.prometheus
    if not up.enabled or up.port == 0:
        return None
    where = target(cfg, args.config)
    found = fetch_scan(where, bus.id, args.first, args.last, not args.no_secondary)
    if isinstance(found, list):
        print(f"# scanned by the running gateway at {where.base} (bus {bus.id} paused meanwhile)")
    return found


def check_port(bus) -> None:
    """Refuse a serial port that does not exist or that another process holds (e.g. the running gateway)."""
    problem = serial_port_problem(bus, "scan")
    if problem:
        raise ScanError(problem)


async def _scan(cfg, bus, profiles, args) -> list[dict]:
    sims = None
    where: dict = {}
    if bus.simulated:
        from ..app import SimulatedLines

        sims = SimulatedLines(profiles)
        where = await sims.open(bus, cfg.meters_on(bus.id))
        if isinstance(bus, MbusBus):
            bus = bus.model_copy(update={"parity": "N"})  # a pty only takes 8N1
    try:
        if isinstance(bus, MbusBus):
            return await _scan_mbus(bus, profiles, args, where)
        return await _scan_modbus(bus, profiles, args, where)
    finally:
        if sims is not None:
            await sims.close()


async def _scan_modbus(bus, profiles, args, where: dict) -> list[dict]:
    from ..drivers.modbus import ModbusDriver

    driver = ModbusDriver(bus, profiles, **where)
    try:
        await driver.open()
    except OSError as exc:
        raise ScanError(f"bus {bus.id}: cannot open the line: {exc}") from None
    try:
        return await scan_driver(driver, bus, profiles, args.first, args.last, not args.no_secondary)
    finally:
        await driver.close()


async def _scan_mbus(bus, profiles, args, where: dict) -> list[dict]:
    from ..drivers.mbus import MbusDriver

    driver = MbusDriver(bus, profiles, **where)
    try:
        await driver.link.open()
    except Exception as exc:  # pyserial raises SerialException (an OSError subclass) or ValueError
        raise ScanError(f"bus {bus.id}: cannot open {driver.link.port}: {exc}") from None
    try:
        return await scan_driver(driver, bus, profiles, args.first, args.last, not args.no_secondary)
    finally:
        await driver.close()


def proposal(cfg, bus, found: list[dict]) -> list[str]:
    """Lines for `meters:`, marking meters already configured; new ids, bases and units do not clash."""
    configured = {str(m.address): m.id for m in cfg.meters if m.bus == bus.id}
    ids = {m.id for m in cfg.meters}
    units = {m.modbus_unit for m in cfg.meters if m.modbus_unit is not None}
    bases = [m.bacnet_instance_base for m in cfg.meters if m.bacnet_instance_base is not None]
    next_base = max([cfg.upstream.bacnet.device_instance, *bases], default=0) // INSTANCE_BLOCK * INSTANCE_BLOCK
    out = [f"# {len(found)} meter(s) on bus {bus.id}; add the new ones to `meters:` (ids and numbers are suggestions)"]
    n = 0
    for f in found:
        addr = f["address"]
        shown = addr if isinstance(addr, int) else f'"{addr}"'
        ident = f" secondary id {f['ident']}" if f.get("ident") and isinstance(addr, int) else ""
        known = configured.get(str(addr)) or (configured.get(f.get("ident", "")) if f.get("ident") else None)
        if known:
            note = f"; {f['note']}" if f.get("note") else ""
            out.append(
                f"  # address {addr}{ident}: already configured as meter {known!r}; "
                f"scan proposes {f['profile'] or 'no profile'}{note}"
            )
            continue
        n += 1
        mid = f"{bus.id}-{n}"
        while mid in ids:
            n += 1
            mid = f"{bus.id}-{n}"
        ids.add(mid)
        line = f"  - {{id: {mid}, bus: {bus.id}, address: {shown}, profile: {f['profile'] or 'CHOOSE'}"
        if f.get("variant"):
            line += f", variant: {f['variant']}"
        if cfg.upstream.bacnet.enabled:
            next_base += INSTANCE_BLOCK
            line += f", bacnet_instance_base: {next_base}"
        if cfg.upstream.modbus_tcp.enabled:
            unit = next((u for u in range(1, 248) if u not in units), None)
            if unit is not None:
                units.add(unit)
                line += f", modbus_unit: {unit}"
        notes = [x for x in (ident.strip(), f.get("note", "")) if x]
        out.append(line + "}" + (f"  # {'; '.join(notes)}" if notes else ""))
    return out
