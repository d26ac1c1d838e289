"""A hostile network against a real gateway process (issue 21): idle connection floods on Modbus TCP and HTTP, a
corpus of malformed Modbus frames (answered per the protocol, logged once per client and kind, never a traceback),
every write attempt in the audit log with its count, and the audit file's mode. Idle time-outs and pipelined requests
are checked on an in-process gateway (short idle_timeout)."""

from __future__ import annotations

import json
import socket
import stat
import struct
import time
import urllib.request
from pathlib import Path

import pytest
from pymodbus.client import ModbusTcpClient

from helpers import GatewayRun, free_port, wait_for

CONFIG = """
gateway: {{name: hostile, log_level: info, state_dir: .}}
buses: [{{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.3}}]
meters:
  - {{id: a, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000, modbus_unit: 1,
     allow_config_writes: true}}
upstream:
  bacnet: {{enabled: false}}
  modbus_tcp: {{enabled: true, bind: 127.0.0.1, port: {mb}}}
  prometheus: {{enabled: true, bind: 127.0.0.1, port: {http}}}
writes: {{enabled: true, allow_modbus: [127.0.0.0/8], audit_log: audit.jsonl}}
"""


class GatewayProcess(GatewayRun):
    """`meter-gateway run` in a child process, its log in a file; stopped by SIGTERM (killed after 20 s)."""

    def __init__(self, tmp: Path) -> None:
        self.mb, self.http = free_port(), free_port()
        self.dir = tmp
        (tmp / "gateway.yaml").write_text(CONFIG.format(mb=self.mb, http=self.http))
        super().__init__(tmp / "gateway.yaml", tmp / "log.txt")

    def wait_for(self, text: str, timeout: float = 30.0) -> bool:
        """Wait until `text` is in the log (30 s by default: this gateway starts under a connection flood)."""
        return super().wait_for(text, timeout)

    def health(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/health", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, {}

    def read(self, source: str = "127.0.0.1") -> list[int]:
        """A fresh client (from `source`) reads Voltage_L1_N."""
        c = ModbusTcpClient("127.0.0.1", port=self.mb, timeout=5, retries=0, source_address=(source, 0))
        assert c.connect(), f"a new client from {source} cannot connect"
        try:
            r = c.read_holding_registers(20, count=2, device_id=1)
            assert not r.isError(), r
            return r.registers
        finally:
            c.close()

    def audit(self) -> list[dict]:
        path = self.dir / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    proc = GatewayProcess(tmp_path_factory.mktemp("hostile"))
    try:
        assert proc.wait_for("meter a: communication established"), proc.log.read_text()
        yield proc
    finally:
        proc.stop()
    text = proc.log.read_text()
    assert "Traceback" not in text, text


def _connect(port: int, source: str) -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s


def _open(s: socket.socket) -> bool:
    """True while the gateway has not closed the connection."""
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionError:
        return False
    finally:
        s.setblocking(True)


def test_idle_connection_floods_lock_nobody_out(gateway):
    """200 idle Modbus TCP connections (60 from one address, 140 from 140 others) and 100 idle HTTP connections:
    a new Modbus client from the flooding address and from a fresh one is answered; /health and /metrics too."""
    held: list[socket.socket] = []
    try:
        for i in range(140):
            if i < 60:
                held.append(_connect(gateway.mb, "127.0.0.1"))
            held.append(_connect(gateway.mb, f"127.0.1.{i + 1}"))
        modbus = list(held)
        for _ in range(100):
            held.append(_connect(gateway.http, "127.0.0.1"))
        time.sleep(0.5)
        # the limits hold: at most 16 from 127.0.0.1 and 128 in all are still open
        still_open = [s for s in modbus if _open(s)]
        assert len(still_open) <= 128 and sum(s.getsockname()[0] == "127.0.0.1" for s in still_open) <= 16
        assert len(gateway.read("127.0.0.1")) == 2
        assert len(gateway.read("127.0.2.1")) == 2
        code, doc = gateway.health()
        assert code == 200 and doc["status"] == "ok", doc
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway.http}/metrics", timeout=5) as r:
            assert r.status == 200 and b"meter_gateway_" in r.read()
    finally:
        for s in held:
            s.close()
    text = gateway.log.read_text()
    # the limits were hit and said so, once per address and server
    assert text.count("Modbus TCP client 127.0.0.1: more than 16 connections from 127.0.0.1") == 1, text
    assert text.count("prometheus: more than 16 connections from 127.0.0.1") == 1, text
    assert text.count("more than 128 connections") == 1, text  # 140 flooding addresses: one line, not 12


def test_audit_file_is_not_world_readable(gateway):
    mode = stat.S_IMODE((gateway.dir / "audit.jsonl").stat().st_mode)
    assert mode & 0o007 == 0 and mode & 0o600 == 0o600, oct(mode)


