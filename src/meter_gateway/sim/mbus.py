"""Simulated M-Bus meters on a pty: SND_NKE, REQ_UD2 (single and multi-telegram, the EN 13757-2 FCB rule),
secondary selection with wildcards (colliding replies garbled as on a real bus), moving values, fault injection."""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from ..mbus_frame import (
    ACK,
    ADDR_BROADCAST,
    ADDR_BROADCAST_REPLY,
    ADDR_NETWORK,
    CI_SELECT,
    MEDIUM_ELECTRICITY,
    MbusFrameError,
    build_rsp_ud,
    frame_size,
    manufacturer_code,
    parse_frame,
)
from ..profiles.mbus import FUNCTIONS, MbusProfile
from .physics import LoadModel
from .pty import PtyLine

Fault = Literal["none", "no_reply", "bad_checksum", "garbage"]
# how each quantity is encoded: (DIF data field, VIF bytes, factor from the canonical unit to the raw integer)
ENCODING = {
    "energy": (0x04, b"\x04", 100),  # 10 Wh steps: kWh x 100
    "reactive_energy": (0x04, b"\xfb\x82\x74", 100),  # FB 02 (kvarh) x VIFE 0x74 (10^-2): 10 varh steps
    "apparent_energy": (0x04, b"\xfb\x84\x74", 100),
    "power": (0x04, b"\x2b", 1000),  # W: kW x 1000
    "reactive_power": (0x04, b"\xfb\x14", 1000),  # var
    "apparent_power": (0x04, b"\xfb\x34", 1000),  # VA
    "voltage": (0x02, b"\xfd\x48", 10),  # 0.1 V
    "current": (0x04, b"\xfd\x59", 1000),  # mA
    "frequency": (0x02, b"\xfb\x2d", 100),  # 0.01 Hz
    "dimensionless": (0x04, b"\xfd\x3a", 1),
}
DIRECTION_VIFE = {"import": b"\x3b", "export": b"\x3c", "net": b"\x7c\x0c"}
PHASE_VIFE = {"L1": 1, "L2": 2, "L3": 3, "N": 4, "L1-L2": 5, "L2-L3": 6, "L3-L1": 7}
#: vendor habits a simulated meter can have: "vife00" sends a VIFE 0x00 after each standard VIF (ABB)
HABITS = ("vife00",)


def _chain(parts: bytes) -> bytes:
    """Set the extension bit on every VIB byte but the last."""
    return bytes(b | 0x80 for b in parts[:-1]) + parts[-1:]


def encode_dib(code: int, function: int, storage: int, tariff: int, subunit: int) -> bytes:
    """DIF and as many DIFEs as the storage number, tariff and sub-unit need (EN 13757-3 clause 6.3)."""
    dif = code | (function << 4) | ((storage & 1) << 6)
    storage >>= 1
    difes = []
    while storage or tariff or subunit:
        difes.append((storage & 0x0F) | ((tariff & 0x03) << 4) | ((subunit & 0x01) << 6))
        storage, tariff, subunit = storage >> 4, tariff >> 2, subunit >> 1
    if not difes:
        return bytes([dif])
    return bytes([dif | 0x80] + [d | 0x80 for d in difes[:-1]] + difes[-1:])


