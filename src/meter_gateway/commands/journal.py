"""`meter-gateway journal verify`: check the billing journal, read-only (keyed MAC chain, checkpoints, events)."""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import add_config_arg, load_or_exit


def add_parser(sub) -> None:
    """Register the subcommand."""
    p = sub.add_parser("journal", help="billing journal tools (verify)")
    jsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    v = jsub.add_parser(
        "verify",
        help="check the journal without modifying it; exit 1 on tampering, loss or corruption, "
        "3 when intact but an index went down or the journal was restarted",
    )
    add_config_arg(v)
    v.set_defaults(func=_verify)


def _path(cfg, config_file: str) -> Path:
    from ..config import state_path

    return state_path(cfg, config_file, cfg.journal.path)


def _audit(cfg, config_file: str) -> Path:
    p = Path(cfg.writes.audit_log)
    return p if p.is_absolute() else Path(config_file).parent / p


def _verify(args) -> int:
    from ..journal.verify import verify

    cfg, _profiles = load_or_exit(args.config)
    path = _path(cfg, args.config)
    try:
        rep = verify(path, cfg.gateway.timezone, _audit(cfg, args.config))
    except Exception as exc:  # a last resort: a finding, never a traceback
        print(f"CORRUPT: {path}: verification stopped: {type(exc).__name__}: {exc}")
        return 1
    for f in rep.findings:
        print(f)
    summary = (
        f"{path}: {rep.rows} rows (last seq {rep.last_seq}) for {len(rep.meters)} meters, "
        f"{rep.missing} missing boundary readings, {rep.checkpoints} checkpoints"
    )
    code = rep.exit_code
    if code == 0:
        print(f"OK: {summary}, chains intact")
    elif code == 3:
        print(f"ATTENTION: {summary}, chains intact; see the notices above")
    else:
        bad = sum(1 for f in rep.findings if f.level in ("TAMPERED", "LOST", "CORRUPT", "UNVERIFIED"))
        print(f"FAILED: {summary}: {bad} problem(s)", file=sys.stdout)
    return code
