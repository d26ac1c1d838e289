"""Hostile BACnet peers against a real gateway process (issue 21): a COV subscriber that never acknowledges, COV
subscription limits. Raw UDP from a client written from ASHRAE 135 (tests/bacnet_raw.py), not bacpypes3."""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import time

import pytest
from pymodbus.client import AsyncModbusTcpClient

from bacnet_raw import GatewayProcess, RawPeer, apdu_of, bvlc, gateway_processes, read_property, subscribe_cov
from helpers import audit_attempts

AI, DEVICE = 0, 8


@pytest.fixture
def gateway_process(tmp_path):
    """Starts gateway processes (bacnet_raw.GatewayProcess); all stop at the end."""
    with gateway_processes(tmp_path) as make:
        yield make


def _voltage_age(metrics: str) -> float:
    m = re.search(r'meter_gateway_point_age_seconds\{meter="a",point="Voltage_L1_N"\} (\S+)', metrics)
    assert m, metrics[:2000]
    return float(m.group(1))


async def _modbus_read(port: int) -> list[int]:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
    try:
        assert await client.connect()
        rr = await client.read_input_registers(0, count=2, device_id=1)
        assert not rr.isError(), rr
        return rr.registers
    finally:
        client.close()


def _is_subscribe_ack(frame: bytes) -> bool:
    """Whether a datagram is a SimpleACK of SubscribeCOV."""
    a = apdu_of(frame)
    return len(a) >= 3 and a[0] >> 4 == 2 and a[2] == 5


def _drain_acks(peer: RawPeer, quiet: float, bound: float) -> int:
    """Read everything until no SubscribeCOV ack came for `quiet` s (at most `bound` s); the acks read."""
    acks, end = 0, time.monotonic() + bound
    last = time.monotonic()
    while time.monotonic() < end and time.monotonic() - last < quiet:
        f = peer.recv(0.1)
        if f is not None and _is_subscribe_ack(f):
            acks += 1
            last = time.monotonic()
    return acks


def test_cov_subscriber_that_never_acknowledges_hangs_nothing(gateway_process):
    """Issue 21.1: 1,000 confirmed SubscribeCOV from one socket that never acknowledges a notification."""
    gp = gateway_process("{max_subscriptions: 2000, max_subscriptions_per_client: 1000}")
    port = gp.ports["bacnet"]
    hostile = RawPeer(port)
    try:
        acks = 0
        for i in range(1000):  # 1000 distinct (process id, object) pairs: every one a new subscription
            hostile.send(bvlc(subscribe_cov(i, 1 + i, AI, 1000 + 10 + i % 20, True, 0)))
            if i % 50 == 49:  # read the acks (never acknowledging a notification) so the socket never fills
                acks += sum(_is_subscribe_ack(f) for f in hostile.drain(0.02))
        # the burst is handled once no more SubscribeCOV acks come (notifications to the silent peer go on); a
        # loaded machine takes seconds for it, and the answers below are bounded from then on
        acks += _drain_acks(hostile, quiet=2.0, bound=60.0)
        assert acks > 0
        probe = RawPeer(port)
        try:
            for round_ in range(5):  # over several seconds, while notifications to the silent peer time out
                t0 = time.monotonic()
                a = probe.ask(read_property(round_, DEVICE, 599, 77), timeout=1.0, invoke=round_)
                assert a is not None and a[0] >> 4 == 3, f"BACnet did not answer within 1 s (round {round_})"
                regs = asyncio.run(asyncio.wait_for(_modbus_read(gp.ports["modbus"]), 1.0))
                assert len(regs) == 2
                text = gp.metrics(timeout=1.0)
                assert time.monotonic() - t0 < 3.0  # three answers, each within its own 1 s bound
                assert _voltage_age(text) < 2.5, "polling lost its period (voltage polled every 0.5 s)"
                hostile.drain(0.8)
        finally:
            probe.close()
        # the silent subscriber is dropped once its notifications time out (3 s x 4 tries, 3 in a row)
        assert gp.wait_for("left 3 confirmed notifications in a row unacknowledged", 40), gp.log.read_text()[-3000:]
    finally:
        hostile.close()
    text = gp.log.read_text()
    assert text.count("unacknowledged") == 1 and "Traceback" not in text, text[-3000:]
    assert gp.stop() == 0


def test_cov_subscription_limits_per_client_and_device(gateway_process):
    """Issue 14.7: limits refused with Error resources / no-space-to-add-list-element; renewals still accepted."""
    gp = gateway_process("{max_subscriptions: 5, max_subscriptions_per_client: 3}")
    port = gp.ports["bacnet"]
    one, two = RawPeer(port), RawPeer(port)
    try:

        def subscribe(peer: RawPeer, invoke: int, proc_id: int) -> bytes:
            a = peer.ask(subscribe_cov(invoke, proc_id, AI, 1010, False, 60), invoke=invoke)
            assert a is not None
            return a

        assert [subscribe(one, i, i)[0] >> 4 for i in range(3)] == [2, 2, 2]  # Simple-ACK
        refused = subscribe(one, 3, 3)
        # Error PDU, service SubscribeCOV (5), class resources (enum 3), code no-space-to-add-list-element (19)
        assert refused[0] >> 4 == 5 and refused[2] == 5 and refused[3:] == bytes([0x91, 3, 0x91, 19]), refused.hex()
        assert subscribe(one, 4, 1)[0] >> 4 == 2  # a renewal is not a new subscription
        assert [subscribe(two, 5 + i, i)[0] >> 4 for i in range(3)] == [2, 2, 5]  # device limit 5 reached
    finally:
        one.close()
        two.close()
    assert gp.log.read_text().count("refused: ") == 2  # once per client, not per request


