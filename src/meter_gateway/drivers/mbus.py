"""M-Bus master (EN 13757-2/-3) over pyserial-asyncio-fast: link layer, primary and secondary addressing,
multi-telegram reads, wildcard search, and record mapping through M-Bus profiles.

Frames are validated by meter_gateway.mbus_frame (length, checksum, record structure: pyMeterBus accepts some
truncated frames); record values are then decoded with pyMeterBus and quantized by their VIF exponent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from ..config import MbusBus, MeterConfig
from ..mbus_frame import (
    ACK,
    ADDR_NETWORK,
    MbusFrameError,
    Payload,
    Record,
    frame_size,
    parse_frame,
    parse_payload,
    req_ud2,
    select_secondary,
    snd_nke,
)
from ..profiles import ProfileRegistry
from .base import Driver, FrameError, NoResponse, PointReading, WriteRejected

log = logging.getLogger(__name__)


def _import_meterbus():
    """Import pyMeterBus without letting it configure the root logger (it calls logging.basicConfig)."""
    root = logging.getLogger()
    before = list(root.handlers)
    import meterbus

    for h in list(root.handlers):
        if h not in before:
            root.removeHandler(h)
    return meterbus


meterbus = _import_meterbus()

#: canonical unit factor per quantity (from the SI unit of the VIF to the catalogue's unit)
QUANTITY_FACTOR = {"energy": Decimal("0.001"), "power": Decimal("0.001"), "voltage": Decimal(1), "current": Decimal(1)}


@dataclass(frozen=True, slots=True)
class Vif:
    """What a VIB says: quantity, power-of-ten exponent of the SI unit, and the trailing tag bytes."""

    quantity: str  # energy (Wh), power (W), voltage (V), current (A), other
    exponent: int
    tag: bytes  # VIFE bytes after the unit (vendor phase tags such as FF 01)


def decode_vif(vib: bytes) -> Vif:
    """Classify a VIB (primary VIF, or FD / FB extension)."""
    v = vib[0] & 0x7F
    rest = vib[1:]
    if v <= 0x07:
        return Vif("energy", v - 3, rest)
    if 0x28 <= v <= 0x2F:
        return Vif("power", (v & 0x07) - 3, rest)
    if v == 0x7D and rest:  # FD extension table
        e = rest[0] & 0x7F
        if 0x40 <= e <= 0x4F:
            return Vif("voltage", (e & 0x0F) - 9, rest[1:])
        if 0x50 <= e <= 0x5F:
            return Vif("current", (e & 0x0F) - 12, rest[1:])
        return Vif("other", 0, rest[1:])
    if v == 0x7B and rest:  # FB extension table
        e = rest[0] & 0x7F
        if e <= 0x01:
            return Vif("energy", (e & 0x01) - 1 + 6, rest[1:])  # 10^(n-1) MWh
        return Vif("other", 0, rest[1:])
    return Vif("other", 0, rest)


@dataclass(frozen=True, slots=True)
class DecodedRecord:
    """A record with its value decoded (pyMeterBus) and quantized by its VIF exponent."""

    record: Record
    vif: Vif
    value: Decimal | str | None
    unit: str


def decode_telegram(frame_bytes: bytes) -> tuple[Payload, list[DecodedRecord]]:
    """Validate one RSP_UD and decode its records; MbusFrameError on anything malformed."""
    payload = parse_payload(parse_frame(frame_bytes))
    try:
        telegram = meterbus.load(frame_bytes)
        # pyMeterBus lists manufacturer-specific data (DIF 0x0F/0x1F) and fillers as records: not data records
        parsed = [
            r for r in getattr(telegram, "records", []) if r.dib.parts and r.dib.parts[0] not in (0x0F, 0x1F, 0x2F)
        ]
    except Exception as exc:  # pyMeterBus raises many kinds of errors on odd data
        raise MbusFrameError(f"record values cannot be decoded: {exc}") from exc
    if len(parsed) != len(payload.records):
        raise MbusFrameError(f"record structure disagrees ({len(payload.records)} records, decoder saw {len(parsed)})")
    out = []
    for rec, pm in zip(payload.records, parsed, strict=True):
        vif = decode_vif(rec.vib)
        try:
            value, unit = pm.value, str(getattr(pm, "unit", ""))
        except Exception:  # pyMeterBus decodes lazily and fails on VIFs it does not know: keep the record, no value
            value, unit = None, ""
        if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
            value = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
            if vif.quantity != "other" and rec.data_field != 0x05:  # integer and BCD data: exact to the VIF step
                value = value.quantize(Decimal(1).scaleb(min(vif.exponent, 0)))
        elif value is not None:
            value = str(value)
        out.append(DecodedRecord(rec, vif, value, unit))
    return payload, out


def map_points(profile, records: Sequence[DecodedRecord], points: Sequence[str] | None = None) -> list[PointReading]:
    """Canonical point values from decoded records through an M-Bus profile's rules."""
    out = []
    for name, rule in profile.points.items():
        if points is not None and name not in points:
            continue
        total = None
        found = 0
        for d in records:
            if rule.matches(d.record, d.vif) and isinstance(d.value, Decimal):
                factor = QUANTITY_FACTOR.get(d.vif.quantity, Decimal(1)) * Decimal(str(rule.scale))
                total = (total or Decimal(0)) + d.value * factor
                found += 1
                if not rule.sum:
                    break
        if total is None:
            continue
        out.append(PointReading(name, float(total), None))
    return out


