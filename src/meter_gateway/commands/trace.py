"""`meter-gateway trace`: the frames of one bus of the running gateway (hex, timing, meaning), for commissioning."""

from __future__ import annotations

import json
import sys
import time

from ._common import add_config_arg, load_or_exit


def add_parser(sub) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "trace",
        help="show the frames of a bus of the running gateway (hex, timing, decoded meaning) until Ctrl-C",
        description="Asks the running gateway (its HTTP server, upstream.prometheus) for the frames of one bus; "
        "the gateway keeps polling as usual. Exit status: 0 done, 2 no running gateway or unknown bus.",
    )
    add_config_arg(p)
    p.add_argument("bus", help="bus id from the configuration")
    p.add_argument("--count", type=int, default=0, help="stop after this many frames (0: until Ctrl-C)")
    p.add_argument("--seconds", type=float, default=0, help="stop after this many seconds (0: until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="print one JSON object per frame")
    p.add_argument("--all", action="store_true", help="start with the frames the gateway still holds")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from ..live import fetch_trace, target

    cfg, _profiles = load_or_exit(args.config)
    up = cfg.upstream.prometheus
    if not up.enabled or up.port == 0:
        print(
            "error: trace asks the running gateway over HTTP: enable upstream.prometheus with a fixed port",
            file=sys.stderr,
        )
        return 2
    where = target(cfg, args.config)
    first = fetch_trace(where, args.bus, 0)
    if isinstance(first, str):
        print(f"error: {first}", file=sys.stderr)
        return 2
    frames = first["frames"]
    after = frames[-1]["seq"] if frames and not args.all else 0
    pending = frames if args.all else []
    shown, last_t = 0, None
    end = time.monotonic() + args.seconds if args.seconds else None
    print(
        f"# bus {args.bus} ({first['kind']}) of the running gateway at {where.base}; Ctrl-C to stop",
        flush=True,
    )
    while True:
        for f in pending:
            if args.json:
                print(json.dumps(f), flush=True)
            else:
                delta = "" if last_t is None else f"+{(f['time'] - last_t) * 1000:7.1f} ms"
                stamp = time.strftime("%H:%M:%S", time.localtime(f["time"])) + f".{int(f['time'] % 1 * 1000):03d}"
                print(f"{stamp} {delta:>12} {f['dir'].upper()} {f['hex']:<40} {f['meaning']}", flush=True)
            last_t = f["time"]
            after = f["seq"]
            shown += 1
            if args.count and shown >= args.count:
                return 0
        if end is not None and time.monotonic() >= end:
            return 0
        time.sleep(0.3)
        got = fetch_trace(where, args.bus, after)
        if isinstance(got, str):
            print(f"error: {got}", file=sys.stderr)
            return 2
        pending = got["frames"]
