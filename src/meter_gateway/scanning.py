"""Finding meters on a bus through an open driver: used by `meter-gateway scan` and by a running gateway."""

from __future__ import annotations

from typing import Any


async def scan_driver(driver: Any, bus: Any, profiles: Any, first: int | None, last: int | None, secondary: bool):
    """Meters answering on the driver's line: [{address, profile, ident}], each meter once."""
    from .config import MbusBus

    if isinstance(bus, MbusBus):
        return await _scan_mbus(driver, profiles, first, last, secondary)
    from .drivers.modbus import scan_modbus

    lo, hi = first or 1, last or 247
    return [
        {
            "address": f["unit"],
            "profile": f["profile"],
            "variant": f["variant"],
            "ident": "",
            "note": f"identified: {f['evidence']}" if f["identified"] else "GUESS from plausible readings: check",
        }
        for f in await scan_modbus(driver, range(lo, hi + 1))
    ]


async def _scan_mbus(driver: Any, profiles: Any, first: int | None, last: int | None, secondary: bool) -> list[dict]:
    lo, hi = first if first is not None else 0, last if last is not None else 250
    found: list[dict] = []
    seen_ids: set[str] = set()
    for a in await driver.scan_primary(range(lo, hi + 1)):
        entry = await _propose(driver, profiles, a)
        seen_ids.add(entry["ident"])
        found.append(entry)
    if secondary:
        for ident in await driver.scan_secondary():
            if ident not in seen_ids:  # a meter with a primary address answers the wildcard search too
                found.append(await _propose(driver, profiles, ident))
    return found


async def _propose(driver: Any, profiles: Any, address: int | str) -> dict:
    """Read a found M-Bus meter's header; the profile matching its manufacturer, medium and version, and why."""
    from .drivers.base import DriverError
    from .profiles.mbus import propose_profile

    entry: dict[str, Any] = {"address": address, "profile": None, "ident": "" if isinstance(address, int) else address}
    try:
        payloads, _records = await driver.read_telegrams(address)
    except DriverError as exc:
        return entry | {"note": f"header not read ({exc}): choose a profile"}
    header = next((p.header for p in payloads if p.header is not None), None)
    if header is None:
        return entry | {"note": "telegram without a header: choose a profile"}
    name, why = propose_profile(profiles, header.manufacturer, header.medium, header.version)
    return entry | {"ident": header.ident, "profile": name, "note": why}
