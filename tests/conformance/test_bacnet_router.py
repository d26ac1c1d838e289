"""Per-meter BACnet devices behind the gateway's router (issue 16 item 1), checked from outside: a real gateway
process, the bacnet-stack tools (bacwir, bacwi, bacrp, bacrpm, bacwp) through the router with --dnet/--dadr, COV
through it with the raw client (routed NPDUs written from ASHRAE 135 clause 6; bacscov binds by a broadcast Who-Is,
which a tool on loopback cannot address to a remote network), and the NPDUs checked with tshark."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time

import pytest
from gwproc import (
    ROOT,
    TIMEZONE,
    free_udp_port,
    run_tool,
    start_capture,
    start_gateway,
    stop_capture,
    stop_gateway,
)
from rawbacnet import PROP, RawClient

from helpers import free_port

VNET = 2001
ROUTER = 4711
#: upstream.bacnet.discovery.answers_per_second of the gateway under test (requests_per_minute: 10)
RATE = 20
#: device instance of each meter: `gen` derives it from bacnet_instance_base, `mid` and `plant` set their own
DEVICES = {"gen": 1000, "mid": 77002, "plant": 77003}
NAMES = {"gen": "Shop 1", "mid": "mid", "plant": "Plant room"}

CONFIG = """
gateway: {{name: router-test, location: Test bench, timezone: {tz}}}
buses:
  - {{id: rtu, type: modbus_rtu, simulated: true, timeout: 1.0, retries: 1, fail_after: 2, backoff_max: 1}}
  - {{id: dead, type: modbus_tcp, host: 127.0.0.1, port: {dead}, timeout: 0.2, retries: 0, fail_after: 1,
     backoff_max: 1}}
meters:
  - {{id: gen, name: "Shop 1", bus: rtu, address: 1, profile: generic, mid: false, allow_config_writes: true,
     bacnet_instance_base: 1000, modbus_unit: 1, serial_number: SN-0001, building: A, floor: "1",
     poll_intervals: {{power: 0.5, voltage: 0.5, energy: 0.5, alarm: 0.5, status: 0.5, config: 5}}}}
  - {{id: mid, bus: rtu, address: 2, profile: eastron_sdm630, mid: true, bacnet_device_instance: 77002,
     modbus_unit: 2}}
  - {{id: plant, name: "Plant room", bus: dead, address: 1, profile: eastron_sdm630, bacnet_device_instance: 77003}}
upstream:
  bacnet: {{enabled: true, bind: 127.0.0.1, netmask: 8, port: 0, device_instance: 4711, devices: per-meter,
           virtual_network: {vnet}, discovery: {{requests_per_minute: 10, answers_per_second: {rate}}}}}
  modbus_tcp: {{enabled: false}}
  prometheus: {{enabled: true, port: {prom}}}
writes: {{enabled: true, allow_bacnet: [127.0.0.1]}}
"""


def sadr(instance: int) -> str:
    """A meter device's MAC on the virtual network (its instance in three octets), as bacnet-stack writes it."""
    return ":".join(f"{b:02X}" for b in instance.to_bytes(3, "big"))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """One per-meter gateway process for the module (a meter on a Modbus TCP port nobody listens on), captured."""
    tmp = tmp_path_factory.mktemp("router")
    prom = free_port()
    gp = start_gateway(tmp, CONFIG.format(tz=TIMEZONE, dead=free_udp_port(), vnet=VNET, prom=prom, rate=RATE))
    gp.prometheus = prom
    start_capture(gp)
    try:
        yield gp
    finally:
        stop_capture(gp)
        stop_gateway(gp)


@pytest.fixture(scope="module")
def client(gateway):
    """A raw client; each test sets the route to the meter device it talks to."""
    c = RawClient(gateway.address)
    yield c
    c.close()


def routed(gateway, instance: int) -> list[str]:
    """bacnet-stack addressing of a meter device through the router."""
    return ["--mac", f"127.0.0.1:{gateway.port}", "--dnet", str(VNET), "--dadr", sadr(instance)]


