"""BACnet conformance of the gateway's device, checked from outside by independent implementations: the C
bacnet-stack tools (bacwi, bacrp, bacwp, bacepics) and a raw-UDP client written from ASHRAE 135 (rawbacnet.py).
One gateway process for the module; its traffic is captured and dissected with tshark at the end."""

from __future__ import annotations

import re
import subprocess
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from gwproc import DEVICE, TIMEZONE, run_tool, stop_capture
from rawbacnet import (
    OBJECT_TYPE,
    OBJECT_TYPE_NAME,
    PROP,
    SC_ADD_LIST_ELEMENT,
    SC_ATOMIC_WRITE_FILE,
    SC_DEVICE_COMMUNICATION_CONTROL,
    SC_READ_PROPERTY,
    SC_READ_RANGE,
    SC_REINITIALIZE_DEVICE,
    SC_SUBSCRIBE_COV,
    SC_WRITE_PROPERTY_MULTIPLE,
    UC_TIME_SYNCHRONIZATION,
    RawClient,
    a_enumerated,
    a_null,
    a_real,
    a_unsigned,
    app,
    closing,
    ctx,
    decode_tags,
    object_id,
    opening,
    unsigned_bytes,
    values,
)

from helpers import audit_attempts

DEV = (OBJECT_TYPE["device"], DEVICE)
#: protocol-services-supported bits the device must set: services it executes or initiates (clause 21)
SERVICES = {
    "ConfirmedCOVNotification": 1,
    "SubscribeCOV": 5,
    "ReadProperty": 12,
    "ReadPropertyMultiple": 14,
    "WriteProperty": 15,
    "I-Am": 26,
    "I-Have": 27,
    "UnconfirmedCOVNotification": 28,
    "Who-Has": 33,
    "Who-Is": 34,
}
#: required properties per object type (ASHRAE 135-2020 clause 12; BACnet/IP network port; commandable BO;
#: a device that executes SubscribeCOV and supports segmentation); property-list is read separately
COMMON = {"object-identifier", "object-name", "object-type"}
REQUIRED = {
    "analog-input": COMMON | {"present-value", "status-flags", "event-state", "out-of-service", "units"},
    "analog-value": COMMON | {"present-value", "status-flags", "event-state", "out-of-service", "units"},
    "binary-input": COMMON | {"present-value", "status-flags", "event-state", "out-of-service", "polarity"},
    "binary-output": COMMON
    | {
        "present-value",
        "status-flags",
        "event-state",
        "out-of-service",
        "polarity",
        "priority-array",
        "relinquish-default",
        "current-command-priority",
    },
    "multi-state-value": COMMON
    | {"present-value", "status-flags", "event-state", "out-of-service", "number-of-states"},
    "accumulator": COMMON
    | {"present-value", "status-flags", "event-state", "out-of-service", "scale", "units", "max-pres-value"},
    "datetime-value": COMMON | {"present-value", "status-flags"},
    "device": COMMON
    | {
        "system-status",
        "vendor-name",
        "vendor-identifier",
        "model-name",
        "firmware-revision",
        "application-software-version",
        "protocol-version",
        "protocol-revision",
        "protocol-services-supported",
        "protocol-object-types-supported",
        "object-list",
        "max-apdu-length-accepted",
        "segmentation-supported",
        "max-segments-accepted",
        "apdu-segment-timeout",
        "apdu-timeout",
        "number-of-apdu-retries",
        "device-address-binding",
        "database-revision",
        "active-cov-subscriptions",
        "local-time",
        "local-date",
        "utc-offset",
    },
    "network-port": COMMON
    | {
        "status-flags",
        "reliability",
        "out-of-service",
        "network-type",
        "protocol-level",
        "network-number",
        "network-number-quality",
        "changes-pending",
        "apdu-length",
        "link-speed",
        "mac-address",
        "bacnet-ip-mode",
        "ip-address",
        "bacnet-ip-udp-port",
        "ip-subnet-mask",
        "ip-default-gateway",
        "ip-dns-server",
    },
}
EXCLUDED_FROM_PROPERTY_LIST = {PROP["object-identifier"], PROP["object-name"], PROP["object-type"], 371}


