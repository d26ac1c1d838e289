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
        {"address": f["unit"], "profile": f["profile"], "ident": ""}
        for f in await scan_modbus(driver, range(lo, hi + 1))
    ]


async def _scan_mbus(driver: Any, profiles: Any, first: int | None, last: int | None, secondary: bool) -> list[dict]:
    from .drivers.base import DriverError

    by_maker = {
        getattr(profiles.get(n), "manufacturer_id", None): n
        for n in profiles.names()
        if getattr(profiles.get(n), "protocol", "") == "mbus"
    }
    lo, hi = first if first is not None else 0, last if last is not None else 250
    found: list[dict] = []
    seen_ids: set[str] = set()
    for a in await driver.scan_primary(range(lo, hi + 1)):
        entry = {"address": a, "profile": "mbus_generic", "ident": ""}
        try:
            payloads, _records = await driver.read_telegrams(a)
            header = payloads[0].header if payloads else None
        except DriverError:
            header = None
        if header is not None:
            entry["ident"] = header.ident
            entry["profile"] = by_maker.get(header.manufacturer, "mbus_generic")
            seen_ids.add(header.ident)
        found.append(entry)
    if secondary:
        for ident in await driver.scan_secondary():
            if ident not in seen_ids:  # a meter with a primary address answers the wildcard search too
                found.append({"address": ident, "profile": "mbus_generic", "ident": ident})
    return found