def test_bacwir_finds_the_router_and_its_network(gateway, bacnet_stack):
    mac = "7F:00:00:01:" + ":".join(f"{b:02X}" for b in gateway.port.to_bytes(2, "big"))
    # Who-Is-Router-To-Network for every network: the router answers with the virtual network (bacwir listens for
    # the APDU timeout)
    out = run_tool(bacnet_stack, "bacwir", "-1", mac, env={"BACNET_APDU_TIMEOUT": "1000"})
    assert re.search(rf"I-Am Router to Network from 7F000001{gateway.port:04X}", out.stdout), out.stdout
    assert re.findall(r"^Networks: (.*?)\s*$", out.stdout, re.M) == [str(VNET)], out.stdout


def test_routing_table_and_network_number_do_not_leak_the_ip_side(gateway, bacnet_stack):
    # no network_number configured: Initialize-Routing-Table-Ack (bacinitr) lists the virtual network only
    out = run_tool(bacnet_stack, "bacinitr", f"127.0.0.1:{gateway.port}", env={"BACNET_APDU_TIMEOUT": "500"})
    assert re.findall(r"DNET=(\d+)", out.stdout) == [str(VNET)], out.stdout
    # and What-Is-Network-Number gets no Network-Number-Is: sent before a Who-Is, only the I-Am comes back
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        s.sendto(bytes.fromhex("810a0007018012"), gateway.address)  # What-Is-Network-Number (clause 6.4.19)
        s.sendto(bytes.fromhex("810a000801001008"), gateway.address)  # Who-Is
        first = s.recv(1500)
    assert first[4:6] == b"\x01\x00" and first[6:8] == b"\x10\x00", first.hex()  # an APDU: I-Am, not an NPDU


def test_bacwi_with_dnet_discovers_every_meter_device(gateway, client, bacnet_stack):
    args = ["--mac", f"127.0.0.1:{gateway.port}", "--dnet", str(VNET)]
    out = run_tool(bacnet_stack, "bacwi", *args, env={"BACNET_APDU_TIMEOUT": "800"})
    found = {int(m[0]): (int(m[1]), m[2]) for m in re.findall(r"^\s*(\d+)\s+\S+\s+(\d+)\s+(\S+)", out.stdout, re.M)}
    assert found == {dev: (VNET, sadr(dev)) for dev in DEVICES.values()}, out.stdout
    # the router's own device stays on the IP network: a local Who-Is (no DNET) finds it alone
    client.route = None
    assert [d[0] for d in client.who_is(wait=1.0)] == [ROUTER]


def test_global_who_is_reaches_the_router_and_every_meter_device(gateway, client):
    client.route = (0xFFFF, b"")  # DNET 65535: every network (bacwi cannot broadcast on loopback)
    client.sources.clear()
    found = {d[0] for d in client.who_is(wait=1.5)}
    assert found == {ROUTER, *DEVICES.values()}, found
    routed_from = {s for s in client.sources if s is not None}
    assert routed_from == {(VNET, dev.to_bytes(3, "big")) for dev in DEVICES.values()}
    # Who-Has through the router: the meter device has its objects under their point names
    client.route = (VNET, DEVICES["mid"].to_bytes(3, "big"))
    assert client.who_has(name="Active_Energy_Import") == [((8, DEVICES["mid"]), (23, 1), "Active_Energy_Import")]


def test_bacrp_and_bacrpm_read_each_meter_through_the_router(gateway, bacnet_stack):
    for mid in ("gen", "mid"):
        dev = DEVICES[mid]
        out = run_tool(bacnet_stack, "bacrp", *routed(gateway, dev), str(dev), "device", str(dev), "object-name")
        assert out.stdout.strip() == f'"{NAMES[mid]}"', out.stdout + out.stderr
        # the same object instance in every meter device: accumulator 1 is Active_Energy_Import everywhere
        props = "present-value,object-name,status-flags,reliability"
        out = run_tool(bacnet_stack, "bacrpm", *routed(gateway, dev), str(dev), "accumulator", "1", props)
        assert 'object-name: "Active_Energy_Import"' in out.stdout, out.stdout + out.stderr
        assert "status-flags: {false,false,false,false}" in out.stdout and "no-fault-detected" in out.stdout
        assert int(re.search(r"present-value: (\d+)", out.stdout).group(1)) > 0
        out = run_tool(bacnet_stack, "bacrp", *routed(gateway, dev), str(dev), "device", str(dev), "system-status")
        assert out.stdout.strip() == "operational", out.stdout
    out = run_tool(
        bacnet_stack, "bacrpm", *routed(gateway, 1000), "1000", "device", "1000", "serial-number,location,description"
    )
    assert 'serial-number: "SN-0001"' in out.stdout and 'location: "A, 1"' in out.stdout, out.stdout
    assert 'description: "Submeter gen (generic)"' in out.stdout, out.stdout