@pytest.fixture(scope="module")
def client(gateway):
    """A raw client for the module; its datagrams are kept for the capture check."""
    c = RawClient(gateway.address)
    yield c
    c.close()


def mac(gateway) -> list[str]:
    """bacnet-stack addressing of the device on loopback."""
    return ["--mac", f"127.0.0.1:{gateway.port}", "--dnet", "0"]


def audit(gateway) -> list[dict]:
    """The gateway's audit records of write attempts."""
    return audit_attempts(gateway.audit)


def object_list(client) -> list[tuple[int, int]]:
    """The device's object-list, read with the raw client."""
    return client.read_values(DEV, PROP["object-list"])


# -- discovery ---------------------------------------------------------------------------------------------------
def test_who_is_unicast_and_broadcast(gateway, client):
    got = client.who_is()
    assert [(d, apdu, seg, vendor) for d, apdu, seg, vendor, _ in got] == [(DEVICE, 1476, 0, 999)]
    assert client.who_is(DEVICE, DEVICE) and not client.who_is(DEVICE + 1, DEVICE + 10)
    # Who-Is as a BACnet broadcast (Original-Broadcast-NPDU), to the device's address and to 127.255.255.255
    assert [d[0] for d in client.who_is(broadcast=True)] == [DEVICE]
    bcast = client.who_is(broadcast=True, to=("127.255.255.255", gateway.port))
    assert [d[0] for d in bcast] == [DEVICE]


def test_bacwi_finds_the_device(gateway, bacnet_stack):
    args = ["--mac", f"127.0.0.1:{gateway.port}", str(DEVICE), str(DEVICE)]
    out = run_tool(bacnet_stack, "bacwi", *args, env={"BACNET_APDU_TIMEOUT": "1000"})  # bacwi listens that long
    assert re.search(rf"^\s*{DEVICE}\s+7F:00:00:01:", out.stdout, re.M), out.stdout + out.stderr


# -- EPICS -------------------------------------------------------------------------------------------------------
def parse_epics(text: str) -> list[dict[str, str]]:
    """Objects of a bacepics listing: property name -> first line of its value (bitstrings: the T/F list)."""
    body = text.split("List of Objects in Test Device:", 1)[1]
    objects: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    last = ""
    for line in body.splitlines():
        s = line.strip()
        if s.startswith("{") and s.rstrip() in ("{", "{ ") and line.startswith("  {"):
            current = {}
            objects.append(current)
            continue
        m = re.match(r"^    ([A-Za-z0-9-]+): ?(.*)$", line)
        if current is not None and m:
            last = m.group(1).lower()
            current[last] = m.group(2)
        elif current is not None and last and line.startswith("        ") and re.match(r"^[TF,\s]+--", s):
            current[last] = current[last] + s.split("--")[0]
    return objects


def bits(value: str) -> set[int]:
    """Positions of the T bits of a bacepics bitstring."""
    flags = [f for f in re.split(r"[\s,(]+", value) if f in ("T", "F")]
    return {i for i, f in enumerate(flags) if f == "T"}


