"""The gateway's BACnet/IP device on the network (issue 14.4, 14.8): segments that fit the client's max-APDU,
object-list elements, foreign-device registration, the BBMD's foreign-device table. A client written from
ASHRAE 135 (tests/bacnet_raw.py) against a real gateway process."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import time
import urllib.request

import pytest

from bacnet_raw import RawPeer, apdu_of, bacnet_stack_tool, free_port, gateway_processes, object_ids, read_property

DEVICE, OBJECT_LIST = 8, 76
MAX_APDU = {0: 50, 1: 128, 2: 206, 3: 480, 4: 1024, 5: 1476}


@pytest.fixture(scope="module")
def three_meters(tmp_path_factory):
    """One gateway with 3 meters (161 objects: an object-list of 812 octets) for the module."""
    with gateway_processes(tmp_path_factory.mktemp("net")) as make:
        yield make(meters=3)


@pytest.mark.parametrize("code", sorted(MAX_APDU))
def test_every_segment_fits_the_clients_max_apdu(three_meters, code):
    peer = RawPeer(three_meters.ports["bacnet"])
    try:
        apdus, data = peer.read_segmented(read_property(code, DEVICE, 599, OBJECT_LIST, max_apdu=code), invoke=code)
    finally:
        peer.close()
    assert apdus and all(a[0] >> 4 == 3 for a in apdus), [a[:4].hex() for a in apdus]
    assert max(len(a) for a in apdus) <= MAX_APDU[code], [len(a) for a in apdus]
    ids = object_ids(data)
    # 53 point objects and the Demand_Peak_DateTime value per meter, the device and its network port
    assert len(ids) == 3 * (53 + 1) + 2 and (8, 599) in ids and len(set(ids)) == len(ids)
    if MAX_APDU[code] >= 1024:
        assert len(apdus) == 1  # fits unsegmented
    else:
        assert len(apdus) > 1 and all(len(a) >= MAX_APDU[code] - 5 for a in apdus[:-1])  # full segments


def test_an_answer_needing_more_segments_than_accepted_is_aborted(three_meters):
    peer = RawPeer(three_meters.ports["bacnet"])
    try:  # object-list in 50-octet APDUs needs 18 segments; the client accepts 2
        a = peer.ask(read_property(7, DEVICE, 599, OBJECT_LIST, max_apdu=0, max_segs=1), invoke=7)
    finally:
        peer.close()
    assert a == bytes([0x71, 7, 11]), a  # Abort from the server, reason apdu-too-long (135 clause 5.4.5.3)


def test_object_list_element_by_element(three_meters):
    peer = RawPeer(three_meters.ports["bacnet"])
    try:
        _, data = peer.read_segmented(read_property(1, DEVICE, 599, OBJECT_LIST), invoke=1)
        whole = object_ids(data)
        count = peer.ask(read_property(2, DEVICE, 599, OBJECT_LIST, index=0), invoke=2)
        assert count is not None and count[-3:] == bytes([0x21, len(whole), 0x3F]), count  # Unsigned, 161 < 256
        elements = []
        for i in range(1, len(whole) + 1):
            a = peer.ask(read_property(i % 256, DEVICE, 599, OBJECT_LIST, index=i), invoke=i % 256)
            assert a is not None and a[0] >> 4 == 3, i
            elements += object_ids(a[3:])
        beyond = peer.ask(read_property(3, DEVICE, 599, OBJECT_LIST, index=len(whole) + 1), invoke=3)
    finally:
        peer.close()
    assert elements == whole
    # Error: class property (2), code invalid-array-index (42)
    assert beyond is not None and beyond[0] >> 4 == 5 and beyond[3:] == bytes([0x91, 2, 0x91, 42]), beyond


def _register_fd(ttl: int) -> bytes:
    """BVLC Register-Foreign-Device."""
    return struct.pack(">BBHH", 0x81, 0x05, 6, ttl)


def _health(gp) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{gp.ports['http']}/health", timeout=5) as r:
        return json.loads(r.read())


def test_foreign_device_registration_state_in_log_health_and_metrics(tmp_path):
    """Issue 14.8: a BBMD that does not answer, then answers: each change logged once, in /health and a metric."""
    bbmd = RawPeer(0)  # a BBMD written from annex J: silent at first
    bbmd_port = bbmd.sock.getsockname()[1]
    try:
        with gateway_processes(tmp_path) as make:
            gp = make(extra=f", foreign_bbmd: '127.0.0.1:{bbmd_port}', foreign_ttl: 60")
            first = bbmd.recv(10)
            assert first is not None and first[:6] == _register_fd(60), first
            assert gp.wait_for("no answer for 6 s", 15), gp.log.read_text()
            assert _health(gp)["bacnet_foreign_device"] == "no-answer"
            assert _health(gp)["status"] == "degraded"
            assert 'meter_gateway_bacnet_foreign_registered{state="no-answer"} 0.0' in gp.metrics(5)
            while (f := bbmd.recv(10)) is not None and f[:2] != b"\x81\x05":
                pass  # skip anything else (the start-up I-Am goes to the BBMD as Distribute-Broadcast-To-Network)
            assert f is not None, "the registration is not repeated"
            bbmd.sock.sendto(struct.pack(">BBHH", 0x81, 0x00, 6, 0), ("127.0.0.1", gp.ports["bacnet"]))  # Result: ok
            assert gp.wait_for("registered as a foreign device with BBMD", 10), gp.log.read_text()
            assert _health(gp) == {**_health(gp), "bacnet_foreign_device": "registered", "status": "ok"}
            assert 'meter_gateway_bacnet_foreign_registered{state="registered"} 1.0' in gp.metrics(5)
            text = gp.log.read_text()
    finally:
        bbmd.close()
    assert text.count("no answer for") == 1 and text.count("registered as a foreign device") == 1


def test_bbmd_keeps_foreign_devices_30_s_beyond_their_ttl_and_shows_its_table(bbmd_gateway):
    gp = bbmd_gateway
    fd = RawPeer(gp.ports["bacnet"])
    try:
        fd.send(_register_fd(60))
        assert fd.recv(3) == struct.pack(">BBHH", 0x81, 0x00, 6, 0)  # Result: successful completion
        fd.send(struct.pack(">BBH", 0x81, 0x06, 4))  # Read-Foreign-Device-Table
        ack = fd.recv(3)
        me = socket.inet_aton("127.0.0.1") + struct.pack(">H", fd.sock.getsockname()[1])
        assert ack is not None and ack[:4] == struct.pack(">BBH", 0x81, 0x07, 14), ack
        ttl, remaining = struct.unpack(">HH", ack[10:14])
        assert ack[4:10] == me and ttl == 60 and 88 <= remaining <= 90  # TTL + 30 s grace (J.5.2.3)
        time.sleep(1.5)  # the Network Port object copies the table once a second
        a = fd.ask(read_property(4, 56, 1, 415), invoke=4)  # network-port,1 bbmd-foreign-device-table
    finally:
        fd.close()
    assert a is not None and a[0] >> 4 == 3, a
    at = a.index(b"\x0d\x06" + me)  # context tag 0, 6 octets: the foreign device's B/IP address
    assert a[at + 8 : at + 10] == b"\x19\x3c"  # context tag 1: time-to-live 60
    assert a[at + 10] == 0x29 and 85 <= a[at + 11] <= 90  # context tag 2: remaining time, grace included


WHO_IS = b"\x01\x20\xff\xff\x00\xff" + b"\x10\x08"  # global Who-Is


def _i_am_heard(peer: RawPeer) -> bool:
    return any(apdu_of(f)[:3] == b"\x10\x00\xc4" for f in peer.drain(1.0) if f[:1] == b"\x81")


def test_bbmd_distributes_broadcasts_of_registered_foreign_devices_only(bbmd_gateway):
    """Annex J.4.5: Distribute-Broadcast-To-Network from a host that is not registered is refused (NAK 0x0060)."""
    dbtn = struct.pack(">BBH", 0x81, 0x09, 4 + len(WHO_IS)) + WHO_IS
    fd = RawPeer(bbmd_gateway.ports["bacnet"])
    try:
        fd.send(dbtn)
        assert fd.recv(3) == struct.pack(">BBHH", 0x81, 0x00, 6, 0x0060)
        assert not _i_am_heard(fd)
        fd.send(_register_fd(60))
        assert fd.recv(3) == struct.pack(">BBHH", 0x81, 0x00, 6, 0)
        fd.send(dbtn)
        assert _i_am_heard(fd)
    finally:
        fd.close()
    assert bbmd_gateway.log.read_text().count("not a registered foreign device") == 1


def test_bbmd_foreign_device_table_is_bounded(tmp_path):
    with gateway_processes(tmp_path) as make:
        gp = make(extra=", bbmd: true, bbmd_max_foreign_devices: 2")
        peers = [RawPeer(gp.ports["bacnet"]) for _ in range(4)]
        try:
            results = []
            for p in peers:
                p.send(_register_fd(60))
                results.append(p.recv(3))
            peers[0].send(_register_fd(60))  # a renewal still fits
            results.append(peers[0].recv(3))
        finally:
            for p in peers:
                p.close()
        text = gp.log.read_text()
    ok, nak = struct.pack(">BBHH", 0x81, 0x00, 6, 0), struct.pack(">BBHH", 0x81, 0x00, 6, 0x0030)
    assert results == [ok, ok, nak, nak, ok]
    assert text.count("foreign-device table full") == 1


def test_bbmd_table_read_by_bacnet_stack(bbmd_gateway):
    """The same table through an independent implementation: bacnet-stack's bacrfdt."""
    bacrfdt = bacnet_stack_tool("bacrfdt")
    if bacrfdt is None:
        pytest.skip("bacnet-stack tools not found at ../shared/tools/bacnet-stack/bin (or $BACNET_STACK_BIN)")
    fd = RawPeer(bbmd_gateway.ports["bacnet"])
    me = fd.sock.getsockname()[1]
    try:
        fd.send(_register_fd(120))
        assert fd.recv(3) == struct.pack(">BBHH", 0x81, 0x00, 6, 0)
        env = {**os.environ, "BACNET_IFACE": "lo", "BACNET_IP_PORT": str(free_port(socket.SOCK_DGRAM))}
        out = subprocess.run(
            [str(bacrfdt), "127.0.0.1", str(bbmd_gateway.ports["bacnet"])],
            capture_output=True, text=True, timeout=20, env=env,
        ).stdout  # fmt: skip
    finally:
        fd.close()
    assert re.search(rf"FDT-001: 127\.0\.0\.1:{me} 120s 1(4[89]|50)s", out), out


@pytest.fixture
def bbmd_gateway(tmp_path):
    """A gateway that is a BBMD (no BDT peers): foreign devices may register with it."""
    with gateway_processes(tmp_path) as make:
        yield make(extra=", bbmd: true")