#: required properties of a virtual Network Port (ASHRAE 135-2020 clause 12.56, no BACnet/IP ones)
VIRTUAL_PORT = {
    "object-identifier",
    "object-name",
    "object-type",
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
}


def test_bacepics_of_a_meter_device_through_the_router(gateway, client, bacnet_stack):
    from test_bacnet_device import REQUIRED, SERVICES, bits, parse_epics

    dev = DEVICES["gen"]
    args = ["-v", "-t", f"127.0.0.1:{gateway.port}", "-n", str(VNET), str(dev)]
    out = run_tool(bacnet_stack, "bacepics", *args, timeout=120)
    assert out.returncode == 0 and "End of BACnet Protocol" in out.stdout, out.stdout[-2000:] + out.stderr
    objs = parse_epics(out.stdout)
    client.route = (VNET, dev.to_bytes(3, "big"))
    assert len(objs) == len(client.read_values((8, dev), PROP["object-list"])) > 50
    for obj in objs:
        otype = re.match(r"\(([a-z-]+), \d+\)", obj["object-identifier"]).group(1)
        required = VIRTUAL_PORT if otype == "network-port" else REQUIRED[otype]
        assert not required - set(obj), (obj["object-identifier"], required - set(obj))
        assert "?" not in "".join(obj.values()), obj  # every listed property is readable through the router
    device = next(o for o in objs if o["object-type"] == "device")
    assert bits(device["protocol-services-supported"]) == set(SERVICES.values())
    assert (device["object-name"], device["serial-number"]) == (f'"{NAMES["gen"]}"', '"SN-0001"')
    port = next(o for o in objs if o["object-type"] == "network-port")
    assert (port["network-type"], port["network-number"]) == ("virtual", str(VNET))


def test_meter_in_communication_failure_shows_it_at_device_level(gateway, bacnet_stack):
    dev = DEVICES["plant"]
    out = run_tool(bacnet_stack, "bacrp", *routed(gateway, dev), str(dev), "device", str(dev), "system-status")
    assert out.stdout.strip() == "non-operational", out.stdout + out.stderr
    out = run_tool(bacnet_stack, "bacrpm", *routed(gateway, dev), str(dev), "accumulator", "1", "reliability")
    assert "communication-failure" in out.stdout, out.stdout


def test_writes_through_the_router_go_through_the_write_policy_and_audit(gateway, bacnet_stack):
    gen, mid = DEVICES["gen"], DEVICES["mid"]
    write = ["present-value", "0", "-1"]  # priority 0 (none), no array index
    ok = run_tool(bacnet_stack, "bacwp", *routed(gateway, gen), str(gen), "analog-value", "47", *write, "4", "20")
    assert "Acknowledged" in ok.stdout, ok.stdout + ok.stderr
    denied = run_tool(bacnet_stack, "bacwp", *routed(gateway, mid), str(mid), "accumulator", "1", *write, "2", "0")
    assert "write-access-denied" in denied.stdout, denied.stdout
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        records = (
            [json.loads(line) for line in gateway.audit.read_text().splitlines()] if gateway.audit.exists() else []
        )
        final = [r for r in records if r["decision"] != "intent"]
        if len(final) >= 2:
            break
        time.sleep(0.1)
    got = [(r["meter"], r["point"], r["decision"], r["source"]) for r in final]
    assert ("gen", "Demand_Interval", "accepted", "127.0.0.1") in got, got
    assert ("mid", "accumulator,1/present-value", "denied", "127.0.0.1") in got, got


