"""Simulated Modbus meters: a register image built from a profile, served over RTU (pty/serial) or TCP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ..core.catalogue import PointKind, load_catalogue
from ..core.codec import CodecError, DataType, WordOrder, decode, encode, from_engineering
from ..drivers.identify import rule_words
from ..drivers.modbus import crc16
from ..profiles import ModbusProfile
from .physics import LoadModel
from .pty import PtyLine

log = logging.getLogger(__name__)

Fault = Literal["none", "no_reply", "bad_crc", "exception", "noise", "slow", "wrong_unit"]


@dataclass
class WriteRecord:
    """A write the simulated meter received (tests assert that forbidden writes never arrive)."""

    time: float
    function: int
    address: int
    values: list[int] | list[bool]


@dataclass
class SimModbusMeter:
    """One simulated meter: values from a LoadModel, exposed through its profile's registers."""

    unit: int
    profile: ModbusProfile
    model: LoadModel = field(default_factory=LoadModel)
    online: bool = True
    fault: Fault = "none"
    slow_delay: float = 2.0
    strict_holes: bool = False  # answer exception 2 for reads that touch unmapped registers
    writes: list[WriteRecord] = field(default_factory=list)
    requests: int = 0
    raw_words: dict[str, list[int]] = field(default_factory=dict)  # point -> words answered as they are (NA tests)
    variant: str | None = None  # the profile variant whose identification registers the meter answers

    def __post_init__(self) -> None:
        self.catalogue = load_catalogue()
        self._regs: dict[tuple[int, int], tuple[str, int]] = {}  # (table, address) -> (point, word index)
        for name, p in self.profile.points.items():
            fn = self.profile.function_of(name)
            table = 3 if fn in (3,) else fn
            for k in range(self.profile.count_of(name)):
                self._regs[(table, p.address + k)] = (name, k)
        self._ident: dict[tuple[int, int], int] = {}  # identification registers: (table, address) -> word
        rules = list(self.profile.identify)
        rules += [r for v in self.profile.variants if v.name == self.variant for r in v.identify]
        for rule in rules:
            table = 3 if rule.function == 3 else 4
            for k, word in enumerate(rule_words(rule)):
                self._ident[(table, rule.address + k)] = word
        self._writable: dict[int, str] = {}
        for name, p in self.profile.points.items():
            if p.write is not None:
                self._writable[p.write.address if p.write.address is not None else p.address] = name

    def set_identification(self, function: int, address: int, word: int | None) -> None:
        """Answer `word` at an identification register, or refuse the register (None): other firmware, other make."""
        key = (3 if function == 3 else 4, address)
        if word is None:
            self._ident.pop(key, None)
        else:
            self._ident[key] = word

    @property
    def state(self) -> dict[str, float | int | bool]:
        """Current canonical values (advances the load)."""
        return self.model.advance()

    # -- register image ----------------------------------------------------------------------------
    def _point_words(self, name: str) -> list[int]:
        if name in self.raw_words:
            return list(self.raw_words[name])
        prof = self.profile
        p = prof.points[name]
        value = self.model.values.get(name, 0)
        dtype = prof.type_of(name)
        pdef = self.catalogue.get(name)
        if p.bit is not None or (
            pdef.bacnet_type in ("binary-input", "multi-state-value") and pdef.kind is not PointKind.CONFIG
        ):
            raw = int(value) ^ int(p.invert)
            if p.map:
                inv = {v: k for k, v in p.map.items()}
                raw = inv.get(raw, raw)
            if p.bit is not None:
                raw = raw << p.bit
            return encode(raw, dtype, prof.word_order_of(name))
        integer = dtype not in (DataType.FLOAT32, DataType.FLOAT64)
        raw = (float(value) - p.offset) / prof.scale_of(name)
        if integer:
            raw = int(raw)  # registers truncate to their resolution, as meters do
        try:
            return encode(raw, dtype, prof.word_order_of(name))
        except CodecError:
            return encode(0, dtype, prof.word_order_of(name))

    def read_registers(self, table: int, address: int, count: int) -> list[int] | None:
        """Register values for a read, or None for an illegal address."""
        self.model.advance()
        out: list[int] = []
        cache: dict[str, list[int]] = {}
        for a in range(address, address + count):
            hit = self._regs.get((table, a))
            if hit is None:
                if (table, a) in self._ident:
                    out.append(self._ident[(table, a)])
                    continue
                if self.strict_holes:
                    return None
                out.append(0)
                continue
            name, k = hit
            if name not in cache:
                cache[name] = self._point_words(name)
            out.append(cache[name][k])
        if not any((table, a) in self._regs or (table, a) in self._ident for a in range(address, address + count)):
            return None
        return out

    def read_bits(self, table: int, address: int, count: int) -> list[bool] | None:
        """Bit values for a coil/discrete-input read, or None for an illegal address."""
        self.model.advance()
        out = []
        for a in range(address, address + count):
            hit = self._regs.get((table, a))
            if hit is None:
                if self.strict_holes:
                    return None
                out.append(False)
                continue
            name = hit[0]
            p = self.profile.points[name]
            out.append(bool(int(self.model.values.get(name, 0)) ^ int(p.invert)))
        if not any((table, a) in self._regs for a in range(address, address + count)):
            return None
        return out

    def apply_write(self, fn: int, address: int, values: list[int] | list[bool]) -> bool:
        """Carry out a write; False for an address the meter does not accept."""
        self.writes.append(WriteRecord(time.time(), fn, address, list(values)))
        prof = self.profile
        for cmd_name, cmd in [*list(prof.commands.items()), ("energy_reset", prof.energy_reset)]:
            if cmd is None or cmd.address != address or cmd.function != fn:
                continue
            if cmd_name == "Reset_Demand_Peak":
                self.model.reset_demand()
            elif cmd_name == "Sync_Clock":
                order = WordOrder.LITTLE if cmd.format == "unix32_le" else WordOrder.BIG
                self.model.values["Clock"] = int(decode(list(values)[:2], DataType.UINT32, order))  # type: ignore[arg-type]
            elif cmd_name == "energy_reset":
                self.model.reset_energy()
            return True
        name = self._writable.get(address)
        if name is None or fn not in (6, 16):
            return False
        dtype = prof.type_of(name)
        n = prof.count_of(name)
        if len(values) != n:
            return False
        raw = decode(list(values), dtype, prof.word_order_of(name))  # type: ignore[arg-type]
        value = raw * prof.scale_of(name) + prof.points[name].offset
        self.model.values[name] = value
        return True

    # -- PDU handling ---------------------------------------------------------------------------------
    def handle_pdu(self, pdu: bytes) -> bytes:
        """Answer one request PDU (function code + data) with a response PDU."""
        self.requests += 1
        fn = pdu[0]
        try:
            if fn in (1, 2, 3, 4):
                address, count = struct.unpack(">HH", pdu[1:5])
                if fn in (1, 2):
                    if not 1 <= count <= 2000:
                        return bytes([fn | 0x80, 3])
                    bits = self.read_bits(fn, address, count)
                    if bits is None:
                        return bytes([fn | 0x80, 2])
                    packed = bytearray((count + 7) // 8)
                    for i, b in enumerate(bits):
                        if b:
                            packed[i // 8] |= 1 << (i % 8)
                    return bytes([fn, len(packed)]) + bytes(packed)
                if not 1 <= count <= 125:
                    return bytes([fn | 0x80, 3])
                regs = self.read_registers(fn if fn == 4 else 3, address, count)
                if regs is None:
                    return bytes([fn | 0x80, 2])
                return bytes([fn, 2 * count]) + b"".join(r.to_bytes(2, "big") for r in regs)
            if fn == 5:
                address, value = struct.unpack(">HH", pdu[1:5])
                if value not in (0, 0xFF00):
                    return bytes([fn | 0x80, 3])
                ok = self.apply_write(5, address, [value == 0xFF00])
                return pdu[:5] if ok else bytes([fn | 0x80, 2])
            if fn == 6:
                address, value = struct.unpack(">HH", pdu[1:5])
                ok = self.apply_write(6, address, [value])
                return pdu[:5] if ok else bytes([fn | 0x80, 2])
            if fn == 15:
                address, count, nbytes = struct.unpack(">HHB", pdu[1:6])
                bits = [bool(pdu[6 + i // 8] >> (i % 8) & 1) for i in range(count)]
                ok = self.apply_write(15, address, bits)
                return pdu[:5] if ok else bytes([fn | 0x80, 2])
            if fn == 16:
                address, count, nbytes = struct.unpack(">HHB", pdu[1:6])
                if nbytes != 2 * count or len(pdu) < 6 + nbytes:
                    return bytes([fn | 0x80, 3])
                regs = [int.from_bytes(pdu[6 + 2 * i : 8 + 2 * i], "big") for i in range(count)]
                ok = self.apply_write(16, address, regs)
                return pdu[:5] if ok else bytes([fn | 0x80, 2])
        except (struct.error, IndexError, CodecError):
            return bytes([(fn | 0x80) & 0xFF, 3])
        return bytes([(fn | 0x80) & 0xFF, 1])


def request_length(buf: bytes) -> int | None:
    """Length of an RTU request frame at the start of buf, None if not known yet, -1 if unknown function."""
    if len(buf) < 2:
        return None
    fn = buf[1]
    if fn in (1, 2, 3, 4, 5, 6):
        return 8
    if fn in (15, 16):
        return None if len(buf) < 7 else 9 + buf[6]
    return -1


class RtuSimBus(PtyLine):
    """Simulated meters sharing one RS485 line, served on the master side of a pty."""

    def __init__(
        self,
        meters: list[SimModbusMeter],
        baudrate: int = 9600,
        paced: bool = False,
        turnaround: float = 0.005,
        bits_per_char: int = 10,
    ) -> None:
        super().__init__()
        self.meters = {m.unit: m for m in meters}
        self.baudrate = baudrate
        self.paced = paced
        self.turnaround = turnaround
        self.bits_per_char = bits_per_char
        self._buf = b""
        self.frames_in = 0
        self.frames_by_unit: Counter[int] = Counter()  # valid requests seen per unit id, answered or not

    async def serve(self) -> None:
        """Cut the byte stream into requests by length and answer them."""
        while True:
            chunk = await self.queue.get()
            self._buf += chunk
            while True:
                n = request_length(self._buf)
                if n is None or (n > 0 and len(self._buf) < n):
                    # wait for the rest; a partial frame followed by silence is dropped as garbage
                    try:
                        async with asyncio.timeout(0.05 if self._buf else None):
                            more = await self.queue.get()
                    except TimeoutError:
                        self._buf = b""
                        break
                    self._buf += more
                    continue
                if n < 0:
                    self._buf = self._buf[1:]  # resynchronise on the next byte
                    continue
                frame, self._buf = self._buf[:n], self._buf[n:]
                await self._answer(frame)
                if not self._buf:
                    break

    def _wire_time(self, nbytes: int) -> float:
        return nbytes * self.bits_per_char / self.baudrate

    async def _answer(self, frame: bytes) -> None:
        self.frames_in += 1
        if crc16(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
            return  # a real slave ignores a corrupted request
        self.frames_by_unit[frame[0]] += 1
        meter = self.meters.get(frame[0])
        if meter is None or not meter.online or meter.fault == "no_reply":
            return
        pdu = meter.handle_pdu(frame[1:-2])
        unit = frame[0]
        if meter.fault == "exception":
            pdu = bytes([frame[1] | 0x80, 4])
        if meter.fault == "wrong_unit":
            unit = (unit % 247) + 1
        adu = bytes([unit]) + pdu
        reply = adu + crc16(adu).to_bytes(2, "little")
        if meter.fault == "bad_crc":
            reply = reply[:-1] + bytes([reply[-1] ^ 0xFF])
        if meter.fault == "noise":
            reply = b"\xff" + reply
        delay = 0.0
        if self.paced:
            delay = self._wire_time(len(frame)) + self.turnaround + self._wire_time(len(reply))
        if meter.fault == "slow":
            delay += meter.slow_delay
        if delay:
            await asyncio.sleep(delay)
        self.write(reply)


class TcpSimServer:
    """Simulated meters behind one Modbus TCP endpoint (unit id selects the meter)."""

    def __init__(self, meters: list[SimModbusMeter], host: str = "127.0.0.1", port: int = 0) -> None:
        self.meters = {m.unit: m for m in meters}
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self.reset_connections = False  # fault: drop every connection on its next request

    async def start(self) -> int:
        """Listen; returns the bound port."""
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            while True:
                head = await reader.readexactly(7)
                tid, proto, length, unit = struct.unpack(">HHHB", head)
                if length < 2 or length > 254:
                    break
                pdu = await reader.readexactly(length - 1)
                if self.reset_connections:
                    break
                meter = self.meters.get(unit)
                if meter is None or not meter.online or meter.fault == "no_reply":
                    continue
                rsp = meter.handle_pdu(pdu)
                if meter.fault == "exception":
                    rsp = bytes([pdu[0] | 0x80, 4])
                if meter.fault == "slow":
                    await asyncio.sleep(meter.slow_delay)
                writer.write(struct.pack(">HHHB", tid, proto, len(rsp) + 1, unit) + rsp)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._conns.discard(writer)
            writer.close()

    async def close(self) -> None:
        """Stop listening and drop connections."""
        if self._server is not None:
            self._server.close()
            for w in list(self._conns):
                w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None


def make_meter(
    unit: int,
    profile: ModbusProfile,
    seed: int = 0,
    clock: Callable[[], float] = time.time,
    base_kw: float | None = None,
) -> SimModbusMeter:
    """A simulated meter with a plausible load scaled to the profile's phases."""
    model = LoadModel(
        seed=seed,
        base_kw=base_kw if base_kw is not None else 4.0 + (seed % 7) * 2.5,
        phases=profile.phases,
        clock=clock,
    )
    model.values["Modbus_Address"] = float(unit)
    return SimModbusMeter(unit=unit, profile=profile, model=model)


__all__ = ["RtuSimBus", "SimModbusMeter", "TcpSimServer", "WriteRecord", "from_engineering", "make_meter"]