def test_epics_required_properties_and_bitstrings(gateway, client, bacnet_stack):
    out = run_tool(bacnet_stack, "bacepics", "-v", "-t", f"127.0.0.1:{gateway.port}", str(DEVICE), timeout=120)
    assert out.returncode == 0 and "End of BACnet Protocol" in out.stdout, out.stdout[-2000:] + out.stderr
    objs = parse_epics(out.stdout)
    served = object_list(client)
    assert len(objs) == len(served) and len(served) > 60
    for obj in objs:
        otype, inst = re.match(r"\(([a-z-]+), (\d+)\)", obj["object-identifier"]).groups()
        missing = REQUIRED[otype] - set(obj)
        assert not missing, (otype, inst, missing)
        # property-list (read raw): the object's properties less the four the standard excludes
        plist = set(client.read_values((OBJECT_TYPE[otype], int(inst)), PROP["property-list"]))
        assert not plist & EXCLUDED_FROM_PROPERTY_LIST, (otype, inst)
        assert len(plist) == len(set(obj)) - 3, (otype, inst, sorted(obj))
        assert "?" not in "".join(obj.values()), (otype, inst, obj)  # every listed property is readable
    device = next(o for o in objs if o["object-type"] == "device")
    assert bits(device["protocol-services-supported"]) == set(SERVICES.values())
    types = bits(device["protocol-object-types-supported"])
    assert types == {t for t, _ in served} == {OBJECT_TYPE[n] for n in REQUIRED}
    assert "Who-Is" in out.stdout.split("Standard Object-Types")[0]


def test_services_claimed_are_served_and_the_others_rejected(gateway, client):
    ai = ctx(0, object_id(0, 1005))
    # claimed confirmed services execute (an ACK or a service Error, never a Reject)
    assert client.confirmed(SC_READ_PROPERTY, ai + ctx(1, unsigned_bytes(85))).kind == "complex"
    rpm = ai + opening(1) + ctx(0, unsigned_bytes(85)) + closing(1)
    assert client.confirmed(14, rpm).kind == "complex"
    assert client.read(DEV, PROP["object-name"]).ok
    # Who-Has (by name and by identifier) is answered with I-Have; an unknown name is not
    assert client.who_has(name="gen.Voltage_L1_N") == [(DEV, (0, 1011), "gen.Voltage_L1_N")]
    assert client.who_has(obj=(44, 1027)) == [(DEV, (44, 1027), "gen.Demand_Peak_DateTime")]
    assert client.who_has(name="no.such.object", wait=0.5) == []
    # not claimed: the standard Reject, whatever the service
    unserved = {
        "ReadRange": (SC_READ_RANGE, ai + ctx(1, unsigned_bytes(85))),
        "DeviceCommunicationControl": (SC_DEVICE_COMMUNICATION_CONTROL, ctx(1, b"\x01")),
        "ReinitializeDevice": (SC_REINITIALIZE_DEVICE, ctx(0, b"\x01")),
        "AtomicWriteFile": (
            SC_ATOMIC_WRITE_FILE,
            app(12, object_id(10, 1)) + opening(0) + app(3, b"\x00") + app(6, b"x") + closing(0),
        ),
        "WritePropertyMultiple": (
            SC_WRITE_PROPERTY_MULTIPLE,
            ai + opening(1) + ctx(0, unsigned_bytes(85)) + opening(2) + a_real(1.0) + closing(2) + closing(1),
        ),
        "AddListElement": (SC_ADD_LIST_ELEMENT, ai + ctx(1, unsigned_bytes(85)) + opening(3) + a_null() + closing(3)),
    }
    for name, (service, params) in unserved.items():
        for _ in range(3):
            ans = client.confirmed(service, params)
            assert (ans.kind, ans.error) == ("reject", "unrecognized-service"), (name, ans)
    # TimeSynchronization (unconfirmed) is not executed: the host clock is never set from the network
    client.send(bytes([0x01, 0x00, 0x10, UC_TIME_SYNCHRONIZATION]) + app(10, b"\x46\x01\x01\x04") + app(11, bytes(4)))
    assert client.read(DEV, PROP["object-name"]).ok
    log = gateway.log_text()
    assert "Traceback" not in log
    # one line for this client (127.0.0.1: every peer of the suite) whatever it sent
    assert len(re.findall(r"Request from 127\.0\.0\.1 is not a service of this device", log)) == 1, log


# -- writes ------------------------------------------------------------------------------------------------------
def one_object_per_type(client) -> list[tuple[int, int]]:
    """The first object of every type the device serves (device and network port included)."""
    seen: dict[int, tuple[int, int]] = {}
    for oid in object_list(client):
        seen.setdefault(oid[0], tuple(oid))
    return list(seen.values())


