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
        widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS}
        print("  ".join(c.ljust(widths[c]) for c in COLUMNS))
        for r in rows:
            print("  ".join(str(r[c]).ljust(widths[c]) for c in COLUMNS))
    return 0
