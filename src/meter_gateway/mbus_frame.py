"""M-Bus (EN 13757-2/-3) frames and data records: building, length/checksum validation and record splitting.

Pure byte handling, shared by the M-Bus driver (drivers/mbus_records.py names and decodes the records) and the
simulator.
Every malformed input raises MbusFrameError with a reason; nothing truncated is ever accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ACK = 0xE5
SND_NKE = 0x40
REQ_UD2 = 0x5B  # | 0x20 when FCB is set
SND_UD = 0x53  # | 0x20 when FCB is set
RSP_UD = 0x08
ADDR_NETWORK = 253  # secondary addressing: the selected slave
ADDR_BROADCAST_REPLY = 254
ADDR_BROADCAST = 255
CI_SELECT = 0x52
CI_DATA_SEND = 0x51
CI_VARIABLE_LONG = (0x72, 0x76)  # 12-byte header (0x76: MSB first)
CI_VARIABLE_SHORT = 0x7A  # 4-byte header
CI_VARIABLE_NONE = 0x78  # no header
CI_APPLICATION_ERROR = 0x70
MAX_DIFE = 10
MAX_VIFE = 10
APPLICATION_ERRORS = {
    0: "unspecified error",
    1: "unimplemented CI field",
    2: "buffer too long, truncated",
    3: "too many records",
    4: "premature end of record",
    5: "more than 10 DIFEs",
    6: "more than 10 VIFEs",
    7: "reserved",
    8: "application busy",
    9: "too many readouts",
}
DATA_LENGTH = {
    0x0: 0,
    0x1: 1,
    0x2: 2,
    0x3: 3,
    0x4: 4,
    0x5: 4,
    0x6: 6,
    0x7: 8,
    0x8: 0,
    0x9: 1,
    0xA: 2,
    0xB: 3,
    0xC: 4,
    0xE: 6,
}
MEDIUM_ELECTRICITY = 0x02


class MbusFrameError(ValueError):
    """The bytes are not a valid M-Bus frame (or record); the message says why."""


def checksum(data: bytes) -> int:
    """Arithmetic sum modulo 256."""
    return sum(data) & 0xFF


def short_frame(c: int, a: int) -> bytes:
    """A short frame (SND_NKE, REQ_UD2)."""
    return bytes([0x10, c, a, checksum(bytes([c, a])), 0x16])


def long_frame(c: int, a: int, ci: int, data: bytes = b"") -> bytes:
    """A long (or control, when data is empty) frame."""
    body = bytes([c, a, ci]) + data
    if len(body) > 255:
        raise MbusFrameError(f"frame body of {len(body)} bytes exceeds 255")
    return bytes([0x68, len(body), len(body), 0x68]) + body + bytes([checksum(body), 0x16])


def req_ud2(address: int, fcb: bool) -> bytes:
    """REQ_UD2 with the frame count bit."""
    return short_frame(REQ_UD2 | (0x20 if fcb else 0), address)


def snd_nke(address: int) -> bytes:
    """SND_NKE (link reset, FCB cleared)."""
    return short_frame(SND_NKE, address)


def select_secondary(ident: str, manufacturer: int = 0xFFFF, version: int = 0xFF, medium: int = 0xFF) -> bytes:
    """SND_UD to 253 selecting a secondary address; `ident` is 8 digits, F for a wildcard digit."""
    if len(ident) != 8 or any(ch not in "0123456789Ff" for ch in ident):
        raise MbusFrameError(f"secondary id must be 8 digits (F for wildcard), got {ident!r}")
    bcd = bytes.fromhex(ident.upper())[::-1]  # least significant byte first
    data = bcd + manufacturer.to_bytes(2, "little") + bytes([version, medium])
    return long_frame(SND_UD, ADDR_NETWORK, CI_SELECT, data)


def frame_size(buf: bytes) -> int | None:
    """Total length of the frame at the start of buf, None while unknown; MbusFrameError for a bad start."""
    if not buf:
        return None
    start = buf[0]
    if start == ACK:
        return 1
    if start == 0x10:
        return 5
    if start == 0x68:
        if len(buf) < 4:
            return None
        if buf[1] != buf[2] or buf[3] != 0x68:
            raise MbusFrameError("long frame header corrupted (length fields differ or second start byte missing)")
        if buf[1] < 3:
            raise MbusFrameError(f"long frame length {buf[1]} is below the minimum of 3")
        return buf[1] + 6
    raise MbusFrameError(f"no frame starts with 0x{start:02X}")


@dataclass(frozen=True, slots=True)
class Frame:
    """A validated frame."""

    kind: str  # "ack" | "short" | "long"
    c: int = 0
    a: int = 0
    ci: int | None = None
    data: bytes = b""
    raw: bytes = b""


def parse_frame(buf: bytes) -> Frame:
    """Validate one complete frame (start, length, checksum, stop byte); no trailing bytes allowed."""
    size = frame_size(buf)
    if size is None or len(buf) < size:
        raise MbusFrameError(f"premature end of frame: {len(buf)} bytes, {size or 'more'} needed")
    if len(buf) > size:
        raise MbusFrameError(f"{len(buf) - size} bytes after the end of the frame")
    if buf[0] == ACK:
        return Frame("ack", raw=bytes(buf))
    if buf[-1] != 0x16:
        raise MbusFrameError("stop byte 0x16 missing")
    if buf[0] == 0x10:
        if checksum(buf[1:3]) != buf[3]:
            raise MbusFrameError("short frame checksum mismatch")
        return Frame("short", buf[1], buf[2], raw=bytes(buf))
    body = buf[4:-2]
    if checksum(body) != buf[-2]:
        raise MbusFrameError("long frame checksum mismatch")
    return Frame("long", body[0], body[1], body[2], bytes(body[3:]), bytes(buf))


@dataclass(frozen=True, slots=True)
class Header:
    """The variable data structure header of a RSP_UD."""

    ident: str  # 8-digit identification number
    manufacturer: str
    manufacturer_code: int
    version: int
    medium: int
    access_no: int
    status: int
    signature: int

    @property
    def secondary(self) -> str:
        """The 8-digit secondary address."""
        return self.ident


def manufacturer_name(code: int) -> str:
    """Three-letter manufacturer id (EN 62056-21 flag)."""
    return "".join(chr(((code >> s) & 0x1F) + 64) for s in (10, 5, 0))


def manufacturer_code(name: str) -> int:
    """Inverse of manufacturer_name."""
    name = name.upper()
    return ((ord(name[0]) - 64) << 10) | ((ord(name[1]) - 64) << 5) | (ord(name[2]) - 64)


@dataclass(frozen=True, slots=True)
class Record:
    """One data record: its DIB/VIB bytes, its data bytes and the addressing fields decoded from the DIB."""

    dib: bytes
    vib: bytes
    data: bytes
    function: int  # 0 instantaneous, 1 maximum, 2 minimum, 3 during error
    storage: int
    tariff: int
    subunit: int
    lvar: int | None = None  # the LVAR byte of a variable-length record (DIF data field 0xD)

    @property
    def data_field(self) -> int:
        """The DIF data field code (0x0-0xF)."""
        return self.dib[0] & 0x0F


@dataclass
class Payload:
    """A decoded RSP_UD: header (if any), records, and whether more telegrams follow."""

    ci: int
    header: Header | None
    records: list[Record] = field(default_factory=list)
    more_follows: bool = False
    manufacturer_data: bytes = b""


def parse_header(ci: int, data: bytes) -> tuple[Header | None, bytes]:
    """Split the header off the application data for the supported CI fields."""
    if ci in CI_VARIABLE_LONG:
        if len(data) < 12:
            raise MbusFrameError(f"variable data header needs 12 bytes, got {len(data)}")
        ident_bytes = data[0:4] if ci == 0x72 else data[0:4][::-1]
        ident = ident_bytes[::-1].hex().upper()
        man = int.from_bytes(data[4:6], "little")
        return Header(
            ident,
            manufacturer_name(man),
            man,
            data[6],
            data[7],
            data[8],
            data[9],
            int.from_bytes(data[10:12], "little"),
        ), data[12:]
    if ci == CI_VARIABLE_SHORT:
        if len(data) < 4:
            raise MbusFrameError("short header needs 4 bytes")
        return None, data[4:]
    if ci == CI_VARIABLE_NONE:
        return None, data
    if ci == CI_APPLICATION_ERROR:
        code = data[0] if data else 0
        raise MbusFrameError(f"meter reports an application error: {APPLICATION_ERRORS.get(code, f'code {code}')}")
    raise MbusFrameError(f"unsupported CI field 0x{ci:02X} (only variable data 0x72/0x76/0x78/0x7A is read)")


def split_records(data: bytes) -> tuple[list[Record], bool, bytes]:
    """Walk the data records; raise on any truncation or over-long extension chain."""
    records: list[Record] = []
    i = 0
    n = len(data)
    while i < n:
        dif = data[i]
        if dif == 0x2F:  # idle filler
            i += 1
            continue
        if dif in (0x0F, 0x1F):  # manufacturer specific data follows (0x1F: and more telegrams)
            return records, dif == 0x1F, bytes(data[i + 1 :])
        start = i
        i += 1
        difes = []
        ext = dif & 0x80
        while ext:
            if i >= n:
                raise MbusFrameError(f"premature end of record {len(records)}: DIFE missing")
            difes.append(data[i])
            if len(difes) > MAX_DIFE:
                raise MbusFrameError(f"record {len(records)}: more than {MAX_DIFE} DIFEs")
            ext = data[i] & 0x80
            i += 1
        if i >= n:
            raise MbusFrameError(f"premature end of record {len(records)}: VIF missing")
        vif_start = i
        vif = data[i]
        i += 1
        if (vif & 0x7F) == 0x7C:  # plain-text VIF: length byte and ASCII unit follow
            if i >= n:
                raise MbusFrameError(f"premature end of record {len(records)}: plain-text VIF length missing")
            ln = data[i]
            if i + 1 + ln > n:
                raise MbusFrameError(f"premature end of record {len(records)}: plain-text VIF truncated")
            i += 1 + ln
        nvife = 0
        ext = vif & 0x80
        while ext:
            if i >= n:
                raise MbusFrameError(f"premature end of record {len(records)}: VIFE missing")
            nvife += 1
            if nvife > MAX_VIFE:
                raise MbusFrameError(f"record {len(records)}: more than {MAX_VIFE} VIFEs")
            ext = data[i] & 0x80
            i += 1
        vib = bytes(data[vif_start:i])
        code = dif & 0x0F
        if code == 0xD:  # variable length, LVAR byte first
            if i >= n:
                raise MbusFrameError(f"premature end of record {len(records)}: LVAR missing")
            lvar = data[i]
            i += 1
            if lvar <= 0xBF:  # ASCII text of lvar characters
                length = lvar
            elif 0xC0 <= lvar <= 0xC9 or 0xD0 <= lvar <= 0xD9:  # positive / negative BCD, lvar & 0x0F bytes
                length = lvar & 0x0F
            elif 0xE0 <= lvar <= 0xEF:  # binary number of lvar - 0xE0 bytes
                length = lvar - 0xE0
            elif 0xF0 <= lvar <= 0xF4:  # binary number of 4 * (lvar - 0xEC) bytes
                length = 4 * (lvar - 0xEC)
            elif lvar == 0xF5:
                length = 48
            elif lvar == 0xF6:
                length = 64
            else:
                raise MbusFrameError(f"record {len(records)}: reserved LVAR 0x{lvar:02X}")
            length_bytes = length
            lvar_byte: int | None = lvar
        elif code == 0xF:
            raise MbusFrameError(f"record {len(records)}: special function DIF 0x{dif:02X} inside a record")
        else:
            length_bytes = DATA_LENGTH[code]
            lvar_byte = None
        if i + length_bytes > n:
            raise MbusFrameError(
                f"premature end of record {len(records)}: {length_bytes} data bytes needed, {n - i} left"
            )
        payload = bytes(data[i : i + length_bytes])
        i += length_bytes
        storage = (dif >> 6) & 1
        tariff = subunit = 0
        for k, d in enumerate(difes):
            storage |= (d & 0x0F) << (1 + 4 * k)
            tariff |= ((d >> 4) & 0x03) << (2 * k)
            subunit |= ((d >> 6) & 0x01) << k
        records.append(
            Record(bytes(data[start:vif_start]), vib, payload, (dif >> 4) & 0x03, storage, tariff, subunit, lvar_byte)
        )
    return records, False, b""


def parse_payload(frame: Frame) -> Payload:
    """Header and records of a RSP_UD long frame."""
    if frame.kind != "long" or frame.ci is None:
        raise MbusFrameError(f"expected a long frame with data, got a {frame.kind} frame")
    if frame.c & 0x0F != RSP_UD & 0x0F or frame.c & 0x40:
        raise MbusFrameError(f"C field 0x{frame.c:02X} is not RSP_UD")
    header, body = parse_header(frame.ci, frame.data)
    records, more, manuf = split_records(body)
    if not records and manuf:
        raise MbusFrameError("telegram holds only manufacturer-specific data, no standard data record")
    return Payload(frame.ci, header, records, more, manuf)


def build_rsp_ud(
    address: int,
    ident: str,
    manufacturer: str,
    version: int,
    medium: int,
    access_no: int,
    records: bytes,
    more_follows: bool = False,
    status: int = 0,
) -> bytes:
    """A RSP_UD long frame with a 12-byte variable data header (CI 0x72)."""
    head = bytes.fromhex(ident)[::-1] + manufacturer_code(manufacturer).to_bytes(2, "little")
    head += bytes([version, medium, access_no & 0xFF, status, 0, 0])
    tail = b"\x1f" if more_follows else b""
    return long_frame(RSP_UD, address, 0x72, head + records + tail)


def encode_int_record(dib: bytes, vib: bytes, value: int) -> bytes:
    """A record whose DIF data field is an integer type (1, 2, 3, 4, 6 or 8 bytes)."""
    size = DATA_LENGTH[dib[0] & 0x0F]
    return dib + vib + int(value).to_bytes(size, "little", signed=True)