def test_write_every_property_of_every_object_type(gateway, client):
    before = len(audit(gateway))
    answers = []
    for oid in one_object_per_type(client):
        props = set(client.read_values(oid, PROP["property-list"])) | EXCLUDED_FROM_PROPERTY_LIST
        for prop in sorted(props):
            current = client.read(oid, prop)
            value = current.data if current.kind == "complex" else a_null()
            ans = client.write(oid, prop, value)  # the value it has: a harmless write, if any were harmless
            answers.append((oid, prop, ans))
    accepted = [(OBJECT_TYPE_NAME[o[0]], p) for o, p, a in answers if a.ok]
    assert set(accepted) <= {("binary-output", PROP["present-value"]), ("analog-value", PROP["present-value"])}
    for oid, prop, ans in answers:
        if not ans.ok and prop != PROP["present-value"]:
            assert ans.error == "property: write-access-denied", (oid, prop, ans)
    # the device is intact: identity, APDU length, name
    assert client.read_values(DEV, PROP["object-identifier"]) == [DEV]
    assert client.who_is()[0][:2] == (DEVICE, 1476)
    # every attempt is in the audit log, with the real source address
    records = audit(gateway)[before:]
    assert len(records) == len(answers)
    assert all(r["source"] == "127.0.0.1" and r["protocol"] == "bacnet" for r in records)
    assert sum(r["decision"] == "accepted" for r in records) == len(accepted)
    # give the binary output written back its relinquish-default again
    for oid in one_object_per_type(client):
        if oid[0] == OBJECT_TYPE["binary-output"]:
            assert client.write(oid, PROP["present-value"], a_null(), priority=16).ok


def test_journal_alarm_is_a_read_only_binary_input(gateway, client):
    alarm = (OBJECT_TYPE["binary-input"], 4194000)
    assert alarm in object_list(client)
    assert client.who_has(name="gateway.Journal_Alarm") == [(DEV, alarm, "gateway.Journal_Alarm")]
    deadline = time.monotonic() + 5
    while client.read_values(alarm, PROP["present-value"]) != [0] and time.monotonic() < deadline:
        time.sleep(0.2)  # inactive once the (new, healthy) journal is open
    assert client.read_values(alarm, PROP["present-value"]) == [0]
    assert client.read_values(alarm, PROP["reliability"]) == [0]  # no-fault-detected
    before = len(audit(gateway))
    for value in (a_enumerated(1), a_enumerated(0), a_null()):
        ans = client.write(alarm, PROP["present-value"], value, priority=8)
        assert (ans.kind, ans.error) == ("error", "property: write-access-denied"), ans
    records = audit(gateway)[before:]
    assert len(records) == 3 and all(r["point"] == "binary-input,4194000/present-value" for r in records), records
    assert client.read_values(alarm, PROP["present-value"]) == [0]


def test_write_edge_cases_answer_the_standard_errors(gateway, client):
    av, ai, bo = (2, 1047), (0, 1011), (4, 1031)
    pv = PROP["present-value"]
    cases = [
        (av, pv, a_null(), 16, None, "property: invalid-data-type"),  # NULL: no priority array
        (av, pv, a_unsigned(20), None, None, "property: invalid-data-type"),  # Unsigned to a REAL
        (ai, PROP["priority-array"], a_null(), None, None, "property: unknown-property"),
        (ai, PROP["priority-array"], a_real(1.0), 8, 1, "property: unknown-property"),
        (bo, pv, a_enumerated(5), 8, None, "property: value-out-of-range"),  # BinaryPV 5
        (bo, pv, a_real(1.0), 8, None, "property: invalid-data-type"),
        (bo, pv, a_enumerated(1), 8, 1, "property: property-is-not-an-array"),
        (bo, pv, a_enumerated(1), 17, None, "services: parameter-out-of-range"),
        (bo, pv, a_enumerated(1), 0, None, "services: parameter-out-of-range"),
        ((2, 9999), pv, a_real(1.0), None, None, "object: unknown-object"),
        (DEV, PROP["object-identifier"], app(12, object_id(8, 12345)), None, None, "property: write-access-denied"),
        ((4, 1030), PROP["priority-array"], a_null(), None, 8, "property: write-access-denied"),
    ]
    for oid, prop, value, priority, index, expected in cases:
        ans = client.write(oid, prop, value, priority=priority, index=index)
        assert (ans.kind, ans.error) == ("error", expected), (oid, prop, priority, index, ans)
    # the wildcard instance 4194303 names this device
    assert client.read_values((8, 4194303), PROP["object-name"]) == ["conformance"]


