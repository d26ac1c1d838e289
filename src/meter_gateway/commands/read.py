"""`meter-gateway read`: every point of one meter with unit and quality.

While the gateway runs (its HTTP server answers), the values come from it, with their age: the running gateway
owns the line. Otherwise the meter is polled once directly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

from ..core.catalogue import PollClass, load_catalogue
from ..core.table import COMM_STATUS
from ._common import add_config_arg, load_or_exit, local_host, serial_port_problem, show_value


def add_parser(sub) -> None:
    """Register the subcommand."""
    p = sub.add_parser("read", help="poll one meter once and print every point")
    add_config_arg(p)
    p.add_argument("meter", help="meter id from the configuration")
    p.add_argument("--format", choices=["table", "json"], default="table")
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
    if not args.direct:
        live = _live(cfg, meter.id)
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
    return asyncio.run(_read(cfg, profiles, meter, args.format))


async def _read(cfg, profiles, meter, fmt: str) -> int:
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
        runner = gw.buses[meter.bus]
        sched = runner.schedules[meter.id]
        runner._task.cancel()  # stop the background rhythm: this command polls exactly once
        ok = await runner.poll(sched, tuple(pc for pc in sched.points_by_class if pc in PollClass))
        values = gw.table.meter_values(meter.id)
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
    if fmt == "json":
        print(json.dumps({"meter": meter.id, "answered": ok, "points": rows}, indent=2, default=str))
    else:
        print(
            f"meter {meter.id} ({meter.profile}) on bus {meter.bus}, address {meter.address}: "
            f"{'answered' if ok else 'NO ANSWER'}"
        )
        print(f"{'point':30} {'value':>16} {'unit':8} quality")
        for r in rows:
            reason = f"  {r['reason']}" if r["reason"] else ""
            print(f"{r['point']:30} {r['display']:>16} {r['unit']:8} {r['quality']}{reason}")
    return 0 if ok else 1


def _live(cfg, meter_id: str) -> dict | None:
    """The running gateway's values of this meter, if a gateway answers on the configured HTTP port."""
    from ..live import fetch_values

    up = cfg.upstream.prometheus
    if not up.enabled or up.port == 0:
        return None
    doc = fetch_values(local_host(up.bind), up.port, meter_id)
    if doc is None or meter_id not in doc.get("meters", {}):
        return None
    doc["url"] = f"http://{local_host(up.bind)}:{up.port}"
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
