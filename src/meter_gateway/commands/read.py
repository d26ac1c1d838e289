"""`meter-gateway read`: every point of one meter with unit and quality.

While the gateway runs (its HTTP server answers), the values come from it, with their age: the running gateway
owns the line. Otherwise the meter is polled once directly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from decimal import Decimal

from ..core.catalogue import PollClass, load_catalogue
from ..core.table import COMM_STATUS
from ._common import add_config_arg, load_or_exit, local_host, serial_port_problem, show_value


def add_parser(sub) -> None:
    """Register the subcommand."""
    p = sub.add_parser("read", help="poll one meter once and print every point")
    add_config_arg(p)
    p.add_argument("meter", help="meter id from the configuration")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument(
        "--records",
        action="store_true",
        help="M-Bus: also print every decoded data record beside the point it maps to, or why none",
    )
    how = p.add_mutually_exclusive_group()
    how.add_argument("--live", action="store_true", help="only from the running gateway (error if none answers)")
    how.add_argument("--direct", action="store_true", help="poll the meter on its bus, even if a gateway runs")
    p.set_defaults(func=_main)


def _main(args) -> int:
    cfg, profiles = load_or_exit(args.config)
    logging.basicConfig(level=logging.WARNING)
    try:
        meter = cfg.meter(args.meter)
    except StopIteration:
        print(
            f"error: no meter {args.meter!r} in {args.config}; meters: {', '.join(m.id for m in cfg.meters)}",
            file=sys.stderr,
        )
        return 2
    if not args.direct and not args.records:  # the records come from reading the meter itself
        live = _live(cfg, args.config, meter.id)
        if isinstance(live, str):  # a gateway runs (it owns the line) but refused: say why, do not poll beside it
            print(f"error: {live}", file=sys.stderr)
            return 2
        if live is not None:
            return _print_live(cfg, meter, live, args.format)
        if args.live:
            up = cfg.upstream.prometheus
            where = f"http://{local_host(up.bind)}:{up.port}" if up.enabled else "nowhere (upstream.prometheus is off)"
            print(f"error: no running gateway answers at {where}", file=sys.stderr)
            return 2
    problem = serial_port_problem(cfg.bus(meter.bus), f"read meter {meter.id}")
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return asyncio.run(_read(cfg, profiles, meter, args.format, args.records))


async def _read(cfg, profiles, meter, fmt: str, show_records: bool = False) -> int:
    from ..app import Gateway

    # only this meter's bus, no upstream servers: a one-shot read
    one = cfg.model_copy(
        update={
            "meters": [meter],
            "buses": [cfg.bus(meter.bus)],
            "upstream": cfg.upstream.model_copy(
                update={
                    k: getattr(cfg.upstream, k).model_copy(update={"enabled": False})
                    for k in ("bacnet", "modbus_tcp", "prometheus")
                }
            ),
        }
    )
    gw = Gateway(one, profiles)
    await gw.start()
    try:
        if meter.bus not in gw.buses or meter.id not in gw.buses[meter.bus].schedules:
            print(f"error: meter {meter.id}: profile auto: the meter could not be identified (see the log)")
            return 1
        runner = gw.buses[meter.bus]
        sched = runner.schedules[meter.id]
        runner._task.cancel()  # stop the background rhythm: this command polls exactly once
        ok = await runner.poll(sched, tuple(pc for pc in sched.points_by_class if pc in PollClass))
        values = gw.table.meter_values(meter.id)
        last = getattr(runner.driver, "last_read", {}).get(meter.id) if show_records else None
    finally:
        await gw.stop()
    cat = load_catalogue()
    rows = []
    for p in cat:
        v = values[p.name]
        if p.name not in gw.meter_points(meter.id) and p.name != COMM_STATUS:
            continue
        shown = show_value(p, v.value)
        rows.append(
            {
                "point": p.name,
                "value": v.value,
                "display": shown,
                "unit": p.unit,
                "quality": str(v.quality),
                "reason": v.reason,
            }
        )
    records = _records(last) if last is not None else None
    if fmt == "json":
        doc = {"meter": meter.id, "answered": ok, "points": rows}
        if show_records:
            doc["records"] = records
            doc["header"] = _header(last) if last is not None else None
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(
            f"meter {meter.id} ({meter.profile}) on bus {meter.bus}, address {meter.address}: "
            f"{'answered' if ok else 'NO ANSWER'}"
        )
        print(f"{'point':30} {'value':>16} {'unit':8} quality")
        for r in rows:
            reason = f"  {r['reason']}" if r["reason"] else ""
            print(f"{r['point']:30} {r['display']:>16} {r['unit']:8} {r['quality']}{reason}")
        if show_records:
            _print_records(last, records)
    return 0 if ok else 1


def _header(last) -> dict | None:
    """The first telegram header of an M-Bus read, as plain fields."""
    from ..drivers.mbus_records import medium_name

    payloads = last[0]
    h = next((p.header for p in payloads if p.header is not None), None)
    if h is None:
        return None
    return {
        "id": h.ident,
        "manufacturer": h.manufacturer,
        "version": h.version,
        "medium": f"{medium_name(h.medium)} (0x{h.medium:02X})",
        "telegrams": len(payloads),
    }


def _records(last) -> list[dict]:
    """Every decoded record of an M-Bus read with its named fields and the point it maps to, or why none."""
    _payloads, decoded, mapping = last
    out = []
    for i, d in enumerate(decoded):
        v, r = d.vib, d.record
        out.append(
            {
                "index": i,
                "dib": r.dib.hex(" ").upper(),
                "vib": v.raw.hex(" ").upper(),
                "quantity": v.quantity,
                "unit": v.unit,
                "exponent": v.exponent,
                "direction": v.direction or "none",
                "phase": v.phase or "none",
                "tag": v.tag.hex().upper(),
                "function": d.function,
                "storage": r.storage,
                "tariff": r.tariff,
                "subunit": r.subunit,
                "value": None if d.value is None else format(d.value, "f") if isinstance(d.value, Decimal) else d.value,
                "point": mapping.used.get(i),
                "why_not": mapping.unmapped.get(i),
            }
        )
    return out


def _print_records(last, records: list[dict] | None) -> None:
    if last is None or records is None:
        print("\nrecords: none to show (not an M-Bus meter, or no telegram was read)")
        return
    h = _header(last)
    if h is not None:
        print(
            f"\nrecords of {h['telegrams']} telegram(s) from {h['manufacturer']} id {h['id']} "
            f"version {h['version']}, medium {h['medium']}"
        )
    print(f"{'#':>3} {'DIB VIB':24} {'value':>22} {'named fields':54} point or why none")
    for r in records:
        fields = f"{r['quantity']}"
        if r["unit"]:
            fields += f" [1e{r['exponent']} {r['unit']}]"
        for key in ("direction", "phase"):
            if r[key] != "none":
                fields += f" {r[key]}"
        if r["tag"]:
            fields += f" tag {r['tag']}"
        fields += f" {r['function'][:4]} s{r['storage']} t{r['tariff']} u{r['subunit']}"
        target = r["point"] if r["point"] else f"- {r['why_not']}"
        value = f"{r['value']} {r['unit']}".strip() if r["value"] is not None else ""
        print(f"{r['index']:>3} {(r['dib'] + ' ' + r['vib']):24} {value[:22]:>22} {fields:54} {target}")


def _live(cfg, config_path: str, meter_id: str) -> dict | str | None:
    """The running gateway's values of this meter if a gateway answers on the configured HTTP port, or its refusal."""
    from ..live import fetch_values, target

    up = cfg.upstream.prometheus
    if not up.enabled or up.port == 0:
        return None
    where = target(cfg, config_path)
    doc = fetch_values(where, meter_id)
    if isinstance(doc, str):
        return doc
    if doc is None or meter_id not in doc.get("meters", {}):
        return None
    doc["url"] = where.base
    return doc


