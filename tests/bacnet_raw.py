"""BACnet/IP frames written by hand from ASHRAE 135 (annex J, clauses 6, 20, 21): an independent client for the
network tests, and a gateway process to point it at; importable as `bacnet_raw` (tests/ is on the python path)."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from helpers import GatewayRun, free_port

ORIGINAL_UNICAST = 0x0A
ORIGINAL_BROADCAST = 0x0B
FORWARDED_NPDU = 0x04


def bacnet_stack_tool(name: str) -> Path | None:
    """A bacnet-stack tool from ../shared/tools/bacnet-stack/bin beside the project root (or $BACNET_STACK_BIN)."""
    root = Path(__file__).resolve().parents[1]
    folder = Path(os.environ.get("BACNET_STACK_BIN") or root.parent / "shared" / "tools" / "bacnet-stack" / "bin")
    tool = folder / name
    return tool if tool.is_file() and os.access(tool, os.X_OK) else None


def bvlc(npdu_apdu: bytes, function: int = ORIGINAL_UNICAST, origin: tuple[str, int] | None = None) -> bytes:
    """A BVLC frame; Forwarded-NPDU carries the original source address."""
    extra = b""
    if function == FORWARDED_NPDU:
        assert origin is not None
        extra = socket.inet_aton(origin[0]) + struct.pack(">H", origin[1])
    return struct.pack(">BBH", 0x81, function, 4 + len(extra) + len(npdu_apdu)) + extra + npdu_apdu


def _ctx_unsigned(tag: int, value: int) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    return bytes([(tag << 4) | 0x08 | len(raw)]) + raw


def _ctx_oid(tag: int, obj_type: int, instance: int) -> bytes:
    return bytes([(tag << 4) | 0x08 | 4]) + struct.pack(">I", (obj_type << 22) | instance)


def confirmed(invoke: int, service: int, body: bytes, max_apdu: int = 5, max_segs: int = 7) -> bytes:
    """NPDU (expecting reply) + confirmed request APDU, segmented answer accepted, max-APDU code `max_apdu`,
    max-segments code `max_segs` (7: more than 64)."""
    return b"\x01\x04" + bytes([0x02, (max_segs << 4) | max_apdu, invoke & 0xFF, service]) + body


def read_property(invoke: int, obj_type: int, instance: int, prop: int, index: int | None = None, **kw) -> bytes:
    """ReadProperty request (NPDU + APDU)."""
    body = _ctx_oid(0, obj_type, instance) + _ctx_unsigned(1, prop)
    if index is not None:
        body += _ctx_unsigned(2, index)
    return confirmed(invoke, 12, body, **kw)


def subscribe_cov(invoke: int, proc_id: int, obj_type: int, instance: int, confirmed_notif: bool, lifetime: int):
    """SubscribeCOV request (NPDU + APDU)."""
    body = (
        _ctx_unsigned(0, proc_id)
        + _ctx_oid(1, obj_type, instance)
        + bytes([0x29, 1 if confirmed_notif else 0])
        + _ctx_unsigned(3, lifetime)
    )
    return confirmed(invoke, 5, body)


def object_ids(data: bytes) -> list[tuple[int, int]]:
    """The application-tagged object identifiers of a ReadProperty-ACK's value (object-list)."""
    assert data[0] == 0x0C and data[5] == 0x19, data.hex()  # object identifier, one-octet property identifier
    i = 7
    if data[i] & 0xF8 == 0x28:  # context tag 2: property array index
        i += 1 + (data[i] & 0x07)
    assert data[i] == 0x3E, data.hex()
    i += 1
    out = []
    while data[i] == 0xC4:
        (oid,) = struct.unpack_from(">I", data, i + 1)
        out.append((oid >> 22, oid & 0x3FFFFF))
        i += 5
    assert data[i] == 0x3F, data[i:].hex()
    return out


def apdu_of(frame: bytes) -> bytes:
    """The APDU of a BVLC/NPDU frame without network-layer addresses (as the gateway sends them)."""
    off = 4 + (6 if frame[1] == FORWARDED_NPDU else 0)
    control = frame[off + 1]
    off += 2
    if control & 0x20:  # DNET
        off += 3 + frame[off + 2] + 1
    if control & 0x08:  # SNET
        off += 3 + frame[off + 2]
    return frame[off:]


