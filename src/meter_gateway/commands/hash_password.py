"""`meter-gateway hash-password`: print the argon2 hash of a password for upstream.http.users[].password_hash."""

from __future__ import annotations

import getpass
import sys


def add_parser(sub) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "hash-password",
        help="print an argon2 hash of a password to paste into upstream.http.users[].password_hash",
        description="Asks for the password twice (or reads one line from standard input with --stdin) and prints "
        "its argon2id hash. The password itself is never stored.",
    )
    p.add_argument("--stdin", action="store_true", help="read the password from the first line of standard input")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from ..web.auth import hash_password

    if args.stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("error: the two passwords differ", file=sys.stderr)
            return 2
    if len(password) < 8:
        print("error: use at least 8 characters", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0
