"""CLI subcommands: each module here (not starting with _) defines `add_parser(subparsers)`; cli.py picks it up."""