def encode_record(rule, value: float, habits: tuple[str, ...] = ()) -> bytes:
    """One data record for a profile rule and a canonical value (named fields to DIB/VIB bytes)."""
    if rule.vib:  # manufacturer-specific VIB: a float32 of the canonical value
        code, vib, factor = 0x05, bytes.fromhex(rule.vib), 1
    else:
        code, vib, factor = ENCODING[rule.quantity]
        vib = bytes(b & 0x7F for b in vib)
        if "vife00" in habits:
            vib += b"\x00"
        direction = rule.direction[0] if isinstance(rule.direction, list) else rule.direction
        vib += DIRECTION_VIFE.get(direction, b"")
        if rule.phase != "none":
            vib += bytes([0x7C, PHASE_VIFE[rule.phase]])
        vib += bytes.fromhex(rule.tag)
        vib = _chain(vib)
    if rule.coding == "real":
        code = 0x05
    elif rule.coding == "bcd":
        code = 0x0C
    if isinstance(rule.tariff, list):  # a tariff sum: the whole value on the first tariff, 0 on the others
        return b"".join(
            encode_record(rule.model_copy(update={"tariff": t}), value if k == 0 else 0.0, habits)
            for k, t in enumerate(rule.tariff)
        )
    dib = encode_dib(code, FUNCTIONS[rule.function], rule.storage, rule.tariff, rule.subunit)
    scaled = value * factor / rule.scale
    if code == 0x05:
        return dib + vib + struct.pack("<f", scaled)
    size = {0x02: 2, 0x04: 4, 0x0C: 4}[code]
    raw = round(scaled)
    if code == 0x0C:
        raw = max(0, min(99999999, raw))
        return dib + vib + bytes.fromhex(f"{raw:08d}")[::-1]
    limit = 1 << (8 * size - 1)
    raw = max(-limit, min(limit - 1, raw))
    return dib + vib + raw.to_bytes(size, "little", signed=True)


