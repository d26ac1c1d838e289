"""`meter-gateway registers`: print the canonical upstream Modbus map (one block per unit id)."""

from __future__ import annotations

import csv
import sys

from ..core.catalogue import load_catalogue
from ..core.codec import WordOrder
from ..core.upstream_map import UpstreamMap

COLUMNS = ("table", "modicon", "address", "registers", "point", "type", "access", "description")


def add_parser(sub) -> None:
    """Register the subcommand."""
    p = sub.add_parser("registers", help="print the upstream Modbus TCP register map (same for every meter make)")
    p.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    p.set_defaults(func=_main)


def _main(args) -> int:
    rows = list(UpstreamMap(load_catalogue(), WordOrder.BIG).rows())
    if args.format == "csv":
        w = csv.DictWriter(sys.stdout, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
        return 0
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for r in rows:
        print("| " + " | ".join(r[c] for c in COLUMNS) + " |")
    return 0
