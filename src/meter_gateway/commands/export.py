"""`meter-gateway export`: billing export per meter from the journal (CSV, JSON or XML), streamed, read-only."""

from __future__ import annotations

import sqlite3
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
    from ..journal.export import ExportRequestError, check_request, csv_chunks, iter_export, json_chunks
    from ..journal.verify import open_readonly

    cfg, _profiles = load_or_exit(args.config)
    try:
        start, end = parse_local(args.start, cfg.gateway.timezone), parse_local(args.end, cfg.gateway.timezone)
        check_request(cfg, start, end, args.tenant)
    except ValueError as exc:  # ExportRequestError included
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = _path(cfg, args.config)
    if not path.exists():
        print(f"error: no journal at {path}", file=sys.stderr)
        return 2
    chunks = csv_chunks if args.format == "csv" else json_chunks
    try:
        with open_readonly(path) as db:
            if args.format == "xml":
                from ..journal.xml import to_xml

                sys.stdout.buffer.write(to_xml(db, cfg, start, end, args.tenant, journal_path=path))
                return 0
            for chunk in chunks(iter_export(db, cfg, start, end, args.tenant, path)):
                sys.stdout.write(chunk)
    except (sqlite3.DatabaseError, OSError) as exc:
        print(f"error: the journal {path} cannot be read ({exc}); run `meter-gateway journal verify`", file=sys.stderr)
        return 1
    except ExportRequestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