def test_cov_subscription_through_the_router(gateway, client):
    dev = DEVICES["gen"]
    client.route = (VNET, dev.to_bytes(3, "big"))
    ai = (0, 5)  # Active_Power_Total, moves every poll in the simulator
    client.notifications.clear()
    client.sources.clear()
    assert client.subscribe(21, ai, confirmed=False, lifetime=60).kind == "ack"
    assert client.subscribe(22, ai, confirmed=True, lifetime=60).kind == "ack"  # the client ACKs them, routed

    def got() -> list[tuple[int, bool]]:
        return [(n.process, n.confirmed) for n in client.notifications if n.obj == ai and n.device == (8, dev)]

    deadline = time.monotonic() + 10  # the initial notifications, then at least one change (the value moves)
    while time.monotonic() < deadline and not (got().count((21, False)) >= 2 and got().count((22, True)) >= 2):
        client.listen(0.3)
    assert got().count((21, False)) >= 2 and got().count((22, True)) >= 2, got()
    assert client.sources and all(s == (VNET, dev.to_bytes(3, "big")) for s in client.sources if s is not None)
    assert client.read_values((8, dev), PROP["active-cov-subscriptions"])  # listed in the meter device
    assert client.subscribe(21, ai, None, None).kind == "ack"
    assert client.subscribe(22, ai, None, None).kind == "ack"
    client.listen(0.3)
    client.notifications.clear()
    client.listen(1.0)
    assert client.notifications == []


#: hostile or broken NPDUs for the router (clause 6.2, 6.4): each is dropped or answered, none stops it
HOSTILE = [
    "0120 07d1 00 ff 10 08",  # remote broadcast Who-Is to the virtual network (answered by every meter device)
    "0120 07d1 00 ff ffff",  # an undecodable APDU broadcast to the virtual network
    "0120 07d1 00 ff ffff",  # the same again (logged once)
    "0124 07d1 03 0003e8 00 0005 01 0c 0c00000005 1955",  # hop count 0
    "0124 07d1 03 abcdef ff 0005 01 0c 0c00000005 1955",  # a MAC nobody has
    "0124 07d1 07 0003e8000000ff ff 0005 01 0c 0c00000005 1955",  # a 7-octet DADR
    "0128 07d1 03 0003e8 10 08",  # SNET = the virtual network (a spoofed source)
    "0180 01 07d1",  # I-Am-Router-To-Network for the virtual network, from a client
    "0180 04 07d1",  # Router-Busy-To-Network
    "0180 06 01 07d1 01 00",  # Initialize-Routing-Table with an entry (never applied)
    "0180 13 07d1 01",  # Network-Number-Is naming the virtual network
    "0180 7f",  # a reserved message type
    "01a0 07d1",  # truncated after DNET
    "0120 07d1 03 0003e8",  # no hop count
]


def test_hostile_npdus_are_dropped_logged_once_and_routing_goes_on(gateway, client):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        for text in HOSTILE:
            npdu = bytes.fromhex(text)
            s.sendto(bytes([0x81, 0x0A]) + (len(npdu) + 4).to_bytes(2, "big") + npdu, gateway.address)
    dev = DEVICES["gen"]
    client.route = (VNET, dev.to_bytes(3, "big"))
    assert client.read_values((8, dev), PROP["object-name"]) == [NAMES["gen"]]
    client.route = None
    assert client.read_values((8, ROUTER), PROP["object-name"]) == ["router-test"]
    kind = "routed to a meter device that it cannot handle"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and kind not in gateway.log_text():
        time.sleep(0.1)
    log = gateway.log_text()
    assert "Traceback" not in log, log[-3000:]
    assert log.count(kind) == 1, [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]


# -- Who-Is / Who-Has through the router on a hostile network (upstream.bacnet.discovery) ------------------------
def remote_who_is(low: int | None = None, high: int | None = None) -> bytes:
    """A BVLL Original-Unicast-NPDU: Who-Is remote-broadcast to the virtual network (DNET 2001, DLEN 0)."""
    apdu = bytes([0x10, 0x08])
    if low is not None:
        apdu += bytes([0x0C]) + low.to_bytes(4, "big") + bytes([0x1C]) + high.to_bytes(4, "big")
    npdu = bytes([0x01, 0x20]) + VNET.to_bytes(2, "big") + bytes([0x00, 0xFF]) + apdu
    return bytes([0x81, 0x0A]) + (len(npdu) + 4).to_bytes(2, "big") + npdu