def test_bacnet_stack_reads_the_same_errors(gateway, bacnet_stack):
    out = run_tool(
        bacnet_stack, "bacwp", *mac(gateway), str(DEVICE), "analog-value", "1047", "present-value", "16", "-1", "0", "0"
    )
    assert "invalid-data-type" in out.stdout + out.stderr
    out = run_tool(
        bacnet_stack,
        "bacwp",
        *mac(gateway),
        str(DEVICE),
        "device",
        str(DEVICE),
        "max-apdu-length-accepted",
        "16",
        "-1",
        "2",
        "50",
    )
    assert "write-access-denied" in out.stdout + out.stderr
    out = run_tool(bacnet_stack, "bacrp", *mac(gateway), str(DEVICE), "device", "4194303", "object-name")
    assert '"conformance"' in out.stdout or "conformance" in out.stdout, out.stdout + out.stderr


def _bo_state(client, bo) -> tuple[int, list, list]:
    pv = client.read_values(bo, PROP["present-value"])[0]
    pa = client.read_values(bo, PROP["priority-array"])
    ccp = client.read_values(bo, PROP["current-command-priority"])
    return pv, pa, ccp


def test_binary_output_command_and_relinquish_at_several_priorities(gateway, client):
    bo = (4, 1030)  # gen.Reset_Demand_Peak
    pv = PROP["present-value"]
    assert _bo_state(client, bo) == (0, [None] * 16, [None])
    assert client.read_values(bo, PROP["relinquish-default"]) == [0]
    n = len(audit(gateway))
    # active at 16: executed on the meter (a pulse), present-value follows the priority array
    assert client.write(bo, pv, a_enumerated(1), priority=16).ok
    assert _bo_state(client, bo) == (1, [None] * 15 + [1], [16])
    # inactive at 8 wins, nothing is sent to the meter
    assert client.write(bo, pv, a_enumerated(0), priority=8).ok
    assert _bo_state(client, bo) == (0, [None] * 7 + [0] + [None] * 7 + [1], [8])
    # active at 12 loses against 8: stored, not executed
    assert client.write(bo, pv, a_enumerated(1), priority=12).ok
    assert _bo_state(client, bo)[0] == 0
    # relinquish 8 (NULL): 12 wins -> active; NULL is never a command to the meter
    assert client.write(bo, pv, a_null(), priority=8).ok
    assert _bo_state(client, bo) == (1, [None] * 11 + [1, None, None, None, 1], [12])
    assert client.write(bo, pv, a_null(), priority=12).ok
    assert client.write(bo, pv, a_null(), priority=16).ok
    assert _bo_state(client, bo) == (0, [None] * 16, [None])
    recs = audit(gateway)[n:]
    assert [r["decision"] for r in recs] == ["accepted"] * 6
    executed = [r for r in recs if r["meter_reply"] == "ok"]
    assert len(executed) == 1 and executed[0]["detail"] == "active at priority 16"
    assert all(r["value"] == 0 and "no action" in r["meter_reply"] for r in recs if r is not executed[0])
    assert [r["detail"] for r in recs if "relinquish" in r["detail"]] == [
        "relinquish at priority 8",
        "relinquish at priority 12",
        "relinquish at priority 16",
    ]


