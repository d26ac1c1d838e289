"""Fuzzing the Modbus TCP server with malformed MBAP headers, lengths, function codes, counts, unit ids, truncated
and oversize frames, slow-loris and many connections; afterwards it still answers correctly, without leaks."""

from __future__ import annotations

import socket
import struct
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymodbus.client import ModbusTcpClient

from helpers import FUZZ_EXAMPLES

SETTINGS = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


def exchange(port: int, data: bytes, wait: float = 0.05) -> bytes:
    """Send raw bytes, collect what comes back for a moment, close."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(data)
        s.settimeout(wait)
        got = b""
        try:
            while len(got) < 600:
                chunk = s.recv(600)
                if not chunk:
                    break
                got += chunk
        except (TimeoutError, ConnectionError):
            pass
        return got


def valid_read(port: int, unit: int = 1) -> list[int]:
    c = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
    assert c.connect()
    try:
        r = c.read_holding_registers(20, count=2, device_id=unit)
        assert not r.isError(), r
        return r.registers
    finally:
        c.close()


frames = st.one_of(
    st.binary(max_size=300),  # noise
    st.builds(  # MBAP-shaped frames with every field free
        lambda tid, proto, length, unit, pdu: struct.pack(">HHHB", tid, proto, length, unit) + pdu,
        st.integers(0, 0xFFFF),
        st.sampled_from([0, 0, 0, 1, 0xFFFF]),
        st.integers(0, 0xFFFF),
        st.integers(0, 255),
        st.binary(max_size=260),
    ),
    st.builds(  # well-framed requests with random function codes, addresses and counts
        lambda unit, fc, addr, count, extra: (lambda pdu: struct.pack(">HHHB", 1, 0, len(pdu) + 1, unit) + pdu)(
            struct.pack(">BHH", fc, addr, count) + extra
        ),
        st.sampled_from([0, 1, 2, 9, 247, 255]),
        st.integers(0, 255),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        st.binary(max_size=20),
    ),
)


@SETTINGS
@given(data=frames)
def test_malformed_frames_never_break_the_server(running, data):
    port = running.server("modbus_tcp").address()[1]
    reply = exchange(port, data)
    if len(reply) >= 9:  # whatever it answered is a well-formed MBAP frame
        _tid, proto, length, _unit = struct.unpack(">HHHB", reply[:7])
        assert (proto == 0 and length == len(reply) - 6) or len(reply) > length + 6


def test_still_answers_correctly_and_leaks_nothing(running):
    port = running.server("modbus_tcp").address()[1]
    before = valid_read(port)
    tasks_before = running.tasks()
    for i in range(50):
        exchange(port, bytes([i]) * (i + 1))
    time.sleep(0.5)
    assert valid_read(port) is not None and len(before) == 2
    assert running.tasks() <= tasks_before + 2  # no task per dead connection left behind


def test_slow_loris_and_many_connections(running):
    port = running.server("modbus_tcp").address()[1]
    slow = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(20)]
    try:
        for s in slow:
            s.sendall(b"\x00\x01\x00")  # half an MBAP header, then silence
        # a crowd of clients, each from its own address (one address may hold max_connections_per_address: 16)
        crowd = [
            socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(f"127.0.3.{i + 1}", 0))
            for i in range(100)
        ]
        request = struct.pack(">HHHBBHH", 7, 0, 6, 1, 3, 20, 2)
        for s in crowd:
            s.sendall(request)
        answered = 0
        for s in crowd:
            reply = s.recv(64)
            if reply[:2] == b"\x00\x07" and reply[7] == 3:
                answered += 1
            s.close()
        assert answered == len(crowd)
        assert valid_read(port)
    finally:
        for s in slow:
            s.close()
