"""BACnet intrinsic reporting end to end: simulated meters raise alarms, a recipient on a loopback UDP port decodes the
event notifications byte by byte (ASHRAE 135 clause 13.8/13.9, decoder independent of bacpypes3), and the
independent bacnet-stack tools read the event properties (bacrp), list the events (bacge) and acknowledge them
(bacackalarm). Skips with the reason when the tools are absent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import struct
import warnings
from pathlib import Path

import pytest

from bacnet_raw import bacnet_stack_tool
from conformance.rawbacnet import a_enumerated, a_unsigned, app, decode_tags, object_id
from helpers import FAST, free_udp_port, wait_for

DEVICE = 4720
RECIPIENT = 4801  # the recipient's own device instance (a device recipient, bound by its I-Am)
BASE = 1000
# event types, states and notify types (ASHRAE 135 clause 21)
CHANGE_OF_STATE, OUT_OF_RANGE, CHANGE_OF_RELIABILITY = 1, 5, 19
NORMAL, FAULT, OFFNORMAL, HIGH_LIMIT = 0, 1, 2, 3
ALARM, ACK_NOTIFICATION = 0, 2


def decode_event(params: bytes) -> dict:
    """The parameters of a (Un)ConfirmedEventNotification: context tags by number, event values as inner tags."""
    top: dict[int, bytes] = {}
    inner: dict[int, list] = {3: [], 12: []}
    depth, outer = 0, None
    for t in decode_tags(params):
        if t.kind == "open":
            if depth == 0:
                outer = t.number
            else:
                inner[outer].append(t)
            depth += 1
        elif t.kind == "close":
            depth -= 1
            if depth:
                inner[outer].append(t)
        elif depth == 0:
            top[t.number] = t.data
        else:
            inner[outer].append(t)

    def u(n: int) -> int | None:
        return int.from_bytes(top[n], "big") if n in top else None

    oid = struct.unpack(">I", top[2])[0]
    return {
        "process": u(0),
        "object": (oid >> 22, oid & 0x3FFFFF),
        "class": u(4),
        "priority": u(5),
        "type": u(6),
        "text": top[7][1:].decode() if 7 in top else "",
        "notify": u(8),
        "ack_required": u(9),
        "from": u(10),
        "to": u(11),
        "values": inner[12],
    }


class Recipient(asyncio.DatagramProtocol):
    """An event-notification recipient on a loopback UDP port: decodes, and answers confirmed ones with a Simple-ACK."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.acks: dict[int, tuple[int, bytes]] = {}  # invoke id -> (service, Complex-ACK parameters)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        body = data[4:]  # BVLL: Original-Unicast-NPDU
        control, i = body[1], 2
        if control & 0x20:  # DNET, DLEN, DADR ... hop count
            i += 3 + body[i + 2] + 1
        if control & 0x08:
            i += 3 + body[i + 2]
        apdu = body[i:]
        if apdu[0] >> 4 == 0 and apdu[3] == 2:  # ConfirmedEventNotification: ACK it
            self.events.append(decode_event(apdu[4:]) | {"confirmed": True})
            self.transport.sendto(bytes([0x81, 0x0A, 0, 9, 1, 0, 0x20, apdu[2], 2]), addr)
        elif apdu[0] >> 4 == 1 and apdu[1] == 3:  # UnconfirmedEventNotification
            self.events.append(decode_event(apdu[2:]) | {"confirmed": False})
        elif apdu[0] >> 4 == 3:  # Complex-ACK
            self.acks[apdu[1]] = (apdu[2], apdu[3:])

    def request(self, target: tuple[str, int], invoke: int, service: int, params: bytes = b"") -> None:
        """Send a confirmed request (NPDU expecting a reply, max APDU 1476, no segmentation)."""
        apdu = bytes([0x00, 0x05, invoke, service]) + params
        self.transport.sendto(bytes([0x81, 0x0A, 0, 6 + len(apdu), 0x01, 0x04]) + apdu, target)

    def find(self, **want) -> list[dict]:
        """The notifications received whose fields equal `want`."""
        return [e for e in self.events if all(e.get(k) == v for k, v in want.items())]


