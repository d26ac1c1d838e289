"""`meter-gateway check`: validate the configuration and its profiles without starting anything."""

from __future__ import annotations

import json

from ..config import json_schema
from ._common import add_config_arg, load_or_exit


def add_parser(sub) -> None:
    """Register the subcommand."""
    p = sub.add_parser("check", help="validate gateway.yaml and the profiles it uses; exit 2 on error")
    add_config_arg(p)
    p.add_argument("--schema", action="store_true", help="print the JSON Schema of gateway.yaml and exit")
    p.set_defaults(func=_main)


def _main(args) -> int:
    if args.schema:
        print(json.dumps(json_schema(), indent=2))
        return 0
    cfg, _profiles = load_or_exit(args.config)
    used = sorted({m.profile for m in cfg.meters})
    print(f"OK: {args.config}: {len(cfg.buses)} buses, {len(cfg.meters)} meters, profiles: {', '.join(used)}")
    return 0
