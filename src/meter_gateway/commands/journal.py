"""`meter-gateway journal verify`: check the hash chains of the billing journal."""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import add_config_arg, load_or_exit


def add_parser(sub) -> None:
    """Register the subcommand."""
    p = sub.add_parser("journal", help="billing journal tools (verify)")
    jsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    v = jsub.add_parser("verify", help="check every meter's hash chain; exit 1 on tampering or loss")
    add_config_arg(v)
    v.set_defaults(func=_verify)


def _path(cfg, config_file: str) -> Path:
    from ..config import state_path

    return state_path(cfg, config_file, cfg.journal.path)


def _verify(args) -> int:
    from ..journal.store import JournalStore

    cfg, _profiles = load_or_exit(args.config)
    path = _path(cfg, args.config)
    if not path.exists():
        print(f"error: no journal at {path}", file=sys.stderr)
        return 2
    store = JournalStore(path)
    try:
        rows = store.rows()
        problems = store.verify()
    finally:
        store.close()
    missing = sum(1 for r in rows if r["status"] != "ok")
    meters = len({r["meter"] for r in rows})
    if problems:
        for p in problems:
            print(f"TAMPERED: {p}")
        print(f"{path}: {len(problems)} problem(s) in {len(rows)} rows")
        return 1
    print(f"OK: {path}: {len(rows)} rows for {meters} meters, chains intact, {missing} missing boundary readings")
    return 0
