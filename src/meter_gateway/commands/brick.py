"""`meter-gateway brick`: write the Brick model (Turtle) of the configured site, meters and points."""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import add_config_arg, load_or_exit


def add_parser(sub) -> None:
    """Register the subcommand."""
    p = sub.add_parser("brick", help="write the Brick model (RDF Turtle) of the site, meters and served points")
    add_config_arg(p)
    p.add_argument("-o", "--output", default="-", help="output file (default: standard output)")
    p.add_argument("--base", default="", help="namespace of the model's nodes (default: urn:meter-gateway:<name>#)")
    p.add_argument(
        "--validate", action="store_true", help="check the model against the Brick shapes (needs the models extra)"
    )
    p.set_defaults(func=_main)


def _main(args) -> int:
    cfg, profiles = load_or_exit(args.config)
    try:
        from ..models.brick import build_graph, validate
        from ..models.common import gateway_meter_points
    except ImportError as exc:
        print(f"error: {exc.name} is not installed: pip install 'meter-gateway[models]'", file=sys.stderr)
        return 2
    catalogue, points = gateway_meter_points(cfg, profiles)
    graph = build_graph(cfg, catalogue, points, args.base)
    text = graph.serialize(format="turtle")
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    if args.validate:
        try:
            problems = validate(graph)
        except ImportError as exc:
            print(f"error: {exc.name} is not installed: pip install 'meter-gateway[models]'", file=sys.stderr)
            return 2
        for line in problems:
            print(f"brick: {line}", file=sys.stderr)
        print(f"brick: {len(problems)} SHACL results against the Brick shapes", file=sys.stderr)
        return 1 if problems else 0
    return 0