class MbusLink:
    """The serial line: one request/response at a time, frames read by length, garbage resynchronised."""

    def __init__(self, bus: MbusBus, port: str) -> None:
        self.bus = bus
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.lock = asyncio.Lock()
        self.char_time = (1 + bus.bytesize + (0 if bus.parity == "N" else 1) + bus.stopbits) / bus.baudrate

    async def open(self) -> None:
        """Open the serial port."""
        import serial_asyncio_fast

        self.reader, self.writer = await serial_asyncio_fast.open_serial_connection(
            url=self.port,
            baudrate=self.bus.baudrate,
            parity=self.bus.parity,
            stopbits=self.bus.stopbits,
            bytesize=self.bus.bytesize,
        )

    async def close(self) -> None:
        """Close the port."""
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 2)
            self.writer = None

    async def settle(self, limit: float) -> None:
        """Drop what arrives until the line has been quiet for 33 characters (20 ms at least), within `limit` s.

        A late reply left on the line would otherwise be read as the answer to the next request, shifting a
        multi-telegram read by one telegram."""
        if self.reader is None:
            return
        loop = asyncio.get_running_loop()
        end = loop.time() + limit
        quiet = max(33 * self.char_time, 0.02)
        self.flush_input()
        while loop.time() < end:
            try:
                async with asyncio.timeout(min(quiet, end - loop.time())):
                    if not await self.reader.read(512):
                        return  # the port closed
            except TimeoutError:
                return

    def flush_input(self) -> None:
        """Drop whatever is buffered (late replies, garbage)."""
        if self.reader is not None:
            buf = getattr(self.reader, "_buffer", None)
            if buf is not None:
                buf.clear()

    async def exchange(self, request: bytes, expect: bool = True, timeout: float | None = None) -> bytes | None:
        """Send a frame and read one reply frame (None when no reply is expected)."""
        if self.writer is None or self.reader is None:
            raise NoResponse("M-Bus port is not open")
        self.flush_input()
        self.writer.write(request)
        await self.writer.drain()
        if not expect:
            return None
        return await asyncio.wait_for(self._read_frame(), timeout or self.bus.timeout)

    async def _read_frame(self) -> bytes:
        assert self.reader is not None
        buf = b""
        while True:
            size = frame_size(buf) if buf else None
            if size is not None and len(buf) >= size:
                return buf[:size]
            need = 1 if size is None else size - len(buf)
            chunk = await self.reader.readexactly(need) if size is not None else await self.reader.readexactly(1)
            buf += chunk
            if len(buf) == 1 and buf[0] not in (ACK, 0x10, 0x68):
                raise MbusFrameError(f"garbage byte 0x{buf[0]:02X} where a frame should start")


