"""A BACnet/IP client in its own process (bacpypes3), driven by JSON lines on stdin, answering JSON lines on stdout.

Commands: {"cmd": "whois"}, {"cmd": "rp", "obj": "analog-input,1011", "prop": "present-value"},
{"cmd": "rpm", "obj": "...", "props": ["all"]}, {"cmd": "wp", "obj": "...", "value": 30.0},
{"cmd": "subscribe", "obj": "..."}, {"cmd": "notifications", "wait": 3.0}, {"cmd": "quit"}.
"""

from __future__ import annotations

import asyncio
import json
import sys

from bacpypes3.app import Application
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier


def plain(value):
    """JSON-friendly rendering of a bacpypes3 value (enumerations by name)."""
    attr = getattr(value, "attr", None)
    if isinstance(attr, str):
        return attr
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    for choice in ("integerScale", "floatScale"):
        v = getattr(value, choice, None)
        if v is not None:
            return {choice: v}
    return str(value)


async def main(my_port: int, target: str) -> None:
    dev = DeviceObject(objectIdentifier=("device", 3999), objectName="test-client", vendorIdentifier=999)
    np = NetworkPortObject(f"127.0.0.1/8:{my_port}", objectIdentifier=("network-port", 1), objectName="NetworkPort-1")
    app = Application.from_object_list([dev, np])
    addr = Address(target)
    notes: asyncio.Queue = asyncio.Queue()
    subs: list[asyncio.Task] = []
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": True}), flush=True)

    async def watch(obj: str, started: asyncio.Event) -> None:
        async with app.change_of_value(addr, ObjectIdentifier(obj), None, True, 300) as scm:
            started.set()
            while True:
                prop, value = await scm.get_value()
                await notes.put({"obj": obj, "prop": plain(prop), "value": plain(value)})

    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        req = json.loads(line)
        cmd = req["cmd"]
        try:
            if cmd == "quit":
                break
            if cmd == "whois":
                lo, hi = req.get("range", [0, 4194303])
                i_ams = await app.who_is(lo, hi, addr, timeout=3)
                out = {"devices": [i.iAmDeviceIdentifier[1] for i in i_ams]}
            elif cmd == "rp":
                out = {"value": plain(await app.read_property(addr, req["obj"], req["prop"]))}
            elif cmd == "rpm":
                res = await app.read_property_multiple(addr, [req["obj"], req["props"]])
                out = {"values": {plain(prop): plain(val) for _obj, prop, _idx, val in res}}
            elif cmd == "wp":
                r = await app.write_property(addr, req["obj"], "present-value", req["value"])
                out = {"ok": r is None}
            elif cmd == "subscribe":
                started = asyncio.Event()
                subs.append(asyncio.create_task(watch(req["obj"], started)))
                await asyncio.wait_for(started.wait(), 5)
                out = {"ok": True}
            elif cmd == "notifications":
                got = []
                end = loop.time() + req.get("wait", 2.0)
                while loop.time() < end:
                    try:
                        got.append(await asyncio.wait_for(notes.get(), max(0.01, end - loop.time())))
                    except TimeoutError:
                        break
                out = {"notifications": got}
            else:
                out = {"error": f"unknown command {cmd}"}
        except BaseException as exc:  # bacpypes3 raises Error/Reject/Abort PDUs, which are BaseExceptions
            if isinstance(exc, (KeyboardInterrupt, SystemExit, asyncio.CancelledError)):
                raise
            out = {"error": str(exc)}
        print(json.dumps(out), flush=True)
    for t in subs:
        t.cancel()
    app.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
