"""BACnet/IP frames written by hand from ASHRAE 135 (annex J, clauses 6, 20, 21): an independent client for the
hostile-network tests, importable as `bacnet_raw` (tests/ is on the pytest python path)."""

from __future__ import annotations

import socket
import struct
import time

ORIGINAL_UNICAST = 0x0A
ORIGINAL_BROADCAST = 0x0B
FORWARDED_NPDU = 0x04


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that is free on 127.0.0.1 right now (TCP by default)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def confirmed(invoke: int, service: int, body: bytes, max_apdu: int = 5) -> bytes:
    """NPDU (expecting reply) + confirmed request APDU, segmented answer accepted, max-APDU code `max_apdu`."""
    return b"\x01\x04" + bytes([0x02, 0x70 | max_apdu, invoke & 0xFF, service]) + body


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

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
