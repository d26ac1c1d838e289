"""Fuzzing the BACnet/IP device with malformed BVLC/NPDU/APDU packets; afterwards it answers a valid
ReadProperty, and unknown services get a Reject."""

from __future__ import annotations

import socket
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import FUZZ_EXAMPLES

SETTINGS = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


def bvlc(npdu_apdu: bytes) -> bytes:
    """Original-Unicast-NPDU."""
    return struct.pack(">BBH", 0x81, 0x0A, 4 + len(npdu_apdu)) + npdu_apdu


def read_property(invoke: int, obj_type: int, instance: int, prop: int) -> bytes:
    """A confirmed ReadProperty request, encoded by hand."""
    oid = (obj_type << 22) | instance
    apdu = bytes([0x00, 0x05, invoke, 0x0C]) + b"\x0c" + struct.pack(">I", oid) + bytes([0x19, prop])
    return bvlc(b"\x01\x04" + apdu)


def ask(port: int, packet: bytes, wait: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(wait)
        s.sendto(packet, ("127.0.0.1", port))
        try:
            return s.recvfrom(2048)[0]
        except TimeoutError:
            return None


packets = st.one_of(
    st.binary(max_size=600),
    st.builds(
        lambda f, ln, body: struct.pack(">BBH", 0x81, f, ln) + body,
        st.integers(0, 255),
        st.integers(0, 0xFFFF),
        st.binary(max_size=300),
    ),
    st.builds(lambda n, a: bvlc(n + a), st.binary(min_size=1, max_size=8), st.binary(max_size=200)),
    st.builds(
        lambda pdu_type, service, tags: bvlc(b"\x01\x04" + bytes([pdu_type, 0x05, 9, service]) + tags),
        st.sampled_from([0x00, 0x02, 0x08, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70]),
        st.integers(0, 255),
        st.binary(max_size=100),
    ),
)


@SETTINGS
@given(packet=packets)
def test_malformed_packets_never_break_the_device(running, packet):
    port = running.server("bacnet").address()[1]
    ask(port, packet, wait=0.02)


def test_device_still_answers_and_rejects_services_it_does_not_offer(running):
    port = running.server("bacnet").address()[1]
    reply = ask(port, read_property(3, 8, 599, 77))  # device object-name
    assert reply is not None and reply[0] == 0x81
    apdu = reply[4 + 2 :]
    assert apdu[0] & 0xF0 == 0x30 and apdu[1] == 3  # Complex-ACK for invoke id 3
    assert b"fuzz" in apdu
    # a well-formed WritePropertyMultiple (analog-value 1047 present-value := 30.0): Reject unrecognized-service
    oid = struct.pack(">I", (2 << 22) | 1047)
    body = b"\x0c" + oid + b"\x1e\x09\x55\x2e\x44" + struct.pack(">f", 30.0) + b"\x2f\x1f"
    reply = ask(port, bvlc(b"\x01\x04" + bytes([0x00, 0x05, 4, 16]) + body))
    assert reply is not None
    apdu = reply[6:]
    assert apdu[0] & 0xF0 == 0x60 and apdu[1] == 4 and apdu[2] == 9, reply.hex()  # Reject, unrecognized-service
    assert running.gw.simulators["a"].writes == []


ANSWERS = {0x20: "simple-ack", 0x30: "complex-ack", 0x50: "error", 0x60: "reject", 0x70: "abort"}


def test_undecodable_confirmed_request_gets_a_reject(running):
    """Found by fuzzing: bacpypes3 dropped a confirmed request it could not decode, so the client only timed out."""
    port = running.server("bacnet").address()[1]
    truncated = bvlc(b"\x01\x04" + bytes([0x00, 0x05, 7, 0x0C]) + b"\x0c\x02\x00")  # object identifier cut short
    reply = ask(port, truncated)
    assert reply is not None, "no answer to a malformed confirmed request"
    apdu = reply[6:]
    assert apdu[0] & 0xF0 == 0x60 and apdu[1] == 7, reply.hex()  # Reject for invoke id 7


@SETTINGS
@given(
    service=st.sampled_from([5, 12, 14, 28]),  # SubscribeCOV, ReadProperty, ReadPropertyMultiple, SubscribeCOVProperty
    invoke=st.integers(0, 255),
    body=st.binary(max_size=60),
)
def test_every_confirmed_request_gets_one_answer(running, service, invoke, body):
    port = running.server("bacnet").address()[1]
    reply = ask(port, bvlc(b"\x01\x04" + bytes([0x00, 0x05, invoke, service]) + body), wait=3.0)
    assert reply is not None, f"no answer to service {service} with {body.hex()}"
    apdu = reply[6:]
    assert apdu[0] & 0xF0 in ANSWERS and apdu[1] == invoke, reply.hex()


def test_segmented_request_is_reassembled_and_an_abandoned_one_blocks_nothing(running):
    port = running.server("bacnet").address()[1]
    body = b"\x0c" + struct.pack(">I", (8 << 22) | 599) + b"\x19\x4d"  # ReadProperty device,599 object-name
    first = bytes([0x0E, 0x75, 9, 0, 4, 12]) + body[:3]  # segmented, more follows, segmented answer accepted
    last = bytes([0x0A, 0x75, 9, 1, 4, 12]) + body[3:]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(3)
        s.sendto(bvlc(b"\x01\x04" + first), ("127.0.0.1", port))
        ack = s.recvfrom(2048)[0][6:]
        assert ack[0] & 0xF0 == 0x40 and ack[1:3] == bytes([9, 0]), ack.hex()  # Segment-ACK of segment 0
        s.sendto(bvlc(b"\x01\x04" + last), ("127.0.0.1", port))
        replies = [s.recvfrom(2048)[0][6:] for _ in range(2)]
    assert replies[0][0] & 0xF0 == 0x40  # Segment-ACK of the last segment
    assert replies[1][0] & 0xF0 == 0x30 and replies[1][1] == 9 and b"fuzz" in replies[1]  # Complex-ACK
    # a client that sends the first segment only and goes away leaves the device answering everybody else
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.sendto(bvlc(b"\x01\x04" + first), ("127.0.0.1", port))
    reply = ask(port, read_property(11, 8, 599, 77))
    assert reply is not None and reply[6] & 0xF0 == 0x30 and reply[7] == 11