def test_bacnet_stack_commands_a_binary_output(gateway, client, bacnet_stack):
    def tool(name: str, *args: str) -> str:
        out = run_tool(bacnet_stack, name, *mac(gateway), str(DEVICE), "binary-output", "1030", *args)
        return out.stdout + out.stderr

    n = len(audit(gateway))
    assert "Acknowledged" in tool("bacwp", "present-value", "10", "-1", "9", "1")  # active at 10: executed
    assert "active" in tool("bacrp", "present-value") and "inactive" not in tool("bacrp", "present-value")
    assert tool("bacrp", "current-command-priority").strip() == "10"
    assert "{Null,Null,Null,Null,Null,Null,Null,Null,Null,1," in tool("bacrp", "priority-array")
    assert "Acknowledged" in tool("bacwp", "present-value", "10", "-1", "0", "0")  # NULL at 10: relinquished
    assert "inactive" in tool("bacrp", "present-value")
    assert "value-out-of-range" in tool("bacwp", "present-value", "10", "-1", "9", "2")
    recs = audit(gateway)[n:]
    assert [(r["decision"], r["meter_reply"]) for r in recs[:2]] == [
        ("accepted", "ok"),
        ("accepted", "no action (command value 0)"),
    ]
    assert recs[2]["decision"] == "denied" and "BinaryPV 2" in recs[2]["reason"]


# -- segmentation --------------------------------------------------------------------------------------------
def test_segmented_object_list_respects_the_client_max_apdu(gateway, client):
    def object_ids(ans) -> list:
        assert ans.kind == "complex", ans
        return [v for v in values(ans.data) if isinstance(v, tuple)][1:]  # less the device's own identifier

    reference, _ = client.read_segmented(DEV, PROP["object-list"], 5, 0)
    expected = object_ids(reference)
    assert len(expected) > 60
    for code, size, segments_code in ((1, 128, 4), (2, 206, 3), (3, 480, 1)):  # 16, 8 and 2 segments accepted
        ans, sizes = client.read_segmented(DEV, PROP["object-list"], code, segments_code)
        assert max(sizes) <= size, (size, sizes)
        assert len(sizes) > 1 or sum(sizes) <= size, (size, sizes)  # one APDU only when the whole answer fits
        assert object_ids(ans) == expected
    # fewer segments than the answer needs: Abort (not a truncated or oversized answer)
    ans, sizes = client.read_segmented(DEV, PROP["object-list"], 1, 1)
    assert ans.kind == "abort" and sizes == [], ans
    # a client that accepts no segments, with a max-APDU the answer exceeds (206 octets), gets an Abort
    # segmentation-not-supported, not silence
    read_list = ctx(0, object_id(*DEV)) + ctx(1, unsigned_bytes(PROP["object-list"]))
    ans = client.confirmed(SC_READ_PROPERTY, read_list, max_apdu_code=2)
    assert ans.kind == "abort" and ans.error == "4", ans


# -- COV ---------------------------------------------------------------------------------------------------------
def test_cov_subscribe_notify_and_cancel(gateway, client):
    ai = (0, 1005)  # gen.Active_Power_Total, moves every poll in the simulator
    client.notifications.clear()
    assert client.subscribe(17, ai, confirmed=False, lifetime=120).kind == "ack"
    assert client.subscribe(18, (4, 1031), confirmed=True, lifetime=0).kind == "ack"
    subs = client.read(DEV, PROP["active-cov-subscriptions"])
    assert subs.kind == "complex"
    assert object_id(*ai) in subs.data and object_id(4, 1031) in subs.data
    ctx1 = [int.from_bytes(t.data, "big") for t in decode_tags(subs.data) if t.kind == "ctx" and t.number == 1]
    assert 17 in ctx1 and 18 in ctx1  # the subscriber process identifiers
    client.listen(3.0)
    got = [x for x in client.notifications if x.obj == ai and x.process == 17]
    assert len(got) >= 2 and not got[0].confirmed  # the initial one and at least one change
    assert got[0].device == DEV and 0 < got[0].time_remaining <= 120
    assert {PROP["present-value"], PROP["status-flags"]} <= set(got[0].values)
    assert any(x.obj == (4, 1031) and x.confirmed for x in client.notifications)  # initial, confirmed (ACKed)
    # cancel: no more notifications, the list is empty again
    assert client.subscribe(17, ai, None, None).kind == "ack"
    assert client.subscribe(18, (4, 1031), None, None).kind == "ack"
    client.listen(0.3)
    client.notifications.clear()
    client.listen(2.0)
    assert client.notifications == []
    assert client.read(DEV, PROP["active-cov-subscriptions"]).data == b""
    # unknown object
    ans = client.subscribe(19, (0, 9999), confirmed=False, lifetime=60)
    assert (ans.kind, ans.error) == ("error", "object: unknown-object")
    assert client.confirmed(SC_SUBSCRIBE_COV, b"\x09").kind == "reject"  # missing parameters