def i_am_of(datagram: bytes) -> tuple[tuple[int, bytes] | None, int] | None:
    """(SNET/SADR, device instance) of an I-Am datagram, None for anything else."""
    npdu = datagram[4:]
    control, pos, source = npdu[1], 2, None
    if control & 0x80:
        return None
    if control & 0x20:
        pos += 3 + npdu[pos + 2]
    if control & 0x08:
        slen = npdu[pos + 2]
        source = (int.from_bytes(npdu[pos : pos + 2], "big"), npdu[pos + 3 : pos + 3 + slen])
        pos += 3 + slen
    if control & 0x20:
        pos += 1
    if npdu[pos : pos + 2] != b"\x10\x00":
        return None
    return source, int.from_bytes(npdu[pos + 3 : pos + 7], "big") & 0x3FFFFF


def collect(socks: list[socket.socket], quiet: float, limit: float) -> list[tuple[float, int, int]]:
    """(arrival time, socket index, device instance) of every I-Am until `quiet` s pass without one."""
    import selectors

    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    got: list[tuple[float, int, int]] = []
    end, last = time.monotonic() + limit, time.monotonic()
    while time.monotonic() < end and time.monotonic() - last < quiet:
        for key, _ in sel.select(0.1):
            while True:
                try:
                    data = key.fileobj.recv(1500)
                except BlockingIOError:
                    break
                answer = i_am_of(data)
                if answer is not None:
                    last = time.monotonic()
                    got.append((last, key.data, answer[1]))
    sel.close()
    return got


