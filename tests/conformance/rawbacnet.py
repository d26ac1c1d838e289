"""A small BACnet/IP client written from ASHRAE 135 (clauses 20, 21, J): BVLL, NPDU and APDU encoded by hand.

Independent of bacpypes3 on purpose: the conformance suite checks the gateway's bytes with a second reading of the
standard. Only what the suite needs: confirmed requests without segmentation, unconfirmed requests, the answers
(Simple/Complex ACK, Error, Reject, Abort) and COV notifications. Every datagram sent and received is kept
(`self.log`) so a test can write them to a pcap file.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

# BVLC functions (Annex J.2)
BVLC_ORIGINAL_UNICAST = 0x0A
BVLC_ORIGINAL_BROADCAST = 0x0B

# object types and property identifiers used by the suite (clause 21)
OBJECT_TYPE = {
    "analog-input": 0,
    "analog-value": 2,
    "binary-input": 3,
    "binary-output": 4,
    "device": 8,
    "multi-state-value": 19,
    "accumulator": 23,
    "datetime-value": 44,
    "network-port": 56,
}
OBJECT_TYPE_NAME = {v: k for k, v in OBJECT_TYPE.items()}
PROP = {
    "active-cov-subscriptions": 152,
    "current-command-priority": 431,
    "database-revision": 155,
    "local-date": 56,
    "local-time": 57,
    "max-apdu-length-accepted": 62,
    "object-identifier": 75,
    "object-list": 76,
    "object-name": 77,
    "object-type": 79,
    "present-value": 85,
    "priority-array": 87,
    "property-list": 371,
    "protocol-object-types-supported": 96,
    "protocol-services-supported": 97,
    "reliability": 103,
    "relinquish-default": 104,
    "status-flags": 111,
    "utc-offset": 119,
    "daylight-savings-status": 24,
}

# confirmed service choices (clause 21, BACnetConfirmedServiceChoice)
SC_SUBSCRIBE_COV = 5
SC_CONFIRMED_COV_NOTIFICATION = 1
SC_ATOMIC_WRITE_FILE = 7
SC_ADD_LIST_ELEMENT = 8
SC_READ_PROPERTY = 12
SC_WRITE_PROPERTY = 15
SC_WRITE_PROPERTY_MULTIPLE = 16
SC_DEVICE_COMMUNICATION_CONTROL = 17
SC_REINITIALIZE_DEVICE = 20
SC_READ_RANGE = 26
# unconfirmed service choices (BACnetUnconfirmedServiceChoice)
UC_I_AM = 0
UC_I_HAVE = 1
UC_WHO_HAS = 7
UC_UNCONFIRMED_COV_NOTIFICATION = 2
UC_TIME_SYNCHRONIZATION = 6
UC_WHO_IS = 8

# application tag numbers (clause 20.2.1.4)
NULL, BOOLEAN, UNSIGNED, SIGNED, REAL, DOUBLE, OCTETS, CHARS, BITS, ENUMERATED, DATE, TIME, OBJECT_ID = range(13)

ERROR_CLASS = {0: "device", 1: "object", 2: "property", 3: "resources", 4: "security", 5: "services"}
ERROR_CODE = {
    0: "other",
    9: "invalid-data-type",
    31: "unknown-object",
    32: "unknown-property",
    37: "value-out-of-range",
    40: "write-access-denied",
    42: "invalid-array-index",
    50: "property-is-not-an-array",
    80: "parameter-out-of-range",
    5: "dynamic-creation-not-supported",
}
REJECT_REASON = {0: "other", 5: "invalid-tag", 4: "invalid-parameter-data-type", 9: "unrecognized-service"}


# -- encoding (clause 20.2) ----------------------------------------------------------------------------------
def _tag(number: int, length: int, context: bool) -> bytes:
    cls = 0x08 if context else 0x00
    head = b""
    if number <= 14:
        first = (number << 4) | cls
    else:
        first = 0xF0 | cls
        head = bytes([number])
    if length <= 4:
        return bytes([first | length]) + head
    if length <= 253:
        return bytes([first | 5]) + head + bytes([length])
    return bytes([first | 5]) + head + bytes([254]) + struct.pack(">H", length)


def unsigned_bytes(value: int) -> bytes:
    """Minimal big-endian octets of an unsigned value."""
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def app(number: int, data: bytes) -> bytes:
    """An application-tagged value."""
    return _tag(number, len(data), False) + data


def ctx(number: int, data: bytes) -> bytes:
    """A context-tagged value."""
    return _tag(number, len(data), True) + data


def opening(number: int) -> bytes:
    """An opening tag."""
    return bytes([(number << 4) | 0x0E]) if number <= 14 else bytes([0xFE, number])


def closing(number: int) -> bytes:
    """A closing tag."""
    return bytes([(number << 4) | 0x0F]) if number <= 14 else bytes([0xFF, number])


def object_id(obj_type: int, instance: int) -> bytes:
    """A BACnetObjectIdentifier: 10 bits of type, 22 of instance."""
    return struct.pack(">I", (obj_type << 22) | instance)


def a_null() -> bytes:
    """Application NULL."""
    return bytes([0x00])


def a_real(value: float) -> bytes:
    """Application REAL."""
    return app(REAL, struct.pack(">f", value))


def a_unsigned(value: int) -> bytes:
    """Application Unsigned."""
    return app(UNSIGNED, unsigned_bytes(value))


def a_enumerated(value: int) -> bytes:
    """Application Enumerated."""
    return app(ENUMERATED, unsigned_bytes(value))


# -- decoding --------------------------------------------------------------------------------------------------
@dataclass
class Tag:
    """One decoded tag: kind is 'app', 'ctx', 'open' or 'close'."""

    kind: str
    number: int
    data: bytes = b""
    raw: bytes = b""


def decode_tags(buf: bytes) -> list[Tag]:
    """Split encoded data into tags (clause 20.2.1)."""
    out = []
    i = 0
    while i < len(buf):
        start = i
        first = buf[i]
        i += 1
        number = first >> 4
        if number == 0x0F:
            number = buf[i]
            i += 1
        context = bool(first & 0x08)
        lvt = first & 0x07
        if context and lvt == 6:
            out.append(Tag("open", number, raw=buf[start:i]))
            continue
        if context and lvt == 7:
            out.append(Tag("close", number, raw=buf[start:i]))
            continue
        if not context and number == BOOLEAN:
            out.append(Tag("app", number, bytes([lvt]), buf[start:i]))
            continue
        if lvt == 5:
            lvt = buf[i]
            i += 1
            if lvt == 254:
                lvt = struct.unpack(">H", buf[i : i + 2])[0]
                i += 2
            elif lvt == 255:
                lvt = struct.unpack(">I", buf[i : i + 4])[0]
                i += 4
        data = buf[i : i + lvt]
        i += lvt
        out.append(Tag("ctx" if context else "app", number, data, buf[start:i]))
    return out


def app_value(tag: Tag):
    """The Python value of an application tag."""
    n, d = tag.number, tag.data
    if n == NULL:
        return None
    if n == BOOLEAN:
        return bool(d[0])
    if n in (UNSIGNED, ENUMERATED):
        return int.from_bytes(d, "big") if d else 0
    if n == SIGNED:
        return int.from_bytes(d, "big", signed=True)
    if n == REAL:
        return struct.unpack(">f", d)[0]
    if n == DOUBLE:
        return struct.unpack(">d", d)[0]
    if n == CHARS:
        return d[1:].decode("utf-8") if d[:1] == b"\x00" else d[1:]
    if n == BITS:
        unused = d[0]
        bits = []
        for byte in d[1:]:
            bits.extend((byte >> (7 - k)) & 1 for k in range(8))
        return bits[: len(bits) - unused] if unused else bits
    if n == OBJECT_ID:
        v = struct.unpack(">I", d)[0]
        return (v >> 22, v & 0x3FFFFF)
    if n in (DATE, TIME):
        return tuple(d)
    return d


def values(data: bytes) -> list:
    """The application values of an encoded constructed value, nested tags flattened."""
    return [app_value(t) for t in decode_tags(data) if t.kind == "app"]


def _strip_constructed(tags: list[Tag], number: int) -> tuple[bytes, int]:
    """The raw bytes between an opening tag `number` (at index 0) and its matching closing tag, and the index after."""
    depth = 0
    body = b""
    for k, t in enumerate(tags):
        if t.kind == "open" and t.number == number and depth == 0 and k == 0:
            depth = 1
            continue
        if t.kind == "open":
            depth += 1
        elif t.kind == "close":
            depth -= 1
            if depth == 0 and t.number == number:
                return body, k + 1
        body += t.raw
    raise ValueError("unterminated constructed value")


@dataclass
class Answer:
    """The device's answer to a confirmed request."""

    kind: str  # ack, complex, error, reject, abort, timeout
    service: int = -1
    data: bytes = b""
    error: str = ""  # "class: code", reject or abort reason

    @property
    def ok(self) -> bool:
        """A Simple or Complex ACK."""
        return self.kind in ("ack", "complex")