# -- device properties -------------------------------------------------------------------------------------------
def test_local_time_date_and_utc_offset_in_the_gateway_zone(gateway, client):
    zone = ZoneInfo(TIMEZONE)
    t = client.read_values(DEV, PROP["local-time"])[0]
    d = client.read_values(DEV, PROP["local-date"])[0]
    now = datetime.now(zone)
    served = datetime(d[0] + 1900, d[1], d[2], t[0], t[1], t[2], tzinfo=zone)
    assert abs((served - now).total_seconds()) < 30
    assert d[3] == now.isoweekday()
    offset = client.read_values(DEV, PROP["utc-offset"])[0]
    assert offset == -int((now.utcoffset() - now.dst()).total_seconds() // 60) == -840
    assert client.read_values(DEV, PROP["daylight-savings-status"]) == [False]
    assert client.read_values(DEV, PROP["database-revision"]) == [1]


def test_datetime_value_beside_the_timestamp_ai(gateway, client):
    ts = client.read_values((0, 1027), PROP["present-value"])[0]
    dt = client.read_values((44, 1027), PROP["present-value"])
    assert client.read_values((44, 1027), PROP["object-name"]) == ["gen.Demand_Peak_DateTime"]
    date, tod = dt
    served = datetime(date[0] + 1900, date[1], date[2], tod[0], tod[1], tod[2], tzinfo=ZoneInfo(TIMEZONE))
    assert abs(served.timestamp() - ts) <= 128  # the AI is a REAL (float32): the DateTime is the exact one
    assert date[3] == served.isoweekday()


# -- the wire ------------------------------------------------------------------------------------------------------
def test_zzz_capture_has_no_malformed_frame_or_expert_warning(gateway, client):
    """Last of the module: the traffic so far, dissected by Wireshark's BACnet dissector."""
    if gateway.tshark_path is None or gateway.capture is None:
        pytest.skip(gateway.tshark_why)
    time.sleep(0.5)
    stop_capture(gateway)
    port = gateway.port
    common = [gateway.tshark_path, "-r", str(gateway.capture), "-d", f"udp.port=={port},bvlc", "-n"]
    frames = subprocess.run(
        [*common, "-T", "fields", "-e", "frame.number", "-e", "udp.srcport", "-e", "_ws.col.Info"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    from_gateway = [f for f in frames if f.split("\t")[1:2] == [str(port)]]
    assert len(from_gateway) > 300, len(frames)
    bad = subprocess.run(
        [*common, "-Y", f"udp.srcport=={port} && (_ws.malformed || _ws.expert.severity >= 0x00600000)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.strip()
    assert bad == "", bad
    # the client's own frames dissect cleanly too (a check of the test client), but the one truncated on purpose
    bad = subprocess.run(
        [*common, "-Y", f"udp.dstport=={port} && _ws.malformed"], capture_output=True, text=True, timeout=120
    ).stdout.strip()
    assert len(bad.splitlines()) == 1 and "subscribeCOV" in bad, bad
