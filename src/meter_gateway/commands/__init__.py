"""CLI subcommands: each module here defines `add_parser(subparsers)` and is picked up by cli.py."""
