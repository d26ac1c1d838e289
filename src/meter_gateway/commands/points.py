"""`meter-gateway points`: print the point catalogue."""

from __future__ import annotations

import csv
import json
import sys

from ..core.catalogue import load_catalogue

COLUMNS = (
    "index",
    "name",
    "kind",
    "bacnet_type",
    "unit",
    "bacnet_unit",
    "poll_class",
    "range",
    "modbus",
    "description",
)


def add_parser(sub) -> None:
    """Register the subcommand."""
    p = sub.add_parser("points", help="print the catalogue of the 53 canonical points")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=_main)


def _row(p) -> dict:
    return {
        "index": p.index,
        "name": p.name,
        "kind": str(p.kind),
        "bacnet_type": p.bacnet_type,
        "unit": p.unit,
        "bacnet_unit": p.bacnet_unit or "",
        "poll_class": str(p.poll_class),
        "range": "" if p.range is None else f"{p.range[0]:g}..{p.range[1]:g}",
        "modbus": p.modbus.reference,
        "description": p.description,
    }


def _main(args) -> int:
    cat = load_catalogue()
    rows = [_row(p) for p in cat]
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=2, ensure_ascii=False)
        print()
    elif args.format == "csv":
        w = csv.DictWriter(sys.stdout, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    else:
        for line in table(rows):
            print(line)
    return 0


#: the table view: short headings and BACnet types, the description cut to fit WIDTH (csv/json keep everything)
TABLE = (
    ("index", "#"),
    ("name", "point"),
    ("kind", "kind"),
    ("bacnet_type", "bacnet"),
    ("unit", "unit"),
    ("poll_class", "poll"),
    ("range", "range"),
    ("modbus", "modbus"),
    ("description", "description"),
)
SHORT_TYPES = {
    "accumulator": "ACC",
    "analog-input": "AI",
    "analog-value": "AV",
    "binary-input": "BI",
    "binary-output": "BO",
    "multi-state-value": "MSV",
}
WIDTH = 120


def table(rows: list[dict]) -> list[str]:
    """Lines of the table view, none wider than WIDTH."""
    cells = [
        {k: SHORT_TYPES.get(str(r[k]), str(r[k])) if k == "bacnet_type" else str(r[k]) for k, _ in TABLE} for r in rows
    ]
    widths = {k: max(len(h), *(len(c[k]) for c in cells)) for k, h in TABLE}
    fixed = sum(widths[k] + 1 for k, _ in TABLE[:-1])
    widths["description"] = max(len("description"), WIDTH - fixed)
    out = [" ".join(h.ljust(widths[k]) for k, h in TABLE).rstrip()]
    for c in cells:
        d = c["description"]
        if len(d) > widths["description"]:
            c["description"] = d[: widths["description"] - 1] + "\u2026"
        out.append(" ".join(c[k].ljust(widths[k]) for k, _ in TABLE).rstrip())
    return out