@dataclass
class SimMbusMeter:
    """One simulated M-Bus electricity meter that follows the EN 13757-2 link rules.

    FCB rule: a REQ_UD2 with FCV set and the FCB not toggled since the last one gets the last reply again, byte
    for byte; a toggled FCB gets the next telegram of the multi-telegram sequence (after the last, the first).
    SND_NKE clears the FCB (the next new request carries FCB=1) and restarts at the first telegram; a selection
    does not touch the FCB (one FCB for primary and secondary addressing). `restart()` is a power cycle.
    """

    primary: int
    ident: str  # 8-digit secondary address
    profile: MbusProfile
    model: LoadModel = field(default_factory=LoadModel)
    manufacturer: str = "GWY"
    version: int = 1  # header version byte
    telegrams: int = 2  # records are spread over this many telegrams ("more records follow")
    medium: int = MEDIUM_ELECTRICITY
    habits: tuple[str, ...] = ()  # vendor habits (HABITS)
    online: bool = True
    fault: Fault = "none"
    selected: bool = False
    requests: int = 0
    repeat_next: int = 0  # fault: answer this many toggled REQ_UD2 with the last reply (a meter that missed them)
    resets: int = 0  # SND_NKE received
    repeats: int = 0  # replies repeated (FCB not toggled, or repeat_next)
    restarts: int = 0
    acks_nke_253: bool = True  # False: SND_NKE to 253 deselects without an E5 (a habit of some makes)
    counts_access: bool = True  # False: the access number stays the same (a habit of some makes)
    after_telegrams: int | None = None  # fault: after this many more telegrams, `then` happens
    then: Literal["offline", "restart"] = "offline"  # ... the meter goes silent, or restarts (power cycle)
    _next: int = 0
    _last_fcb: bool | None = None  # None after a restart: no FCB state yet, any FCB is a new request
    _last_reply: bytes | None = None
    _access: int = 0

    @property
    def state(self) -> dict:
        """Current canonical values."""
        return self.model.advance()

    def records(self) -> list[bytes]:
        """Every record of the meter, in profile order."""
        values = self.model.advance()
        return [
            encode_record(rule, float(values.get(name, 0.0)), self.habits) for name, rule in self.profile.points.items()
        ]

    def telegram(self, address: int, fcb: bool, fcv: bool = True) -> bytes:
        """The answer to a REQ_UD2: the last reply again when the FCB was not toggled, else the next telegram."""
        toggled = not fcv or self._last_fcb is None or fcb != self._last_fcb
        if self._last_reply is not None and (not toggled or self.repeat_next > 0):
            if toggled:
                self.repeat_next -= 1  # fault injection: a meter that misses the toggle once
            if fcv:
                self._last_fcb = fcb
            self.repeats += 1
            return self._last_reply
        recs = self.records()
        n = max(1, min(self.telegrams, len(recs)))
        index = self._next % n
        self._next = (index + 1) % n
        chunk = recs[index * len(recs) // n : (index + 1) * len(recs) // n]
        if self.counts_access:
            self._access = (self._access + 1) & 0xFF
        reply = build_rsp_ud(
            address,
            self.ident,
            self.manufacturer,
            self.version,
            self.medium,
            self._access,
            b"".join(chunk),
            more_follows=index < n - 1,
        )
        if fcv:
            self._last_fcb = fcb
        self._last_reply = reply
        return reply

    def telegram_sent(self) -> None:
        """Count down the scripted fault (`after_telegrams`, `then`)."""
        if self.after_telegrams is None:
            return
        self.after_telegrams -= 1
        if self.after_telegrams <= 0:
            self.after_telegrams = None
            if self.then == "restart":
                self.restart()
            else:
                self.online = False

    def reset(self) -> None:
        """SND_NKE: FCB cleared (the next new request has FCB=1), readout restarts at the first telegram."""
        self.resets += 1
        self._next = 0
        self._last_fcb = False
        self._last_reply = None

    def restart(self) -> None:
        """Power cycle: sequence, FCB state, stored reply, selection and access counter are lost."""
        self.restarts += 1
        self._next = 0
        self._last_fcb = None
        self._last_reply = None
        self.selected = False
        self._access = 0

    def matches(self, pattern: bytes) -> bool:
        """Secondary selection: id digits with F wildcards, manufacturer, version, medium (0xFF... wildcards)."""
        ident_pattern = pattern[0:4][::-1].hex().upper()
        for p, d in zip(ident_pattern, self.ident, strict=True):
            if p != "F" and p != d:
                return False
        man = int.from_bytes(pattern[4:6], "little")
        if man != 0xFFFF and man != manufacturer_code(self.manufacturer):
            return False
        if pattern[6] != 0xFF and pattern[6] != self.version:
            return False
        return pattern[7] in (0xFF, self.medium)


class MbusSimBus(PtyLine):
    """Simulated meters on the master side of a pty."""

    def __init__(self, meters: list[SimMbusMeter]) -> None:
        super().__init__()
        self.meters = meters
        self.frames_in = 0
        #: what the master sent, in order: ("nke" | "req" | "select", address, FCB or None)
        self.log: deque[tuple[str, int, bool | None]] = deque(maxlen=4096)

    async def serve(self) -> None:
        """Cut the byte stream into frames by length and answer them."""
        buf = b""
        while True:
            try:
                async with asyncio.timeout(0.2 if buf else None):
                    chunk = await self.queue.get()
            except TimeoutError:
                buf = b""  # an incomplete frame followed by silence is dropped
                continue
            buf += chunk
            while buf:
                try:
                    size = frame_size(buf)
                except MbusFrameError:
                    buf = buf[1:]
                    continue
                if size is None or len(buf) < size:
                    break
                raw, buf = buf[:size], buf[size:]
                self.frames_in += 1
                try:
                    frame = parse_frame(raw)
                except MbusFrameError:
                    continue  # a slave ignores a corrupted request
                self._answer(frame)

    def _reply(self, meter: SimMbusMeter, data: bytes) -> None:
        if not meter.online or meter.fault == "no_reply":
            return
        if meter.fault == "bad_checksum" and len(data) > 1:
            data = data[:-2] + bytes([(data[-2] + 1) & 0xFF, data[-1]])
        elif meter.fault == "garbage":
            data = b"\x55\xaa" + data
        self.write(data)

    def _targets(self, address: int) -> list[SimMbusMeter]:
        if address == ADDR_NETWORK:
            return [m for m in self.meters if m.selected]
        return [m for m in self.meters if m.primary == address]

    def _answer(self, frame) -> None:
        if frame.kind == "short":
            c, a = frame.c, frame.a
            self.log.append(("nke" if c == 0x40 else "req", a, bool(c & 0x20) if c & 0x10 else None))
            if c == 0x40:  # SND_NKE; to 253 it also deselects the selected meter (EN 13757-3)
                targets = list(self.meters) if a in (ADDR_BROADCAST_REPLY, ADDR_BROADCAST) else self._targets(a)
                for m in targets:
                    if not m.online:
                        continue
                    m.reset()
                    m.requests += 1
                    if a == ADDR_NETWORK:
                        m.selected = False
                answering = [m for m in targets if m.online and m.fault != "no_reply"]
                if a == ADDR_NETWORK:
                    answering = [m for m in answering if m.acks_nke_253]
                if a == ADDR_BROADCAST or not answering:
                    return
                if len(answering) == 1:
                    self._reply(answering[0], bytes([ACK]))
                else:
                    self.write(b"\xfd\x37")  # several E5 at once: garbled on the wire
            elif c & 0xCF == 0x4B:  # REQ_UD2 (0x5B / 0x7B with FCV; 0x4B / 0x6B without)
                targets = [m for m in self._targets(a) if m.online]
                for m in targets:
                    m.requests += 1
                if len(targets) == 1:
                    self._reply(targets[0], targets[0].telegram(a, bool(c & 0x20), bool(c & 0x10)))
                    targets[0].telegram_sent()
                elif len(targets) > 1:
                    self.write(b"\x68\x37\x5c\x68\x08")  # colliding long frames: garbled
            return
        if frame.kind == "long" and frame.ci == CI_SELECT and frame.a == ADDR_NETWORK and len(frame.data) >= 8:
            self.log.append(("select", ADDR_NETWORK, None))
            hits = [m for m in self.meters if m.online and m.matches(frame.data[:8])]
            for m in self.meters:
                if m.online:
                    m.selected = m in hits  # a selection does not touch the FCB
            answering = [m for m in hits if m.fault != "no_reply"]
            if len(answering) == 1:
                answering[0].requests += 1
                self._reply(answering[0], bytes([ACK]))
            elif len(answering) > 1:
                self.write(b"\xfd\x37")  # several E5 at once: garbled on the wire


@dataclass
class SimMbusHandle:
    """What the gateway keeps of a simulated M-Bus line."""

    bus: MbusSimBus
    meters: dict[str, SimMbusMeter]

    async def close(self) -> None:
        """Stop the line."""
        await self.bus.close()


def make_mbus_meter(meter_id: str, address: int | str, profile: MbusProfile, index: int = 0) -> SimMbusMeter:
    """A simulated meter for a configured meter (primary or secondary address)."""
    seed = zlib.crc32(meter_id.encode())
    ident = address if isinstance(address, str) else f"{(seed % 90000000) + 10000000:08d}"
    primary = address if isinstance(address, int) else 200 + index
    model = LoadModel(seed=seed, base_kw=3.0 + (seed % 5), phases=profile.phases)
    habits = ("vife00",) if profile.manufacturer_id == "ABB" else ()  # ABB sends a VIFE 0x00 after each VIF
    version = profile.versions[0] if profile.versions else 1
    return SimMbusMeter(
        primary, ident, profile, model, manufacturer=profile.manufacturer_id or "GWY", version=version, habits=habits
    )


async def start_simulated_mbus_bus(bus, meters, profiles) -> tuple[str, SimMbusHandle]:
    """Start simulated meters for the configured meters of an M-Bus bus; returns (pty path, handle)."""
    sims = {m.id: make_mbus_meter(m.id, m.address, profiles.get(m.profile), i) for i, m in enumerate(meters)}
    line = MbusSimBus(list(sims.values()))
    port = await line.start()
    return port, SimMbusHandle(line, sims)
