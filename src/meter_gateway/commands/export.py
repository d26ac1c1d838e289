"""`meter-gateway export`: billing export per meter from the journal (CSV, JSON or XML)."""

from __future__ import annotations

import json
import sys

from ._common import add_config_arg, load_or_exit
from .journal import _path


def add_parser(sub) -> None:
    """Register the subcommand."""
    p = sub.add_parser("export", help="opening/closing index, consumption, tariff split and peak demand per meter")
    add_config_arg(p)
    p.add_argument("--from", dest="start", required=True, help="start, e.g. 2026-11-01 (site time zone)")
    p.add_argument("--to", dest="end", required=True, help="end, e.g. 2026-12-01")
    p.add_argument("--tenant", default=None)
    p.add_argument("--format", choices=["csv", "json", "xml"], default="csv", help="xml: see data/billing-export.xsd")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from ..journal.dates import parse_local
    from ..journal.export import export, to_csv
    from ..journal.store import JournalStore

    cfg, _profiles = load_or_exit(args.config)
    try:
        start, end = parse_local(args.start, cfg.gateway.timezone), parse_local(args.end, cfg.gateway.timezone)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = _path(cfg, args.config)
    if not path.exists():
        print(f"error: no journal at {path}", file=sys.stderr)
        return 2
    store = JournalStore(path)
    if args.format == "xml":
        from ..journal.xml import to_xml

        try:
            sys.stdout.buffer.write(to_xml(store, cfg, start, end, args.tenant))
        finally:
            store.close()
        return 0
    try:
        rows = export(store, cfg, start, end, args.tenant)
    finally:
        store.close()
    print(
        json.dumps(rows, indent=2) if args.format == "json" else to_csv(rows), end="" if args.format == "csv" else "\n"
    )
    return 0