def metrics(gateway) -> dict[str, float]:
    """The gateway's routed-discovery metrics (name{labels} -> value)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.prometheus}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {k: float(v) for k, v in re.findall(r"^(meter_gateway_bacnet_routed_discovery_\S+) (\S+)$", text, re.M)}


def test_who_is_flood_from_one_source_gets_a_bounded_answer(gateway):
    before = metrics(gateway)
    flood = 300
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.2", 0))  # its own source address: the budget of 127.0.0.1 (the tools) stays untouched
        t0 = time.monotonic()
        for _ in range(flood):
            s.sendto(remote_who_is(), gateway.address)
        got = collect([s], quiet=1.0, limit=10)
        elapsed = time.monotonic() - t0
    # every meter device answered, at most 10 requests a minute (the burst, plus what refilled meanwhile) were
    # delivered: 300 datagrams of 8 octets bought at most (10 + refill) x 3 I-Ams, never 900
    assert {d for _, _, d in got} == set(DEVICES.values()), got
    accepted = 10 + int(elapsed * 10 / 60) + 1
    assert len(got) <= accepted * len(DEVICES), (len(got), elapsed)
    after = metrics(gateway)
    key = 'meter_gateway_bacnet_routed_discovery_requests_total{outcome="rate-limited"}'
    assert after[key] - before.get(key, 0) >= flood - accepted, after
    line = "Who-Is/Who-Has to the meter devices beyond 10 a minute from 127.0.0.2"
    assert gateway.log_text().count(line) == 1, [x for x in gateway.log_text().splitlines() if "beyond" in x]


def test_who_is_from_many_sources_is_paced_not_dropped(gateway):
    sources = 12  # 12 head-ends (12 loopback addresses) each discover every meter at once: 36 I-Ams, paced
    socks = []
    try:
        for i in range(sources):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.bind((f"127.0.0.{10 + i}", 0))
        t0 = time.monotonic()
        for s in socks:
            s.sendto(remote_who_is(), gateway.address)
        got = collect(socks, quiet=1.0, limit=20)
    finally:
        for s in socks:
            s.close()
    # paced, not dropped: every source hears every meter device once
    assert sorted((i, d) for _, i, d in got) == sorted((i, d) for i in range(sources) for d in DEVICES.values())
    # and never faster than answers_per_second (a burst of RATE/10 first; a slow machine only makes it slower)
    for n, (at, _, _) in enumerate(sorted(got), start=1):
        assert n <= RATE / 10 + 1 + RATE * (at - t0), (n, at - t0)


def test_range_restricted_who_is_costs_the_matching_devices_only(gateway):
    before = metrics(gateway)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.3", 0))
        s.sendto(remote_who_is(77000, 77999), gateway.address)
        got = collect([s], quiet=1.0, limit=10)
        assert sorted(d for _, _, d in got) == [DEVICES["mid"], DEVICES["plant"]]
        after = metrics(gateway)
        key = "meter_gateway_bacnet_routed_discovery_deliveries_total"
        assert after[key] - before[key] == 2  # the third meter device never saw the request
        assert after["meter_gateway_bacnet_routed_discovery_pending"] == 0
        # a head-end binding its devices one at a time (Who-Is low = high): 24 requests from one source, more than
        # requests_per_minute (10), each costing a third of a full discovery: every one is answered
        s.setblocking(True)
        s.settimeout(5)
        answered = []
        for _ in range(8):
            for dev in DEVICES.values():
                s.sendto(remote_who_is(dev, dev), gateway.address)
                while (answer := i_am_of(s.recv(1500))) is None:
                    pass
                answered.append(answer[1])
        assert answered == list(DEVICES.values()) * 8


def test_bacnet_read_reads_a_meter_device_through_the_router(gateway):
    cli = [sys.executable, "-m", "meter_gateway.cli", "bacnet-read", f"127.0.0.1:{gateway.port}"]
    local = ["--local", f"127.0.0.1/8:{free_udp_port()}"]
    dev = DEVICES["mid"]
    route = ["--dnet", str(VNET), "--dadr", sadr(dev)]
    out = subprocess.run(
        [*cli, "accumulator,1", "object-name", "present-value", *route, *local],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"device {dev} at {VNET}:0x{dev:06x}" in out.stdout, out.stdout
    assert "accumulator,1 object-name: Active_Energy_Import" in out.stdout, out.stdout
    assert int(re.search(r"accumulator,1 present-value: (\d+)", out.stdout).group(1)) >= 0
    # without --dadr: every device on the virtual network (the answers are paced: --wait covers 3 at RATE a second)
    out = subprocess.run(
        [*cli, "--dnet", str(VNET), "--wait", "1", *local], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(int(x) for x in re.findall(r"^device (\d+) at", out.stdout, re.M)) == sorted(DEVICES.values())


def test_zzz_npdus_through_the_router(gateway, client):
    """Last of the module: Wireshark's dissector reads every routed frame cleanly, SNET/SADR name the meter."""
    if gateway.tshark_path is None or gateway.capture is None:
        pytest.skip(gateway.tshark_why)
    # a Who-Is-Router-To-Network of its own, answered before the capture stops: the I-Am-Router-To-Network checked
    # below is then in the capture whether or not bacwir (skipped without the bacnet-stack tools) asked too
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(20)
        s.sendto(bytes.fromhex("810a0007018000"), gateway.address)
        answer = s.recv(1500)
    assert answer[4:7] == bytes([0x01, 0x80, 0x01]), answer.hex()  # NPDU: network message I-Am-Router-To-Network
    time.sleep(0.5)  # tshark writes what it has seen
    stop_capture(gateway)
    port = gateway.port
    common = [gateway.tshark_path, "-r", str(gateway.capture), "-d", f"udp.port=={port},bvlc", "-n"]
    fields = ["-T", "fields", "-e", "bacnet.snet", "-e", "bacnet.sadr_tmp"]
    rows = subprocess.run(
        [*common, "-Y", f"udp.srcport=={port} && bacnet.snet", *fields],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    sources = {tuple(r.split("\t")) for r in rows}
    # every routed answer names the virtual network and a meter device's MAC (its instance in three octets)
    assert sources == {(str(VNET), dev.to_bytes(3, "big").hex()) for dev in DEVICES.values()}, sources
    iartn = subprocess.run(
        [*common, "-Y", f"udp.srcport=={port} && bacnet.mesgtyp == 1", "-T", "fields", "-e", "bacnet.dnet"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert iartn and set(iartn) == {str(VNET)}, iartn  # I-Am-Router-To-Network lists the virtual network
    bad = subprocess.run(
        [*common, "-Y", f"udp.srcport=={port} && (_ws.malformed || _ws.expert.severity >= 0x00600000)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.strip()
    assert bad == "", bad