@dataclass
class Notification:
    """A COV notification received (confirmed or not)."""

    confirmed: bool
    process: int
    device: tuple[int, int]
    obj: tuple[int, int]
    time_remaining: int
    values: dict[int, bytes] = field(default_factory=dict)


class RawClient:
    """One UDP socket on 127.0.0.1 talking BACnet/IP to one device."""

    def __init__(self, target: tuple[str, int], timeout: float = 3.0) -> None:
        self.target = target
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.invoke = 0
        self.log: list[tuple[float, tuple[str, int], tuple[str, int], bytes]] = []  # time, src, dst, BVLL datagram
        self.notifications: list[Notification] = []
        self.unconfirmed: list[tuple[int, bytes, tuple[str, int]]] = []
        #: (DNET, DADR) of a device behind the router at `target` (clause 6.2.2); None: the device at `target`
        self.route: tuple[int, bytes] | None = None
        #: (SNET, SADR) of the last NPDU received (None: from the local network)
        self.last_source: tuple[int, bytes] | None = None
        #: every (SNET, SADR) an answer or notification came from
        self.sources: list[tuple[int, bytes] | None] = []

    def npci(self, expecting_reply: bool, route: tuple[int, bytes] | None = None) -> bytes:
        """NPDU header (clause 6.2): version 1, control, and when routed DNET, DLEN, DADR and hop count 255."""
        route = route or self.route
        if route is None:
            return bytes([0x01, 0x04 if expecting_reply else 0x00])
        dnet, dadr = route
        control = 0x20 | (0x04 if expecting_reply else 0)
        return bytes([0x01, control]) + struct.pack(">HB", dnet, len(dadr)) + dadr + b"\xff"

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    # -- transport --------------------------------------------------------------------------------------------
    def send(self, npdu_apdu: bytes, *, broadcast: bool = False, to: tuple[str, int] | None = None) -> None:
        """Wrap in a BVLL header and send."""
        func = BVLC_ORIGINAL_BROADCAST if broadcast else BVLC_ORIGINAL_UNICAST
        dgram = bytes([0x81, func]) + struct.pack(">H", len(npdu_apdu) + 4) + npdu_apdu
        dst = to or self.target
        self.sock.sendto(dgram, dst)
        self.log.append((time.time(), self.address, dst, dgram))

    def _recv(self, until: float) -> tuple[bytes, tuple[str, int]] | None:
        left = until - time.monotonic()
        if left <= 0:
            return None
        self.sock.settimeout(left)
        try:
            dgram, src = self.sock.recvfrom(2048)
        except TimeoutError:
            return None
        self.log.append((time.time(), src, self.address, dgram))
        assert dgram[0] == 0x81, dgram.hex()
        assert struct.unpack(">H", dgram[2:4])[0] == len(dgram), "BVLL length"
        body = dgram[4:]
        if dgram[1] == 0x04:  # Forwarded-NPDU carries the original source
            body = body[6:]
        # NPDU (clause 6.2): version, control, optional DNET/DADR, SNET/SADR, hop count
        assert body[0] == 0x01, "NPDU version"
        control = body[1]
        i = 2
        assert not control & 0x80, "network layer message from a device"
        if control & 0x20:
            dlen = body[i + 2]
            i += 3 + dlen
        self.last_source = None
        if control & 0x08:
            slen = body[i + 2]
            self.last_source = (struct.unpack_from(">H", body, i)[0], bytes(body[i + 3 : i + 3 + slen]))
            i += 3 + slen
        if control & 0x20:
            i += 1
        self.sources.append(self.last_source)
        return body[i:], src

    def _dispatch_unsolicited(self, apdu: bytes, src) -> None:
        pdu_type = apdu[0] >> 4
        if pdu_type == 1:  # unconfirmed request
            if apdu[1] == UC_UNCONFIRMED_COV_NOTIFICATION:
                self.notifications.append(self._notification(apdu[2:], confirmed=False))
            else:
                self.unconfirmed.append((apdu[1], apdu[2:], src))
        elif pdu_type == 0 and apdu[3] == SC_CONFIRMED_COV_NOTIFICATION:  # confirmed COV notification: ACK it
            self.notifications.append(self._notification(apdu[4:], confirmed=True))
            ack = bytes([0x20, apdu[2], SC_CONFIRMED_COV_NOTIFICATION])
            self.send(self.npci(False, self.last_source) + ack, to=src)  # routed back when it came routed

    @staticmethod
    def _notification(params: bytes, confirmed: bool) -> Notification:
        tags = decode_tags(params)
        pid = int.from_bytes(tags[0].data, "big")
        dev = struct.unpack(">I", tags[1].data)[0]
        obj = struct.unpack(">I", tags[2].data)[0]
        remaining = int.from_bytes(tags[3].data, "big")
        vals: dict[int, bytes] = {}
        rest = tags[5:]  # after the opening tag 4
        while rest and not (rest[0].kind == "close" and rest[0].number == 4):
            prop = int.from_bytes(rest[0].data, "big")
            rest = rest[1:]
            if rest[0].kind == "ctx" and rest[0].number == 1:
                rest = rest[1:]
            body, used = _strip_constructed(rest, 2)
            vals[prop] = body
            rest = rest[used:]
            if rest and rest[0].kind == "ctx" and rest[0].number == 3:
                rest = rest[1:]
        return Notification(confirmed, pid, (dev >> 22, dev & 0x3FFFFF), (obj >> 22, obj & 0x3FFFFF), remaining, vals)

    def listen(self, seconds: float) -> None:
        """Collect unsolicited traffic (COV notifications, I-Am) for a while."""
        until = time.monotonic() + seconds
        while (got := self._recv(until)) is not None:
            self._dispatch_unsolicited(*got)

    # -- services ---------------------------------------------------------------------------------------------
    def confirmed(self, service: int, params: bytes, max_apdu_code: int = 5) -> Answer:
        """Send a confirmed request (max APDU 1476 unless told, no segmentation) and wait for its answer."""
        self.invoke = (self.invoke + 1) % 256
        inv = self.invoke
        self.send(self.npci(True) + bytes([0x00, max_apdu_code, inv, service]) + params)
        until = time.monotonic() + self.timeout
        while (got := self._recv(until)) is not None:
            apdu, src = got
            pdu_type = apdu[0] >> 4
            if pdu_type in (0, 1):
                self._dispatch_unsolicited(apdu, src)
                continue
            if apdu[1] != inv:
                continue
            if pdu_type == 2:
                return Answer("ack", apdu[2])
            if pdu_type == 3:
                assert not apdu[0] & 0x08, "segmented ACK to a client that accepts no segments"
                return Answer("complex", apdu[2], apdu[3:])
            if pdu_type == 5:
                tags = decode_tags(apdu[3:])
                cls, code = (app_value(t) for t in tags[:2])
                return Answer("error", apdu[2], error=f"{ERROR_CLASS.get(cls, cls)}: {ERROR_CODE.get(code, code)}")
            if pdu_type == 6:
                return Answer("reject", error=REJECT_REASON.get(apdu[2], str(apdu[2])))
            if pdu_type == 7:
                return Answer("abort", error=str(apdu[2]))
        return Answer("timeout")

    def read(self, obj: tuple[int, int], prop: int, index: int | None = None) -> Answer:
        """ReadProperty; a Complex ACK's data is the raw property value (between the tags 3)."""
        params = ctx(0, object_id(*obj)) + ctx(1, unsigned_bytes(prop))
        if index is not None:
            params += ctx(2, unsigned_bytes(index))
        ans = self.confirmed(SC_READ_PROPERTY, params)
        if ans.kind == "complex":
            tags = decode_tags(ans.data)
            k = next(i for i, t in enumerate(tags) if t.kind == "open" and t.number == 3)
            ans.data, _ = _strip_constructed(tags[k:], 3)
        return ans

    def read_values(self, obj: tuple[int, int], prop: int) -> list:
        """ReadProperty, the application values decoded (asserts success)."""
        ans = self.read(obj, prop)
        assert ans.kind == "complex", (obj, prop, ans)
        return values(ans.data)

    def write(
        self, obj: tuple[int, int], prop: int, value: bytes, priority: int | None = None, index: int | None = None
    ) -> Answer:
        """WriteProperty with an already encoded value."""
        params = ctx(0, object_id(*obj)) + ctx(1, unsigned_bytes(prop))
        if index is not None:
            params += ctx(2, unsigned_bytes(index))
        params += opening(3) + value + closing(3)
        if priority is not None:
            params += ctx(4, unsigned_bytes(priority))
        return self.confirmed(SC_WRITE_PROPERTY, params)

    def subscribe(self, pid: int, obj: tuple[int, int], confirmed: bool | None, lifetime: int | None) -> Answer:
        """SubscribeCOV; confirmed and lifetime None is a cancellation."""
        params = ctx(0, unsigned_bytes(pid)) + ctx(1, object_id(*obj))
        if confirmed is not None:
            params += ctx(2, bytes([int(confirmed)]))
        if lifetime is not None:
            params += ctx(3, unsigned_bytes(lifetime))
        return self.confirmed(SC_SUBSCRIBE_COV, params)

    def who_is(
        self, low: int | None = None, high: int | None = None, *, broadcast: bool = False, to=None, wait: float = 1.0
    ) -> list:
        """Who-Is; the I-Am answers (device instance, max APDU, segmentation, vendor, source) within `wait` s."""
        params = b""
        if low is not None:
            params = ctx(0, unsigned_bytes(low)) + ctx(1, unsigned_bytes(high if high is not None else low))
        self.unconfirmed = []
        self.send(self.npci(False) + bytes([0x10, UC_WHO_IS]) + params, broadcast=broadcast, to=to)
        until = time.monotonic() + wait
        while not any(s == UC_I_AM for s, _, _ in self.unconfirmed) and (got := self._recv(until)) is not None:
            self._dispatch_unsolicited(*got)
        self.listen(0.2)  # a second answer (the same device twice) would show here
        out = []
        for service, body, src in self.unconfirmed:
            if service == UC_I_AM:
                oid, max_apdu, seg, vendor = values(body)
                out.append((oid[1], max_apdu, seg, vendor, src))
        return out

    def who_has(self, *, name: str | None = None, obj: tuple[int, int] | None = None, wait: float = 1.0) -> list:
        """Who-Has by object name or identifier; the I-Have answers as (device, object, name)."""
        params = ctx(3, b"\x00" + name.encode()) if name is not None else ctx(2, object_id(*obj))
        self.unconfirmed = []
        self.send(self.npci(False) + bytes([0x10, UC_WHO_HAS]) + params)
        until = time.monotonic() + wait
        while not any(s == UC_I_HAVE for s, _, _ in self.unconfirmed) and (got := self._recv(until)) is not None:
            self._dispatch_unsolicited(*got)
        return [tuple(values(body)) for service, body, _ in self.unconfirmed if service == UC_I_HAVE]

    def read_segmented(
        self, obj: tuple[int, int], prop: int, max_apdu_code: int, max_segments_code: int, window: int = 4
    ) -> tuple[Answer, list[int]]:
        """ReadProperty accepting a segmented answer (clause 5.2, 20.1.2.4): max APDU and max segments as encoded
        in the request (0=50, 1=128, 2=206, 3=480, 4=1024, 5=1476 octets; segments 0=unspecified, 1=2, 2=4,
        3=8, ...). Returns the reassembled answer and the length of every APDU segment received."""
        self.invoke = (self.invoke + 1) % 256
        inv = self.invoke
        params = ctx(0, object_id(*obj)) + ctx(1, unsigned_bytes(prop))
        self.send(bytes([0x01, 0x04, 0x02, (max_segments_code << 4) | max_apdu_code, inv, SC_READ_PROPERTY]) + params)
        sizes: list[int] = []
        data = b""
        expected_seq = since_ack = 0
        until = time.monotonic() + self.timeout
        while (got := self._recv(until)) is not None:
            apdu, src = got
            pdu_type = apdu[0] >> 4
            if pdu_type in (0, 1):
                self._dispatch_unsolicited(apdu, src)
                continue
            if apdu[1] != inv:
                continue
            if pdu_type == 7:
                return Answer("abort", error=str(apdu[2])), sizes
            if pdu_type != 3:
                return Answer({5: "error", 6: "reject"}.get(pdu_type, str(pdu_type)), error=apdu.hex()), sizes
            sizes.append(len(apdu))
            if not apdu[0] & 0x08:  # not segmented
                return Answer("complex", apdu[2], apdu[3:]), sizes
            more = bool(apdu[0] & 0x04)
            seq, proposed = apdu[2], apdu[3]
            assert seq == expected_seq % 256, (seq, expected_seq)
            data += apdu[5:]
            expected_seq += 1
            since_ack += 1
            # SegmentACK (from the client: SRV=0) for the first segment (the server waits for it to learn the
            # window), at the end of each window and for the last segment (clause 5.4.5.2)
            actual = min(window, proposed or 1)
            if seq == 0 or since_ack >= actual or not more:
                self.send(bytes([0x01, 0x00, 0x40, inv, seq, actual]), to=src)
                since_ack = 0
            if not more:
                return Answer("complex", apdu[4], data), sizes
            until = time.monotonic() + self.timeout
        return Answer("timeout"), sizes
