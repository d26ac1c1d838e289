"""M-Bus master (EN 13757-2/-3) over pyserial-asyncio-fast: link layer, primary and secondary addressing,
multi-telegram reads, wildcard search, and record mapping through M-Bus profiles.

Frames are validated by meter_gateway.mbus_frame (length, checksum, record structure); records are named and
decoded by meter_gateway.drivers.mbus_records (EN 13757-3:2018), exact to their resolution.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from ..config import MbusBus, MeterConfig
from ..mbus_frame import (
    ACK,
    ADDR_NETWORK,
    MbusFrameError,
    Payload,
    frame_size,
    parse_frame,
    parse_payload,
    req_ud2,
    select_secondary,
    snd_nke,
)
from ..profiles import ProfileRegistry
from .base import Driver, FrameError, NoResponse, PointReading, WriteRejected, WrongDevice
from .mbus_records import (
    DecodedRecord,
    Mapping,
    Vib,
    decode_telegram,
    decode_vib,
    map_records,
    medium_name,
)

log = logging.getLogger(__name__)


#: kept for callers of the former API: the record decoder now lives in mbus_records (EN 13757-3:2018, whole)
Vif = Vib
decode_vif = decode_vib


def check_medium(profile, payloads: Sequence[Payload]) -> None:
    """Raise WrongDevice when a telegram header names a medium the profile does not accept."""
    accepted = profile.medium_codes
    for p in payloads:
        if p.header is not None and p.header.medium not in accepted:
            raise WrongDevice(
                f"wrong device: the meter reports medium {medium_name(p.header.medium)} "
                f"(0x{p.header.medium:02X}, manufacturer {p.header.manufacturer}, version {p.header.version}); "
                f"profile {profile.name} reads {', '.join(profile.media)} only"
            )


def map_points(profile, records: Sequence[DecodedRecord], points: Sequence[str] | None = None) -> list[PointReading]:
    """Canonical point values from decoded records through an M-Bus profile's rules (withheld points as errors)."""
    m = map_records(profile, list(records), points)
    out = [PointReading(name, float(value), None) for name, value in m.values.items()]
    out += [PointReading(name, None, None, why) for name, why in m.withheld.items()]
    return out


def _header_text(payloads: Sequence[Payload]) -> str:
    h = next((p.header for p in payloads if p.header is not None), None)
    return "no header" if h is None else f"{h.manufacturer} version {h.version} id {h.ident}"


def unmapped_summary(records: Sequence[DecodedRecord], mapping: Mapping) -> str:
    """One line per unmapped record: its description and why no point takes it."""
    return "; ".join(f"#{i} {records[i].vib.description}: {why}" for i, why in sorted(mapping.unmapped.items()))


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
        #: the last read of each meter: its telegrams, decoded records and their mapping (`read --records`)
        self.last_read: dict[str, tuple[list[Payload], list[DecodedRecord], Mapping]] = {}

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
                    reply = await self.link.exchange(request, expect)
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
        """Read all telegrams of a meter, check its medium and map the requested points."""
        try:
            payloads, records = await self.read_telegrams(meter.address)
        except FrameError as exc:
            raise NoResponse(f"meter {meter.id}: {exc}") from exc
        profile = self.profiles.get(meter.profile)
        mapping = map_records(profile, records)
        self.last_read[meter.id] = (payloads, records, mapping)
        check_medium(profile, payloads)
        key = f"unmapped-{meter.id}"
        if mapping.unmapped and key not in self._logged:  # once per meter: the layout does not change
            self._logged.add(key)
            log.info(
                "M-Bus meter %s (profile %s): %d record(s) not mapped: %s",
                meter.id,
                profile.name,
                len(mapping.unmapped),
                unmapped_summary(records, mapping),
            )
        missing = [n for n in profile.points if n not in mapping.values and n not in mapping.withheld]
        key = f"missing-{meter.id}"
        if missing and key not in self._logged:  # a point the profile promises that no record gives: say so once
            self._logged.add(key)
            level = logging.WARNING if "Active_Energy_Import" in missing else logging.INFO  # billing value: warn
            log.log(
                level,
                "M-Bus meter %s (profile %s, %s): no record gives %s; `meter-gateway read %s --records` lists them",
                meter.id,
                profile.name,
                _header_text(payloads),
                ", ".join(missing),
                meter.id,
            )
        wanted = set(points)
        out = [PointReading(n, float(v), None) for n, v in mapping.values.items() if n in wanted]
        out += [PointReading(n, None, None, why) for n, why in mapping.withheld.items() if n in wanted]
        return out

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