class MbusDriver(Driver):
    """An M-Bus master on one line."""

    kind = "mbus"

    def __init__(self, bus: MbusBus, profiles: ProfileRegistry, port: str | None = None) -> None:
        super().__init__()
        self.bus = bus
        self.profiles = profiles
        self.link = MbusLink(bus, port or bus.port)
        self._fcb: dict[int | str, bool] = {}
        self._logged: set[str] = set()

    async def open(self) -> None:
        """Open the line."""
        self.stats.started = time.monotonic()
        try:
            await self.link.open()
        except Exception as exc:
            log.error("M-Bus bus %s: cannot open %s: %s", self.bus.id, self.link.port, exc)

    async def close(self) -> None:
        """Close the line."""
        await self.link.close()

    async def _transact(self, request: bytes, expect: bool = True) -> bytes | None:
        last: Exception | None = None
        attempts = self.bus.retries + 1
        stall_retried = False
        async with self.link.lock:
            while attempts > 0:
                attempts -= 1
                t0 = time.monotonic()
                self.stats.transactions += 1
                self.stats.bytes_sent += len(request)
                try:
                    self.record_frame("tx", request)
                    reply = await self.link.exchange(request, expect)
                    if reply is not None:
                        self.record_frame("rx", reply)
                    if reply is not None:
                        self.stats.bytes_received += len(reply)
                        parse_frame(reply)  # checksum and stop byte, before anything trusts the reply
                    return reply
                except TimeoutError:
                    if not stall_retried and self.held_up(t0, self.bus.timeout, self.bus.id):
                        stall_retried = True  # the reply may have been read in part when the late timer fired
                        attempts += 1
                        await self.link.settle(self.bus.timeout)  # its late answer must not answer the repeat
                        continue
                    self.stats.timeouts += 1
                    self.stats.failed_transactions += 1
                    last = NoResponse(f"no reply within {self.bus.timeout} s")
                except (MbusFrameError, asyncio.IncompleteReadError) as exc:
                    self.stats.crc_errors += 1
                    self.stats.failed_transactions += 1
                    last = FrameError(str(exc))
                    await asyncio.sleep(self.link.char_time * 33)  # let a collision or garbage pass
                finally:
                    self.stats.busy_time += time.monotonic() - t0
        assert last is not None
        raise NoResponse(str(last)) from last

    async def _select(self, meter_address: int | str) -> int:
        """Address to poll: the primary address, or 253 after selecting the secondary id."""
        if isinstance(meter_address, int):
            return meter_address
        reply = await self._transact(select_secondary(str(meter_address)))
        if reply != bytes([ACK]):
            raise NoResponse(f"secondary address {meter_address} not confirmed")
        return ADDR_NETWORK

    async def read_telegrams(self, meter_address: int | str) -> tuple[list[Payload], list[DecodedRecord]]:
        """REQ_UD2 until the meter has sent everything (within the bus's max_telegrams)."""
        addr = await self._select(meter_address)
        payloads: list[Payload] = []
        records: list[DecodedRecord] = []
        for _n in range(self.bus.max_telegrams):
            fcb = self._fcb.get(meter_address, True)
            reply = await self._transact(req_ud2(addr, fcb))
            self._fcb[meter_address] = not fcb
            assert reply is not None
            try:
                payload, decoded = decode_telegram(reply)
            except MbusFrameError as exc:
                self.stats.frame_errors += 1
                key = f"frame-{meter_address}"
                level = logging.WARNING if key not in self._logged else logging.DEBUG
                self._logged.add(key)
                log.log(level, "M-Bus meter %s: telegram refused: %s", meter_address, exc)
                raise FrameError(str(exc)) from exc
            payloads.append(payload)
            records += decoded
            if not payload.more_follows:
                break
        return payloads, records

    async def read(self, meter: MeterConfig, points: Sequence[str]) -> list[PointReading]:
        """Read all telegrams of a meter and map the requested points."""
        try:
            _payloads, records = await self.read_telegrams(meter.address)
        except FrameError as exc:
            raise NoResponse(f"meter {meter.id}: {exc}") from exc
        return map_points(self.profiles.get(meter.profile), records, points)

    async def write(self, meter: MeterConfig, point: str, value: float | int | bool) -> None:
        """M-Bus meters are read-only through the gateway."""
        raise WriteRejected("M-Bus meters accept no writes through the gateway")

    async def reset_link(self, address: int) -> bool:
        """SND_NKE; True when the meter acknowledged."""
        try:
            reply = await self._transact(snd_nke(address))
        except NoResponse:
            return False
        self._fcb[address] = True
        return reply == bytes([ACK])

    async def scan_primary(self, addresses: Sequence[int] = range(0, 251)) -> list[int]:
        """Primary addresses that acknowledge SND_NKE."""
        return [a for a in addresses if await self.reset_link(a)]

    async def scan_secondary(self, prefix: str = "") -> list[str]:
        """Wildcard search: select ids digit by digit; a collision (garbled reply) refines the next digit."""
        found: list[str] = []

        async def probe(pattern: str) -> str:
            async with self.link.lock:
                self.stats.transactions += 1
                try:
                    reply = await self.link.exchange(select_secondary(pattern.ljust(8, "F")))
                except TimeoutError:
                    return "none"
                except (MbusFrameError, asyncio.IncompleteReadError):
                    await asyncio.sleep(self.link.char_time * 33)
                    return "collision"
            return "one" if reply == bytes([ACK]) else "collision"

        async def search(pattern: str) -> None:
            result = await probe(pattern)
            if result == "none":
                return
            if result == "one" or len(pattern) == 8:
                fcb = self._fcb.get("scan", True)
                self._fcb["scan"] = not fcb
                reply = await self._transact(req_ud2(ADDR_NETWORK, fcb))
                assert reply is not None
                payload = parse_payload(parse_frame(reply))
                if payload.header is not None:
                    found.append(payload.header.ident)
                return
            for digit in "0123456789":
                await search(pattern + digit)

        await search(prefix)
        return sorted(set(found))