def _print_live(cfg, meter, doc: dict, fmt: str) -> int:
    cat = load_catalogue()
    m = doc["meters"][meter.id]
    rows = []
    for p in cat:
        v = m["points"].get(p.name)
        if v is None:
            continue
        rows.append(
            {
                "point": p.name,
                "value": v["value"],
                "display": show_value(p, v["value"]),
                "unit": p.unit,
                "quality": v["quality"],
                "reason": v["reason"],
                "age_s": v["age_s"],
            }
        )
    online = bool(m["online"])
    if fmt == "json":
        print(json.dumps({"meter": meter.id, "source": doc["url"], "online": online, "points": rows}, indent=2))
    else:
        state = "online" if online else ("starting" if m["online"] is None else "COMMUNICATION FAILURE")
        print(
            f"meter {meter.id} ({meter.profile}) on bus {meter.bus}, address {meter.address}: {state} "
            f"(live from the running gateway {doc['gateway']!r} at {doc['url']})"
        )
        print(f"{'point':30} {'value':>16} {'unit':8} {'quality':12} {'age':>8}")
        for r in rows:
            age = "-" if r["age_s"] is None else f"{r['age_s']:.1f} s"
            reason = f"  {r['reason']}" if r["reason"] else ""
            print(f"{r['point']:30} {r['display']:>16} {r['unit']:8} {r['quality']:12} {age:>8}{reason}")
    return 0 if online else 1
