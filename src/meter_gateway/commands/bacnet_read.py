"""`meter-gateway bacnet-read`: a small BACnet/IP client to check a device (Who-Is, ReadProperty)."""

from __future__ import annotations

import asyncio
import sys


def add_parser(sub) -> None:
    """Register the subcommand."""
    p = sub.add_parser("bacnet-read", help="read BACnet properties from a device (a quick client for checks)")
    p.add_argument("device", help="device address, e.g. 127.0.0.1:47808")
    p.add_argument("object", nargs="?", default="", help="object, e.g. analog-input,1011 (default: Who-Is only)")
    p.add_argument("properties", nargs="*", default=["present-value"], help="properties (default present-value)")
    p.add_argument("--local", default="127.0.0.1/8:47809", help="this client's address/mask:port")
    p.set_defaults(func=_main)


def _main(args) -> int:
    return asyncio.run(_read(args))


async def _read(args) -> int:
    from bacpypes3.app import Application
    from bacpypes3.local.device import DeviceObject
    from bacpypes3.local.networkport import NetworkPortObject
    from bacpypes3.pdu import Address

    dev = DeviceObject(objectIdentifier=("device", 4194300), objectName="meter-gateway-client", vendorIdentifier=999)
    port = NetworkPortObject(args.local, objectIdentifier=("network-port", 1), objectName="NetworkPort-1")
    app = Application.from_object_list([dev, port])
    try:
        addr = Address(args.device)
        i_ams = await app.who_is(0, 4194303, addr, timeout=3)
        if not i_ams:
            print(f"no I-Am from {args.device}", file=sys.stderr)
            return 1
        for i in i_ams:
            print(f"device {i.iAmDeviceIdentifier[1]} at {i.pduSource}")
        if not args.object:
            return 0
        for prop in args.properties:
            try:
                value = await app.read_property(addr, args.object, prop)
            except BaseException as exc:  # bacpypes3 raises Error PDUs as BaseException
                if isinstance(exc, (KeyboardInterrupt, SystemExit, asyncio.CancelledError)):
                    raise
                print(f"{args.object} {prop}: {exc}")
                continue
            print(f"{args.object} {prop}: {_show(value)}")
        return 0
    finally:
        app.close()


def _show(value) -> str:
    """Readable rendering: enumerations by name, choices (e.g. scale) as name=value."""
    attr = getattr(value, "attr", None)
    if isinstance(attr, str):
        return attr
    for choice in ("integerScale", "floatScale"):
        v = getattr(value, choice, None)
        if v is not None:
            return f"{choice}={v}"
    return str(value)
