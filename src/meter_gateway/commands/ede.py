"""`meter-gateway ede`: write the BACnet EDE files (data points, state texts, units) of the configured device."""

from __future__ import annotations

import csv
import time
from pathlib import Path

from ..bacnet_model import gateway_objects, meter_devices, object_specs
from ..config_events import limit_for
from ..core.catalogue import load_catalogue
from ._common import add_config_arg, load_or_exit

# EDE object type numbers (BACnet object type enumeration)
OBJECT_TYPE_NUMBER = {
    "analog-input": 0,
    "analog-value": 2,
    "binary-input": 3,
    "binary-output": 4,
    "multi-state-value": 19,
    "accumulator": 23,
    "datetime-value": 44,
}
#: EDE object type number of a device (per-meter mode lists the router and every meter device)
DEVICE_TYPE = 8
# BACnet engineering unit numbers of the units the catalogue uses
UNIT_NUMBER = {
    "kilowattHours": 19,
    "kilovoltAmpereHoursReactive": 243,
    "kilowatts": 48,
    "kilovoltAmperesReactive": 12,
    "kilovoltAmperes": 9,
    "volts": 5,
    "amperes": 3,
    "noUnits": 95,
    "hertz": 27,
    "seconds": 73,
    "percent": 98,
    "minutes": 72,
    "wattHours": 18,
}


def add_parser(sub) -> None:
    """Register the subcommand."""
    p = sub.add_parser("ede", help="write the BACnet EDE files (CSV) for the configured device")
    add_config_arg(p)
    p.add_argument("-o", "--output", default=".", help="output directory (default: current directory)")
    p.add_argument("--project", default="", help="project name written in the EDE header")
    p.set_defaults(func=_main)


def ede_rows(cfg, profiles) -> tuple[list[list[str]], list[list[str]]]:
    """(data point rows, state text rows) for the configured device."""
    from ..app import Gateway

    gw = Gateway(cfg, profiles)
    specs = object_specs(cfg, gw.catalogue, {m: gw.meter_points(m) for m in gw.table.meter_ids})
    dev = cfg.upstream.bacnet.device_instance
    states: dict[tuple[str, ...], int] = {}
    rows = []
    # per-meter devices: the router (the gateway's device) and one device per meter, each meter's objects in it
    devices = {d.meter_id: d for d in meter_devices(cfg)}
    if devices:
        name = cfg.upstream.bacnet.device_name or cfg.gateway.name
        rows.append(_device_row(name, dev, "BACnet router to the meters' virtual network", "gateway"))
        for d in devices.values():
            rows.append(_device_row(d.name, d.instance, d.description, f"{d.meter_id}/device"))
    for s in specs:
        p = s.point
        in_device = devices[s.meter_id].instance if s.meter_id in devices else dev
        key = f"{s.meter_id}.{s.name}" if s.meter_id in devices else s.name
        ref = ""
        if p.states and s.object_type in ("binary-input", "binary-output", "multi-state-value"):
            ref = str(states.setdefault(tuple(p.states), len(states) + 1))
        has_units = s.object_type in ("accumulator", "analog-input", "analog-value")
        lo, hi = (f"{p.range[0]:g}", f"{p.range[1]:g}") if p.range and has_units else ("", "")
        lim = limit_for(cfg, s.meter_id, p.name) if s.object_type in ("analog-input", "analog-value") else None
        hl, ll = ("" if x is None else f"{x:g}" for x in ((lim.high, lim.low) if lim else (None, None)))
        rows.append(
            [
                key,
                str(in_device),
                s.name,
                str(OBJECT_TYPE_NUMBER[s.object_type]),
                str(s.instance),
                s.description,
                "",
                lo,
                hi,
                "Y" if s.writable else "N",
                "Y",
                hl,
                ll,
                ref,
                str(UNIT_NUMBER.get(p.bacnet_unit or "", "")) if p.bacnet_unit and has_units else "",
                f"{s.meter_id}/{p.name}",
            ]
        )
    for g in gateway_objects(cfg):
        ref = str(states.setdefault((g.inactive_text, g.active_text), len(states) + 1))
        row = [g.name, str(dev), g.name, str(OBJECT_TYPE_NUMBER[g.object_type]), str(g.instance), g.description]
        rows.append([*row, "", "", "", "N", "Y", "", "", ref, "", f"gateway/{g.key}"])
    from ..servers.bacnet_trend import trend_specs  # Trend Logs (upstream.bacnet.trend_logs): type 20, read-only

    for t in trend_specs(cfg.upstream.bacnet.trend_logs, specs):
        rows.append([t.name, str(dev), t.name, "20", str(t.instance), t.description, *[""] * 3, "N", "N", *[""] * 4])
        rows[-1].append(f"{t.key}/trend")
    state_rows = [[str(ref), *texts] for texts, ref in states.items()]
    return rows, state_rows


def _device_row(name: str, instance: int, description: str, address: str) -> list[str]:
    """The EDE row of a device object (per-meter mode lists every device)."""
    row = [f"device.{instance}", str(instance), name, str(DEVICE_TYPE), str(instance), description]
    return [*row, "", "", "", "N", "N", "", "", "", "", address]


def ede_header(name: str, stamp: str | None = None) -> list[list[str]]:
    """The header lines of an EDE file (layout 2.3)."""
    stamp = stamp or time.strftime("%d.%m.%Y")
    return [
        ["#Engineering-Data-Exchange - B.I.G.-EU"],
        ["PROJECT_NAME", name],
        ["VERSION_OF_REFERENCEFILE", "1"],
        ["TIMESTAMP_OF_LAST_CHANGE", stamp],
        ["AUTHOR_OF_LAST_CHANGE", "meter-gateway"],
        ["VERSION_OF_LAYOUT", "2.3"],
        [
            "#mandatory",
            "mandatory",
            "mandatory",
            "mandatory",
            "mandatory",
            "optional",
            "optional",
            "optional",
            "optional",
            "optional",
            "optional",
            "optional",
            "optional",
            "optional",
            "optional",
            "optional",
        ],
        [
            "# keyname",
            "device obj.-instance",
            "object-name",
            "object-type",
            "object-instance",
            "description",
            "present-value-default",
            "min-present-value",
            "max-present-value",
            "settable",
            "supports COV",
            "hi-limit",
            "low-limit",
            "state-text-reference",
            "unit-code",
            "vendor-specific-address",
        ],
    ]


def _main(args) -> int:
    cfg, profiles = load_or_exit(args.config)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    name = args.project or cfg.gateway.name
    rows, state_rows = ede_rows(cfg, profiles)
    stamp = time.strftime("%d.%m.%Y")
    header = ede_header(name, stamp)
    base = out / f"{name}_EDE.csv"
    with open(base, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, delimiter=";").writerows(header + rows)
    with open(out / f"{name}_StateTexts.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=";")
        w.writerows([["#State-Text-File"], ["# Reference number", "Text 1", "Text 2", "Text 3"]])
        w.writerows(state_rows)
    cat = load_catalogue()
    units = sorted({p.bacnet_unit for p in cat if p.bacnet_unit})
    with open(out / f"{name}_Units.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=";")
        w.writerows([["#Unit-Text-File"], ["# Unit code", "Unit text"]])
        w.writerows([[str(UNIT_NUMBER[u]), u] for u in units])
    print(f"wrote {len(rows)} objects to {base} (+ StateTexts and Units)")
    return 0
