"""`meter-gateway haystack`: write the Project Haystack model (JSON or Zinc) of the site, meters and points."""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import add_config_arg, load_or_exit


def add_parser(sub) -> None:
    """Register the subcommand."""
    p = sub.add_parser("haystack", help="write the Project Haystack grid (JSON or Zinc) of the site, meters, points")
    add_config_arg(p)
    p.add_argument("--format", choices=["json", "zinc"], default="json", help="Haystack 4 JSON (default) or Zinc")
    p.add_argument("-o", "--output", default="-", help="output file (default: standard output)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from ..models.common import gateway_meter_points
    from ..models.haystack import entities, to_json, to_zinc

    cfg, profiles = load_or_exit(args.config)
    catalogue, points = gateway_meter_points(cfg, profiles)
    recs = entities(cfg, catalogue, points)
    text = to_json(recs) if args.format == "json" else to_zinc(recs)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return 0
