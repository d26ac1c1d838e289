"""`meter-gateway bacnet-read`: a small BACnet/IP client to check a device (Who-Is, ReadProperty, a PICS table).

Exit status: 0 every property read; 1 no device answered; 2 a malformed object or an unknown property name
(nothing is sent); 3 the device answered with an error (unknown object, unknown property...) for at least one.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import sys

EXIT_OK, EXIT_NO_DEVICE, EXIT_USAGE, EXIT_DEVICE_ERROR = 0, 1, 2, 3


def add_parser(sub) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "bacnet-read",
        help="read BACnet properties from a device (a quick client for checks)",
        epilog="exit status: 0 all read, 1 no device answered, 2 malformed object or unknown property name, "
        "3 the device answered an error (unknown object or property)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("device", help="device address, e.g. 127.0.0.1:47808")
    p.add_argument("object", nargs="?", default="", help="object, e.g. analog-input,1011 (default: Who-Is only)")
    p.add_argument("properties", nargs="*", default=["present-value"], help="properties (default present-value)")
    p.add_argument("--local", default="127.0.0.1/8:47809", help="this client's address/mask:port")
    p.add_argument(
        "--dnet",
        type=int,
        help="network number of a device behind the router at DEVICE (per-meter devices: virtual_network); without "
        "--dadr: list every device on that network",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=3.0,
        help="seconds to wait for I-Am answers (default 3; listing many devices behind a router that paces its "
        "answers takes devices / answers_per_second)",
    )
    p.add_argument(
        "--dadr", help="MAC address of the device on network --dnet, hex as bacnet-stack writes it (00:03:E8)"
    )
    p.add_argument(
        "--pics", action="store_true", help="print the device's PICS as Markdown tables, read from the running device"
    )
    p.set_defaults(func=_main)


def _main(args) -> int:
    problem = check_names(args.object, args.properties) or check_route(args.dnet, args.dadr, args.object, args.pics)
    if not problem and not 0 < args.wait <= 3600:
        problem = f"--wait {args.wait}: seconds, more than 0 and at most 3600"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_read(args))


def check_names(obj: str, props: list[str]) -> str:
    """Refuse a malformed object identifier or a property name BACnet does not have ('' when all are valid)."""
    from bacpypes3.basetypes import ObjectType, PropertyIdentifier

    if obj:
        otype, sep, inst = obj.partition(",")
        if not sep or not inst.strip().isdigit():
            return f"object {obj!r} must be type,instance such as analog-input,1005"
        if otype not in ObjectType._enum_map:
            near = difflib.get_close_matches(otype, [k for k in ObjectType._enum_map if "-" in k], n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            return f"unknown object type {otype!r}{hint}"
    for prop in props:
        if prop not in PropertyIdentifier._enum_map and prop != "all":
            near = difflib.get_close_matches(prop, [k for k in PropertyIdentifier._enum_map if "-" in k], n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            return f"unknown property {prop!r}{hint}"
    return ""


def check_route(dnet: int | None, dadr: str | None, obj: str, pics: bool) -> str:
    """Refuse an incomplete or malformed route to a device behind a router ('' when it is usable)."""
    if dadr is not None and dnet is None:
        return "--dadr needs --dnet (the network the device is on)"
    if dnet is None:
        return ""
    if not 1 <= dnet <= 65534:
        return f"--dnet {dnet}: a network number is 1-65534"
    if dadr is None:
        return "" if not (obj or pics) else "--dnet without --dadr lists the devices only: give --dadr to read one"
    if parse_mac(dadr) is None:
        return f"--dadr {dadr!r}: write the MAC address in hex, e.g. 00:03:E8"
    return ""


def parse_mac(text: str) -> bytes | None:
    """A MAC address written 00:03:E8, 0003E8 or 0x0003e8 (1 to 7 octets), None when it is not one."""
    digits = text.strip().removeprefix("0x").removeprefix("0X")
    if ":" in digits:
        parts = digits.split(":")
        if not all(1 <= len(p) <= 2 for p in parts):
            return None
        digits = "".join(p.zfill(2) for p in parts)
    try:
        mac = bytes.fromhex(digits)
    except ValueError:
        return None
    return mac if 1 <= len(mac) <= 7 else None


async def _target(app, args):
    """The address requests go to: the device itself, or a station (or every station) behind the router."""
    from bacpypes3.pdu import Address, IPv4Address, RemoteBroadcast, RemoteStation

    if args.dnet is None:
        return Address(args.device)
    # the route to --dnet is the router at DEVICE: no Who-Is-Router-To-Network (a broadcast) needed
    await app.nsap.update_router_references(None, IPv4Address(args.device), [args.dnet])
    if args.dadr is None:
        return RemoteBroadcast(args.dnet)
    return RemoteStation(args.dnet, parse_mac(args.dadr))


async def _read(args) -> int:
    from bacpypes3.app import Application
    from bacpypes3.local.device import DeviceObject
    from bacpypes3.local.networkport import NetworkPortObject

    dev = DeviceObject(objectIdentifier=("device", 4194300), objectName="meter-gateway-client", vendorIdentifier=999)
    port = NetworkPortObject(args.local, objectIdentifier=("network-port", 1), objectName="NetworkPort-1")
    app = Application.from_object_list([dev, port])
    try:
        addr = await _target(app, args)
        i_ams = await app.who_is(0, 4194303, addr, timeout=args.wait)
        if not i_ams:
            print(f"error: no I-Am from {args.device}{_route_text(args)}", file=sys.stderr)
            return EXIT_NO_DEVICE
        if args.pics:
            print(await pics(app, addr, i_ams[0].iAmDeviceIdentifier))
            return 0
        for i in i_ams:
            print(f"device {i.iAmDeviceIdentifier[1]} at {i.pduSource}")
        if not args.object:
            return EXIT_OK
        status = EXIT_OK
        for prop in args.properties:
            try:
                value = await app.read_property(addr, args.object, prop)
            except BaseException as exc:  # bacpypes3 raises Error PDUs as BaseException
                if isinstance(exc, (KeyboardInterrupt, SystemExit, asyncio.CancelledError)):
                    raise
                print(f"error: {args.object} {prop}: {_error(exc)}", file=sys.stderr)
                status = EXIT_DEVICE_ERROR
                continue
            print(f"{args.object} {prop}: {_show(value)}")
        return status
    finally:
        app.close()


def _route_text(args) -> str:
    """' (network N, MAC m)' for a device behind the router, '' for the device itself."""
    if args.dnet is None:
        return ""
    return f" (network {args.dnet}" + (f", MAC {args.dadr})" if args.dadr else ")")


def _error(exc: BaseException) -> str:
    """An Error/Reject/Abort PDU by its class and code (e.g. object: unknown-object), else the exception type."""
    code = getattr(exc, "errorCode", None)
    if code is not None:
        return f"{getattr(exc, 'errorClass', '')}: {code}"
    reason = getattr(exc, "apduAbortRejectReason", None)
    if reason is not None:
        return f"{type(exc).__name__}: {reason}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


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


async def pics(app, addr, device_id) -> str:
    """The device's PICS as Markdown: identity, services and object types with their properties, all read from it."""
    from bacpypes3.basetypes import ObjectTypesSupported, ServicesSupported
    from bacpypes3.primitivedata import ObjectType

    dev = f"device,{device_id[1]}"

    async def rp(obj: str, prop: str):
        return await app.read_property(addr, obj, prop)

    lines = ["| Device property | Value |", "|---|---|"]
    for prop in (
        "vendor-name",
        "vendor-identifier",
        "model-name",
        "firmware-revision",
        "protocol-version",
        "protocol-revision",
        "max-apdu-length-accepted",
        "segmentation-supported",
        "max-segments-accepted",
    ):
        lines.append(f"| {prop} | {_show(await rp(dev, prop))} |")
    services = await rp(dev, "protocol-services-supported")
    names = {v: k for k, v in vars(ServicesSupported).items() if isinstance(v, int) and not k.startswith("_")}
    lines += ["", "| Service (protocol-services-supported) | Bit |", "|---|---|"]
    lines += [f"| {_service_name(names.get(i, f'bit {i}'))} | {i} |" for i, bit in enumerate(services) if bit]
    types = await rp(dev, "protocol-object-types-supported")
    type_names = {v: k for k, v in vars(ObjectTypesSupported).items() if isinstance(v, int) and not k.startswith("_")}
    objects = list(await rp(dev, "object-list"))
    lines += ["", "| Object type | Objects | Properties (property-list of the first object) | Commandable |"]
    lines.append("|---|---|---|---|")
    for bit, on in enumerate(types):
        if not on:
            continue
        of_type = [o for o in objects if int(o[0]) == bit]
        if not of_type:
            lines.append(f"| {type_names.get(bit, bit)} | 0 | | |")
            continue
        first = f"{ObjectType(of_type[0][0])},{of_type[0][1]}"
        plist = [str(p) for p in await rp(first, "property-list")]
        commandable = "yes" if "priority-array" in plist else "no"
        lines.append(f"| {ObjectType(bit)} | {len(of_type)} | {', '.join(sorted(plist))} | {commandable} |")
    return "\n".join(lines)


def _service_name(camel: str) -> str:
    """ReadPropertyMultiple style names for the table (who-is -> Who-Is)."""
    special = {"iAm": "I-Am", "iHave": "I-Have", "whoIs": "Who-Is", "whoHas": "Who-Has", "subscribeCOV": "SubscribeCOV"}
    if camel in special:
        return special[camel]
    return camel[:1].upper() + camel[1:]