class RawPeer:
    """One UDP socket on 127.0.0.1 talking to the device; never answers anything it receives."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))

    def send(self, frame: bytes) -> None:
        """Send one datagram to the device."""
        self.sock.sendto(frame, self.target)

    def recv(self, timeout: float = 2.0) -> bytes | None:
        """The next datagram, or None after `timeout` s."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recvfrom(4096)[0]
        except (TimeoutError, BlockingIOError):
            return None

    def drain(self, quiet: float = 0.2) -> list[bytes]:
        """Every datagram that arrives until the socket has been quiet for `quiet` s."""
        got = []
        while (f := self.recv(quiet)) is not None:
            got.append(f)
        return got

    def ask(self, npdu_apdu: bytes, timeout: float = 2.0, invoke: int | None = None) -> bytes | None:
        """Send a confirmed request; the APDU of the answer with the same invoke ID (other traffic skipped)."""
        self.send(bvlc(npdu_apdu))
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            f = self.recv(left)
            if f is None:
                return None
            a = apdu_of(f)
            if a and a[0] >> 4 in (2, 3, 5, 6, 7) and (invoke is None or a[1] == invoke):
                return a
        return None

    def read_segmented(self, npdu_apdu: bytes, invoke: int, timeout: float = 3.0) -> tuple[list[bytes], bytes]:
        """A confirmed request whose Complex-ACK may come in segments (each acknowledged, window 1): the APDUs
        received and the reassembled service data (after invoke ID and service choice)."""
        self.send(bvlc(npdu_apdu))
        apdus: list[bytes] = []
        data = b""
        while (f := self.recv(timeout)) is not None:
            a = apdu_of(f)
            if a[0] >> 4 not in (3, 5, 6, 7) or a[1] != invoke:
                continue
            apdus.append(a)
            if a[0] >> 4 != 3:
                break
            if not a[0] & 0x08:  # unsegmented
                data = a[3:]
                break
            data += a[5:]
            self.send(bvlc(b"\x01\x00" + bytes([0x40, invoke, a[2], 1])))  # Segment-ACK
            if not a[0] & 0x04:  # no more follows
                break
        return apdus, data

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


METER = (
    "  - {{id: {id}, bus: rtu, address: {n}, profile: generic, bacnet_instance_base: {base}, modbus_unit: {n},"
    " poll_intervals: {{power: 0.5, voltage: 0.5, energy: 0.5, alarm: 0.5, status: 0.5, config: 5}}}}"
)


def _meters(n: int) -> str:
    """Meter 'a' (instances 1000..) then 'm2', 'm3'... on one simulated RTU bus."""
    return "\n".join(
        METER.format(id="a" if i == 1 else f"m{i}", n=i, base=1000 + 100 * (i - 1)) for i in range(1, n + 1)
    )


CONFIG = """
gateway: {{name: hostile, log_level: info}}
buses:
  - {{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.3}}
meters:
{meters}
upstream:
  bacnet: {{enabled: true, bind: {bind}, port: {bacnet}, device_instance: 599, cov: {cov}{extra}}}
  modbus_tcp: {{enabled: true, bind: 127.0.0.1, port: {modbus}}}
  prometheus: {{enabled: true, bind: 127.0.0.1, port: {http}}}
writes: {{enabled: true, allow_bacnet: [10.0.0.5/32, 127.0.0.2/32], audit_log: {audit}}}
"""


class GatewayProcess(GatewayRun):
    """`meter-gateway run` in its own process, output in a file; stopped by SIGTERM (killed after 20 s)."""

    def __init__(
        self,
        tmp: Path,
        cov: str = "{}",
        extra: str = "",
        meters: int = 1,
        bind: str = "127.0.0.1",
        netns: str = "",
        bacnet_port: int = 0,
    ) -> None:
        self.ports = {"bacnet": bacnet_port or free_port(socket.SOCK_DGRAM), "modbus": free_port(), "http": free_port()}
        tmp.mkdir(exist_ok=True)
        cfg = tmp / "gateway.yaml"
        self.audit = tmp / "audit.jsonl"
        cfg.write_text(
            CONFIG.format(cov=cov, extra=extra, audit=self.audit, meters=_meters(meters), bind=bind, **self.ports)
        )
        super().__init__(cfg, tmp / "gateway.log", prefix=["ip", "netns", "exec", netns] if netns else [])

    def metrics(self, timeout: float) -> str:
        url = f"http://127.0.0.1:{self.ports['http']}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode()


@contextlib.contextmanager
def gateway_processes(tmp: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """A starter of gateway processes (waits for meter 'a' online); every one is stopped on exit."""
    procs: list[GatewayProcess] = []

    def make(cov: str = "{}", extra: str = "", meters: int = 1, **kw) -> GatewayProcess:
        gp = GatewayProcess(tmp / str(len(procs)), cov, extra, meters, **kw)
        procs.append(gp)
        assert gp.wait_for("meter a: communication established"), gp.log.read_text()
        return gp

    try:
        yield make
    finally:
        for gp in procs:
            gp.stop()