async def tool(name: str, *args: str, cwd: Path | None = None) -> str:
    """Run a bacnet-stack tool from its own free UDP port without blocking the gateway's loop; its output."""
    path = bacnet_stack_tool(name)
    assert path is not None
    env = {**os.environ, "BACNET_IFACE": "lo", "BACNET_IP_PORT": str(free_udp_port())}
    proc = await asyncio.create_subprocess_exec(
        str(path), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=cwd
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return out.decode(errors="replace")


def config(port: int, limits: str = "", journal: str = "{enabled: false}") -> str:
    return f"""
gateway: {{name: events-test}}
buses:
  - {{id: rtu, type: modbus_rtu, simulated: true, timeout: 1.0, retries: 0, fail_after: 1, backoff_max: 1}}
meters:
  - {{id: gen, bus: rtu, address: 1, profile: generic, bacnet_instance_base: {BASE}, poll_intervals: {FAST},
     bacnet_limits: {{Voltage_L1_N: {{high: 245, low: 215, deadband: 2, notification_class: 2}}{limits}}}}}
upstream:
  bacnet:
    enabled: true
    bind: 127.0.0.1
    netmask: 8
    port: 0
    device_instance: {DEVICE}
    events:
      enabled: true
      notification_classes:
        - number: 1
          priority: {{offnormal: 20, fault: 30, normal: 120}}
          recipients:
            - {{address: "127.0.0.1:{port}", process_id: 7}}
            - {{address: "127.0.0.1:{port}", process_id: 8, confirmed: true, transitions: [offnormal, fault]}}
            - {{device: {RECIPIENT}, process_id: 11, transitions: [offnormal]}}
        - number: 2
          ack_required: []
          recipients:
            - {{address: "127.0.0.1:{port}", process_id: 9, days: [mon, tue, wed, thu, fri, sat, sun]}}
  modbus_tcp: {{enabled: false}}
  prometheus: {{enabled: false}}
journal: {journal}
"""


async def start_tshark(port: int, pcap: Path) -> asyncio.subprocess.Process | None:
    """tshark capturing the recipient's port on lo (None, with a warning, when tshark is absent or cannot capture)."""
    path = shutil.which("tshark")
    if path is None:
        warnings.warn("tshark not installed: event notifications not cross-checked with its dissector", stacklevel=2)
        return None
    err = pcap.with_suffix(".err")
    with open(err, "w") as eh:
        proc = await asyncio.create_subprocess_exec(
            path,
            "-i",
            "lo",
            "-f",
            f"udp port {port}",
            "-w",
            str(pcap),
            "-q",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=eh,
        )
    if not await wait_for(lambda: proc.returncode is not None or "Capturing on" in err.read_text(errors="replace"), 10):
        proc.kill()
    if proc.returncode is not None or "Capturing on" not in err.read_text(errors="replace"):
        warnings.warn(f"tshark cannot capture on lo: {err.read_text(errors='replace')[-200:]}", stacklevel=2)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return None
    await asyncio.sleep(0.2)
    return proc


async def dissect(proc: asyncio.subprocess.Process, port: int, pcap: Path) -> str:
    """Stop the capture and return tshark's verbose dissection of it."""
    proc.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()
    reader = await asyncio.create_subprocess_exec(
        str(shutil.which("tshark")),
        "-r",
        str(pcap),
        "-d",
        f"udp.port=={port},bvlc",
        "-n",
        "-V",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await asyncio.wait_for(reader.communicate(), 60)
    return out.decode(errors="replace")


async def test_alarms_faults_limits_ack_and_event_information(gateways, tmp_path, caplog):
    if bacnet_stack_tool("bacackalarm") is None or bacnet_stack_tool("bacge") is None:
        pytest.skip("bacnet-stack tools not found at ../shared/tools/bacnet-stack/bin (independent BACnet peer)")
    caplog.set_level(logging.INFO, logger="meter_gateway.servers.bacnet_events")
    loop = asyncio.get_running_loop()
    transport, rec = await loop.create_datagram_endpoint(Recipient, local_addr=("127.0.0.1", 0))
    rport = transport.get_extra_info("sockname")[1]
    pcap = tmp_path / "events.pcapng"
    capture = await start_tshark(rport, pcap)
    try:
        gw = await gateways(config(rport, journal=f"{{enabled: true, path: {tmp_path / 'journal.sqlite'}}}"))
        port = gw.servers[0].address()[1]
        mac = ["--mac", f"127.0.0.1:{port}", "--dnet", "0"]
        cat = gw.catalogue
        phase = BASE + cat.get("Phase_Loss_L1").index
        comm = BASE + cat.get("Communication_Status").index
        volt = BASE + cat.get("Voltage_L1_N").index
        assert await wait_for(lambda: gw.table.is_online("gen"), 10)
        await asyncio.sleep(0.6)  # a poll of every class: nothing is in alarm on a healthy meter
        assert not rec.find(to=OFFNORMAL) and not rec.find(to=HIGH_LIMIT)

        async def rp(obj: str, inst: int, prop: str) -> str:
            return (await tool("bacrp", *mac, str(DEVICE), obj, str(inst), prop)).strip()

        # the event properties of an alarm point
        assert await rp("binary-input", phase, "event-state") == "normal"
        assert await rp("binary-input", phase, "alarm-value") in ("1", "active")  # bacrp prints the enumeration
        assert await rp("binary-input", phase, "notification-class") == "1"
        assert await rp("binary-input", phase, "event-enable") == "{true,true,true}"
        assert await rp("notification-class", 1, "priority") == "{20,30,120}"

        # the recipient announces itself (I-Am, unicast): the device recipient of class 1 is bound to its address
        iam = app(12, object_id(8, RECIPIENT)) + a_unsigned(1476) + a_enumerated(3) + a_unsigned(999)
        transport.sendto(bytes([0x81, 0x0A, 0, 8 + len(iam), 0x01, 0x00, 0x10, 0x00]) + iam, ("127.0.0.1", port))
        await asyncio.sleep(0.3)

        # 1. the meter raises phase loss: CHANGE_OF_STATE to the three recipients of class 1
        sim = gw.simulators["gen"]
        sim.model.values["Phase_Loss_L1"] = True
        assert await wait_for(lambda: len(rec.find(object=(3, phase))) >= 3, 10), rec.events
        for confirmed, pid in ((False, 7), (True, 8), (False, 11)):
            ev = rec.find(object=(3, phase), process=pid, to=OFFNORMAL)[0]
            assert ev["confirmed"] is confirmed and ev["type"] == CHANGE_OF_STATE and ev["notify"] == ALARM
            assert (ev["from"], ev["to"], ev["class"], ev["priority"], ev["ack_required"]) == (
                NORMAL,
                OFFNORMAL,
                1,
                20,
                1,
            )
            values = ev["values"]  # change-of-state [1] { new-state [0] { binary-value [1] active }, status-flags }
            assert (values[0].kind, values[0].number) == ("open", 1)
            assert (values[2].number, values[2].data) == (1, b"\x01")
            assert "gen.Phase_Loss_L1" in ev["text"]
        assert await rp("binary-input", phase, "event-state") == "offnormal"
        assert await rp("binary-input", phase, "acked-transitions") == "{false,true,true}"
        assert (await rp("binary-input", phase, "status-flags")).startswith("{true,")

        # 2. GetEventInformation (bacge finds the device through a static address cache)
        (tmp_path / "address_cache").write_text(f"{DEVICE} 127.0.0.1:{port} 0 0 1476\n")
        listing = await tool("bacge", str(DEVICE), cwd=tmp_path)
        rows = [line.split() for line in listing.splitlines() if line.startswith(str(DEVICE))]
        assert [r[1:4] for r in rows] == [["3", str(phase), "ON"]], listing

        # 3. AcknowledgeAlarm with the transition's time stamp (a wrong one is refused)
        stamp = (await rp("binary-input", phase, "event-time-stamps")).split(",")[0].strip("{")
        args = [str(DEVICE), "1", "binary-input", str(phase), str(OFFNORMAL)]
        wrong = await tool("bacackalarm", *args, "2001/01/01-00:00:00", "pytest", "2026/12/01-12:00:00", *mac)
        assert "invalid-time-stamp" in wrong, wrong
        out = await tool("bacackalarm", *args, stamp, "pytest", "2026/12/01-12:00:00", *mac)
        assert "AcknowledgeAlarm Acknowledged" in out, out
        assert await rp("binary-input", phase, "acked-transitions") == "{true,true,true}"
        assert await wait_for(lambda: rec.find(object=(3, phase), notify=ACK_NOTIFICATION), 5)

        # the gateway's own journal alarm reports too (the journal's disk-full state set as the recorder does)
        journal_alarm = ("binary-input", 4194000)
        gw.journal.disk_full = True
        assert await wait_for(lambda: rec.find(object=(3, 4194000), to=OFFNORMAL, process=7), 10), rec.events
        assert await rp(*journal_alarm, "event-state") == "offnormal"
        gw.journal.disk_full = False
        assert await wait_for(lambda: rec.find(object=(3, 4194000), to=NORMAL, process=7), 10), rec.events

        # 4. an analog limit: OUT_OF_RANGE to class 2, no acknowledgement required
        sim.model.frozen = True
        sim.model.values["Voltage_L1_N"] = 251.0
        assert await wait_for(lambda: rec.find(object=(0, volt)), 10)
        (ev,) = rec.find(object=(0, volt), to=HIGH_LIMIT)
        assert (ev["process"], ev["type"], ev["to"], ev["class"], ev["ack_required"]) == (
            9,
            OUT_OF_RANGE,
            HIGH_LIMIT,
            2,
            0,
        )
        assert await rp("analog-input", volt, "acked-transitions") == "{true,true,true}"
        sim.model.values["Voltage_L1_N"] = 244.0  # inside the limit but not by the deadband: still high
        await asyncio.sleep(1.2)
        assert len(rec.find(object=(0, volt), to=HIGH_LIMIT)) == 1 and not rec.find(object=(0, volt), to=NORMAL)
        sim.model.values["Voltage_L1_N"] = 230.0
        assert await wait_for(lambda: rec.find(object=(0, volt), to=NORMAL), 10)

        # 5. the meter stops answering: CHANGE_OF_RELIABILITY to fault; Communication_Status goes off-normal
        sim.online = False
        assert await wait_for(lambda: rec.find(object=(3, phase), to=FAULT, confirmed=True), 15), rec.events
        ev = rec.find(object=(3, phase), to=FAULT, process=7)[-1]
        assert ev["type"] == CHANGE_OF_RELIABILITY and ev["priority"] == 30 and ev["from"] == OFFNORMAL
        values = ev["values"]  # change-of-reliability [19] { reliability [0] communication-failure (12), ... }
        assert (values[0].kind, values[0].number) == ("open", 19)
        assert (values[1].number, int.from_bytes(values[1].data, "big")) == (0, 12)
        assert await wait_for(lambda: rec.find(object=(3, comm), to=OFFNORMAL), 5)
        assert await rp("binary-input", phase, "event-state") == "fault"
        assert await rp("binary-input", phase, "acked-transitions") == "{true,false,true}"
        listing = await tool("bacge", str(DEVICE), cwd=tmp_path)
        listed = {int(line.split()[2]) for line in listing.splitlines() if line.startswith(str(DEVICE))}
        assert {phase, comm} <= listed, listing
        rec.request(("127.0.0.1", port), 0x55, 3)  # GetAlarmSummary: object id, alarm state, acked transitions
        assert await wait_for(lambda: 0x55 in rec.acks, 5)
        service, params = rec.acks[0x55]
        tags = [t for t in decode_tags(params) if t.kind == "app"]
        alarms = {
            struct.unpack(">I", t.data)[0] & 0x3FFFFF: tags[k + 1].data for k, t in enumerate(tags) if t.number == 12
        }
        assert service == 3 and alarms[phase] == bytes([FAULT]) and alarms[comm] == bytes([OFFNORMAL])
        summary = gw.servers[0].events.summary()["gen"]
        assert summary["active"] >= 2 and summary["unacked"] >= 2

        # 6. it answers again: back to normal through the fault (phase loss still there: off-normal again)
        sim.online = True
        assert await wait_for(lambda: rec.find(object=(3, comm), to=NORMAL), 15)
        assert await wait_for(lambda: len(rec.find(object=(3, phase), to=OFFNORMAL, process=7, notify=ALARM)) >= 2, 10)
        assert not rec.find(process=11, to=FAULT)  # the device recipient takes to-offnormal transitions only

        # every transition logged once; a meter's fault transitions in one line
        lines = [r.getMessage() for r in caplog.records]
        offnormal = [x for x in lines if x.startswith("BACnet event: gen.Phase_Loss_L1 ") and "-> offnormal" in x]
        assert len(offnormal) == len(rec.find(object=(3, phase), to=OFFNORMAL, process=7, notify=ALARM)), lines
        faults = [x for x in lines if x.startswith("BACnet event: meter gen:") and "to fault" in x]
        assert len(faults) == len(rec.find(object=(3, phase), to=FAULT, process=7)), lines
        assert "(reliability communication-failure)" in faults[-1] and "Phase_Loss_L1" in faults[-1]

        # an independent dissector reads the same notifications
        if capture is not None:
            text, capture = await dissect(capture, rport, pcap), None
            assert "Malformed" not in text
            for needed in (
                "Service Choice: confirmedEventNotification (2)",
                "Unconfirmed Service Choice: unconfirmedEventNotification (3)",
                "Event Type: change-of-state (1)",
                "Event Type: out-of-range (5)",
                "Event Type: change-of-reliability (19)",
                "Notify Type: ack-notification (2)",
                "To State: high-limit (3)",
            ):
                assert needed in text, needed
    finally:
        transport.close()
        if capture is not None:
            capture.kill()
            await capture.wait()


async def test_reload_applies_new_limits_to_the_meter_objects_only(gateways, tmp_path):
    from meter_gateway.config import parse_config
    from meter_gateway.profiles import load_profiles

    text = config(free_udp_port()).replace(
        "meters:\n",
        f"meters:\n  - {{id: other, bus: rtu, address: 2, profile: generic, bacnet_instance_base: 2000,"
        f" poll_intervals: {FAST}}}\n",
    )
    gw = await gateways(text)
    server = gw.servers[0]
    app = server.app
    volt = ("gen", "Voltage_L1_N", "analog-input")
    other = server.objects[("other", "Phase_Loss_L1", "binary-input")]
    assert float(server.objects[volt].highLimit) == 245.0
    assert server.events.objects[other.objectIdentifier] is other
    new = text.replace("high: 245", "high: 260")
    await gw.apply(parse_config(new, str(tmp_path / "new.yaml")), load_profiles())
    assert server.app is app  # the device kept running (COV subscribers, sockets)
    assert float(server.objects[volt].highLimit) == 260.0
    assert server.events.objects[server.objects[volt].objectIdentifier] is server.objects[volt]
    assert server.objects[("other", "Phase_Loss_L1", "binary-input")] is other  # the other meter's objects stay