def test_confirmed_notifications_in_flight_are_bounded_and_all_delivered(gateway_process):
    """At most 8 unacknowledged notifications reach a subscriber; acknowledging them lets the waiting ones through."""
    gp = gateway_process()
    peer = RawPeer(gp.ports["bacnet"])
    try:
        for i in range(20):
            peer.send(bvlc(subscribe_cov(i, 100 + i, AI, 1010 + i, True, 120)))
        frames = peer.drain(1.0)
        notes = [a for a in map(apdu_of, frames) if a[0] >> 4 == 0 and a[3] == 1]  # ConfirmedCOVNotification
        in_flight = {a[2] for a in notes}
        assert 1 <= len(in_flight) <= 8, sorted(in_flight)
        seen: set[int] = set()
        end = time.monotonic() + 20
        while len(seen) < 20 and time.monotonic() < end:
            for a in notes:
                proc_id = a[5] if a[4] == 0x09 else None  # context tag 0, one octet: subscriber process id
                seen.add(proc_id)
                peer.send(bvlc(b"\x01\x00" + bytes([0x20, a[2], 1])))  # Simple-ACK
            notes = [a for a in map(apdu_of, peer.drain(0.3)) if a[0] >> 4 == 0 and a[3] == 1]
        assert seen >= set(range(100, 120)), sorted(seen)
    finally:
        peer.close()
    assert "unacknowledged" not in gp.log.read_text()


# issue 21.2: a WriteProperty (Reset_Demand_Peak, BO 2030 there, BO 1030 here, present-value := active) in a
# Forwarded-NPDU claiming to come from 10.0.0.5, which is in writes.allow_bacnet
FORGED = bytes.fromhex("8104001b0a000005bac00104000544 0f0c010007ee19553e91013f".replace(" ", ""))
FORGED = FORGED[:17] + struct.pack(">I", (4 << 22) | 1030) + FORGED[21:]
MALFORMED = {
    "eight zero bytes": bytes(8),
    "BVLC length past the end": bytes.fromhex("810a0040 01040005"),
    "unknown BVLC function": bytes.fromhex("81ee0008 01040005"),
    "NPDU cut short": bytes.fromhex("810a0005 01"),
    "APDU cut short": bytes.fromhex("810a0008 01040005"),
    "confirmed request cut short": bytes.fromhex("810a000b 0104 00050c0c02"),
}


def _audit(gp: GatewayProcess) -> list[dict]:
    return audit_attempts(gp.audit)


def test_forged_forwarded_npdu_is_judged_on_its_real_source_and_bad_datagrams_log_once(gateway_process):
    gp = gateway_process()
    peer = RawPeer(gp.ports["bacnet"])
    try:
        peer.send(FORGED)
        reply = apdu_of(peer.recv(3.0) or b"\x81\x0a\x00\x04")
        # Error, invoke 0x44, WriteProperty: class property (2), code write-access-denied (40)
        assert reply == bytes([0x50, 0x44, 0x0F, 0x91, 2, 0x91, 40]), reply.hex()
        for _ in range(50):  # every kind many times, paced so that the kernel's socket buffers drop nothing
            for frame in MALFORMED.values():
                peer.send(frame)
            peer.drain(0.01)
        a = peer.ask(read_property(9, DEVICE, 599, 77), invoke=9)
        assert a is not None and a[0] >> 4 == 3, gp.log.read_text()[-3000:]  # still serving
    finally:
        peer.close()
    records = _audit(gp)
    assert [(r["source"], r["point"], r["decision"]) for r in records] == [("127.0.0.1", "Reset_Demand_Peak", "denied")]
    assert gp.stop() == 0
    text = gp.log.read_text()
    assert "Traceback" not in text and "unsupported message" not in text, text[-3000:]
    lines = [ln for ln in text.splitlines() if "from 127.0.0.1" in ln and "BACnet" in ln]
    assert len(lines) == len(set(lines)) and 1 <= len(lines) <= len(MALFORMED) + 1, "\n".join(lines)
    assert any("claims 10.0.0.5:47808" in ln for ln in lines)


def test_forwarded_npdu_through_a_trusted_bbmd_keeps_the_original_source(gateway_process):
    bbmd = RawPeer(0)  # its port is known before the gateway starts: it is the trusted BBMD
    try:
        gp = gateway_process(extra=f", trusted_bbmds: ['127.0.0.1:{bbmd.sock.getsockname()[1]}']")
        bbmd.target = ("127.0.0.1", gp.ports["bacnet"])
        forwarded = FORGED[:4] + socket.inet_aton("127.0.0.2") + FORGED[8:]
        bbmd.send(forwarded)
        assert wait_until(lambda: _audit(gp), 5)
    finally:
        bbmd.close()
    assert [(r["source"], r["decision"]) for r in _audit(gp)] == [("127.0.0.2", "accepted")]
    assert "not a trusted BBMD" not in gp.log.read_text()


def wait_until(pred, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


def test_a_burst_of_a_thousand_requests_is_answered_whole(gateway_process):
    """1000 ReadProperty datagrams sent back to back (4 clients x 250 invoke IDs) wait in the socket's receive buffer
    while the device works; with the kernel's default buffer (about 200 KiB) some 700 of them were dropped."""
    gp = gateway_process()
    peers = [RawPeer(gp.ports["bacnet"]) for _ in range(4)]
    for peer in peers:  # room for the 250 answers on the client side too
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    try:
        for invoke in range(250):
            for peer in peers:
                peer.send(bvlc(read_property(invoke, AI, 1000 + 7, 85)))
        answered = [{apdu_of(f)[1] for f in peer.drain(quiet=1.0) if apdu_of(f)[0] >> 4 == 3} for peer in peers]
        assert [len(a) for a in answered] == [250] * 4
    finally:
        for peer in peers:
            peer.close()
