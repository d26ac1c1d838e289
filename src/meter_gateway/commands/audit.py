"""`meter-gateway audit`: show the most recent write attempts from the audit log."""

from __future__ import annotations

import json

from ..config import state_path
from ..writes import read_audit
from ._common import add_config_arg, load_or_exit


def add_parser(sub) -> None:
    """Register the subcommand."""
    p = sub.add_parser("audit", help="show recent write attempts (accepted or not) from the audit log")
    add_config_arg(p)
    p.add_argument("-n", type=int, default=50, help="how many records (default 50)")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.set_defaults(func=_main)


def _main(args) -> int:
    cfg, _profiles = load_or_exit(args.config)
    path = state_path(cfg, args.config, cfg.writes.audit_log)
    records = read_audit(path, 10**9)
    if not args.json:  # journal checkpoints copied into the audit log are not write attempts
        records = [r for r in records if "event" not in r]
    records = records[-args.n :]
    if not records:
        print(f"no write attempts recorded in {path}")
        return 0
    for r in records:
        if args.json:
            print(json.dumps(r, ensure_ascii=False))
        else:
            reply = f" meter: {r.get('meter_reply')}" if r.get("meter_reply") else ""
            times = f" x{r['count']} since {r.get('first_time', '?')}" if r.get("count") else ""
            who = f"{r.get('source')} ({r['user']})" if r.get("user") else r.get("source")
            print(
                f"{r.get('time')} {r.get('protocol'):6} {who:15} {r.get('meter')}.{r.get('point')}"
                f"={r.get('value')} {r.get('decision').upper()}{times}: {r.get('reason')}{reply}"
            )
    return 0
