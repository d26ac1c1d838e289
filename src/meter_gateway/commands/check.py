"""`meter-gateway check`: validate the configuration and its profiles without starting anything."""

from __future__ import annotations

import json
import os

from ..config import json_schema, state_dir
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
    cfg, _profiles = load_or_exit(args.config, preflight=True)
    used = sorted({m.profile for m in cfg.meters})
    print(f"OK: {args.config}: {len(cfg.buses)} buses, {len(cfg.meters)} meters, profiles: {', '.join(used)}")
    print(f"state directory: {os.path.abspath(state_dir(cfg, args.config))}")
    if not cfg.meters:
        print(f"note: no meters yet: `meter-gateway scan -c {args.config} BUS` lists those answering on a bus")
    for b in cfg.buses:
        port = getattr(b, "port", "")
        if not b.simulated and isinstance(port, str) and port and not os.path.exists(port):
            print(f"note: bus {b.id!r}: serial port {port} does not exist now; the gateway keeps trying to open it")
    return 0