def mbap(pdu: bytes, unit: int = 1, tid: int = 0x0203) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


NAN_TO_HR1011 = bytes.fromhex("00030000000b011003f20002047fc00000")  # the frame of issue 21
#: (frame, expected exception code, audited as a write attempt)
CORPUS: list[tuple[bytes, int, bool]] = [
    (NAN_TO_HR1011, 0x03, True),
    (mbap(bytes.fromhex("1003f20002047f800000")), 0x03, True),  # +Inf
    (mbap(bytes.fromhex("1003f2000204ff800000")), 0x03, True),  # -Inf
    (mbap(bytes.fromhex("1003f60002044f000000")), 0x03, True),  # 2.1e9 % overload threshold: out of range
    (mbap(bytes([0x81])), 0x01, False),  # function codes >= 0x80
    (mbap(bytes([0xFF, 0, 0, 0, 1])), 0x01, False),
    (mbap(bytes([0x2B, 0x0E, 0x01, 0x00])), 0x01, False),  # read device identification: not offered
    (mbap(bytes([0x41, 1, 2, 3])), 0x01, False),  # unassigned function code
    (mbap(bytes.fromhex("08000a0000")), 0x01, False),  # FC 8, sub-function 10 (clear counters): not offered
    (mbap(bytes.fromhex("0800990000")), 0x01, False),  # FC 8, unknown sub-function
    (mbap(bytes.fromhex("08")), 0x03, False),  # FC 8 without sub-function
    (mbap(bytes.fromhex("0300140000")), 0x03, False),  # read of 0 registers
    (mbap(bytes.fromhex("0300140080")), 0x03, False),  # read of 128 registers
    (mbap(bytes.fromhex("03001400")), 0x03, False),  # truncated read
    (mbap(bytes.fromhex("0503f21234")), 0x03, True),  # coil value neither 0 nor 0xFF00
    (mbap(bytes.fromhex("1003f20002031234")), 0x03, True),  # byte count does not match
    (mbap(bytes.fromhex("1003f2007cf6" + "00" * 246)), 0x03, True),  # 124 registers
    (mbap(bytes.fromhex("0f00000003")), 0x03, True),  # FC 15 without byte count
    (mbap(bytes.fromhex("1603f2ffff0000")), 0x01, True),  # FC 22 mask write
    (mbap(bytes.fromhex("1703f2000203f200020400010002")), 0x01, True),  # FC 23 read/write
    (mbap(bytes.fromhex("060005aaaa")), 0x02, True),  # write to a read-only / misaligned register
    (mbap(bytes.fromhex("0607d00001")), 0x02, True),  # write to an unmapped register
    (mbap(bytes.fromhex("0603f10001")), 0x02, True),  # half of a float32 point
    (mbap(bytes.fromhex("0603f20001"), unit=9), 0x0A, True),  # unknown unit
    (mbap(bytes.fromhex("050005ff00")), 0x02, True),  # unmapped coil
]


def _exchange(port: int, frame: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(frame)
        got = b""
        while len(got) < 9:
            chunk = s.recv(64)
            if not chunk:
                break
            got += chunk
        return got


def test_malformed_frames_answered_per_protocol_logged_once_per_kind_and_audited(gateway):
    before = gateway.log.read_text()
    audit_before = sum(r.get("count", 1) for r in gateway.audit())
    rounds = 3
    for _ in range(rounds):
        for frame, code, _audited in CORPUS:
            reply = _exchange(gateway.mb, frame)
            assert len(reply) == 9, (frame.hex(), reply.hex())
            assert reply[:2] == frame[:2] and reply[7] == (frame[7] | 0x80) and reply[8] == code, (
                frame.hex(),
                reply.hex(),
            )
    # a header that cannot be resynchronised closes the connection, answered by nothing
    for bad in (b"\x00\x01\x00\x07\x00\x06\x01\x03\x00\x14\x00\x02", b"\x00\x01\x00\x00\xff\xff\x01\x03"):
        with socket.create_connection(("127.0.0.1", gateway.mb), timeout=5) as s:
            s.sendall(bad)
            assert s.recv(64) == b""
    assert len(gateway.read()) == 2  # still serving
    time.sleep(0.3)
    new = gateway.log.read_text()[len(before) :]
    lines = new.splitlines()
    assert "Traceback" not in new
    server_lines = [ln for ln in lines if "meter_gateway.servers.modbus_tcp" in ln]
    kinds = ("not supported", "quantity", "byte count", "too short", "length", "protocol id", "sub-function")
    assert len(server_lines) <= 3, server_lines  # unsupported function, malformed request, bad MBAP header
    assert all(any(k in ln for k in kinds) for ln in server_lines), server_lines
    write_lines = [ln for ln in lines if "meter_gateway.writes" in ln]
    audited = sum(1 for _f, _c, a in CORPUS if a)
    assert len(write_lines) <= audited, write_lines  # the rounds after the first add no line
    loud = [ln for ln in lines if " WARNING " in ln or " ERROR " in ln]
    assert len(loud) == len(server_lines) + len(write_lines), loud
    # every write attempt of every round is in the audit log (repeats coalesced into records with a count, written
    # when their window closes or at the latest when the gateway stops)
    gateway.stop()
    records = gateway.audit()
    total = sum(r.get("count", 1) for r in records) - audit_before
    assert total == rounds * audited, (total, rounds * audited, records[-10:])
    nan = [r for r in records if r["point"] == "Modbus_Baudrate" and r["value"] == "nan"]
    assert nan and nan[0]["decision"] == "out-of-range" and nan[0]["source"] == "127.0.0.1"
    assert sum(r.get("count", 1) for r in nan) == rounds
    assert any(r["meter"] == "unit 9" for r in records)
    assert any(r["point"].startswith("FC 22") for r in records) and any(r["point"].startswith("FC 23") for r in records)


IDLE_YAML = """
gateway: {name: idle}
buses: [{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.3}]
meters:
  - {id: a, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000, modbus_unit: 1}
upstream:
  bacnet: {enabled: false}
  modbus_tcp: {enabled: true, bind: 127.0.0.1, port: 0, idle_timeout: 1}
  prometheus: {enabled: true, bind: 127.0.0.1, port: 0, idle_timeout: 1}
"""


async def test_idle_and_dribbling_connections_are_closed_active_ones_kept(gateways):
    import asyncio

    gw = await gateways(IDLE_YAML)
    assert await wait_for(lambda: gw.table.is_online("a"), 15)
    mb = next(s for s in gw.servers if s.name == "modbus_tcp").address()
    http = next(s for s in gw.servers if s.name == "prometheus").address()
    idle = await asyncio.open_connection(*mb)
    dribble = await asyncio.open_connection(*mb)
    half = await asyncio.open_connection(*http)
    half[1].write(b"GET /health HTTP/1.1\r\n")  # never finishes its request
    active = await asyncio.open_connection(*mb)
    request = bytes.fromhex("000100000006010300140002")
    frame = bytes.fromhex("00020000000601030014")  # a request that never completes
    loop = asyncio.get_running_loop()
    end = loop.time() + 3.0  # three idle time-outs
    i = 0
    while loop.time() < end:
        active[1].write(request)
        head = await asyncio.wait_for(active[0].readexactly(9), 5)
        assert head[7] == 3, head.hex()
        await active[0].readexactly(head[8])
        if i < len(frame) and not dribble[1].is_closing():
            dribble[1].write(frame[i : i + 1])  # one byte now and then keeps no connection open
            i += 1
        await asyncio.sleep(0.25)
    for reader, writer in (idle, dribble):
        try:
            async with asyncio.timeout(5):
                assert await reader.read(64) == b""  # closed by the gateway
        except ConnectionError:
            pass  # closed by the gateway while the dribbler was still writing
        writer.close()
    async with asyncio.timeout(5):
        assert (await half[0].read(64)).startswith(b"HTTP/1.1 408")
    half[1].close()
    active[1].write(request)  # the active client was never disturbed
    assert (await asyncio.wait_for(active[0].readexactly(9), 5))[7] == 3
    active[1].close()


async def test_pipelined_requests_in_one_segment_are_each_answered(gateways):
    """Requests sent back to back (one TCP segment), served or refused, each get their own answer."""
    import asyncio

    gw = await gateways(IDLE_YAML)
    assert await wait_for(lambda: gw.table.is_online("a"), 15)
    reader, writer = await asyncio.open_connection(*next(s for s in gw.servers if s.name == "modbus_tcp").address())
    pdus = [bytes.fromhex(h) for h in ("0300140002", "4100140002", "0300140002", "0800001234", "0400000002", "81")]
    writer.write(b"".join(mbap(p, tid=i) for i, p in enumerate(pdus, start=1)))
    answers = {}
    async with asyncio.timeout(10):
        while len(answers) < len(pdus):
            head = await reader.readexactly(7)
            body = await reader.readexactly(int.from_bytes(head[4:6], "big") - 1)
            answers[int.from_bytes(head[:2], "big")] = body
    writer.close()
    assert answers[1][:2] == b"\x03\x04" and answers[3] == answers[1]
    assert answers[2] == b"\xc1\x01" and answers[6] == b"\x81\x01"
    assert answers[4] == bytes.fromhex("0800001234") and answers[5][:2] == b"\x04\x04"
