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
from dataclasses import dataclass

from ..config import MbusBus, MeterConfig
from ..core.catalogue import load_catalogue
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


@dataclass
class LinkState:
    """What the master knows of one meter's link layer (EN 13757-2 FCB/FCV, multi-telegram position)."""

    fcb: bool = True  # FCB of the next new REQ_UD2 (a repeat after a lost reply keeps the same FCB)
    synced: bool = False  # FCB known to agree with the meter: a SND_NKE was acknowledged and nothing failed since
    telegrams: int = 0  # telegrams of the last complete readout (0: not known yet)
    always_reset: bool = False  # the meter's replies give no way to tell a repeat from new data across reads
    complete: bool = True  # whether the last readout reached the meter's last telegram
    last: Payload | None = None  # the last RSP_UD received (to recognise a repeated one)


class RepeatedTelegram(FrameError):
    """The meter sent a telegram it had already sent in place of the next one (FCB state out of step)."""


def same_telegram(a: Payload, b: Payload, access: bool = True) -> bool:
    """Whether two RSP_UD carry the same telegram: same sender, same record layout (and access number)."""
    if (a.header is None) != (b.header is None) or a.ci != b.ci or a.more_follows != b.more_follows:
        return False
    if [(r.dib, r.vib) for r in a.records] != [(r.dib, r.vib) for r in b.records]:
        return False
    if a.header is None or b.header is None:
        return not access or [r.data for r in a.records] == [r.data for r in b.records]
    fields = ("ident", "manufacturer_code", "version", "medium") + (("access_no",) if access else ())
    return all(getattr(a.header, k) == getattr(b.header, k) for k in fields)


class MbusDriver(Driver):
    """An M-Bus master on one line, to EN 13757-2: SND_NKE to start a meter's link, FCB toggled per transaction.

    A readout always starts at the meter's first telegram: the link is reset (SND_NKE) before the first read of a
    meter, after any failure, after a readout that stopped early, and before every read of a meter that answers in
    several telegrams. A telegram sent again in place of the next one is recognised and never read as new data.
    """

    kind = "mbus"

    def __init__(self, bus: MbusBus, profiles: ProfileRegistry, port: str | None = None) -> None:
        super().__init__()
        self.bus = bus
        self.profiles = profiles
        self.link = MbusLink(bus, port or bus.port)
        self.links: dict[int | str, LinkState] = {}
        self._readout = asyncio.Lock()  # one readout (selection, reset, telegrams) at a time
        self._logged: set[str] = set()
        #: the last read of each meter: its telegrams, decoded records and their mapping (`read --records`)
        self.last_read: dict[str, tuple[list[Payload], list[DecodedRecord], Mapping]] = {}
        self._scan_fcb = True

    def _log_once(self, key: str, level: int, msg: str, *args) -> None:
        """Log at `level` the first time for `key`, at debug after that."""
        log.log(level if key not in self._logged else logging.DEBUG, msg, *args)
        self._logged.add(key)

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

    async def _transact(self, request: bytes, expect: bool = True, silence_ok: bool = False) -> bytes | None:
        """One request and its reply, repeated unchanged (same FCB) on a missing or bad reply.

        With silence_ok a missing reply is no failure: one attempt, None returned."""
        last: Exception | None = None
        attempts = 1 if silence_ok else self.bus.retries + 1
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
                    if silence_ok:
                        return None
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

    async def _select(self, meter_address: str) -> None:
        """Select a meter by its secondary address (SND_UD CI 0x52 to 253); it answers E5."""
        reply = await self._transact(select_secondary(meter_address))
        if reply != bytes([ACK]):
            raise NoResponse(f"secondary address {meter_address} not confirmed")

    async def _reset(self, address: int, state: LinkState) -> None:
        """SND_NKE: the meter clears its FCB (the next new request carries FCB=1) and restarts its readout."""
        if address == ADDR_NETWORK:
            # to 253 only the selected meter listens; it is deselected, and not every make answers E5
            reply = await self._transact(snd_nke(address), silence_ok=True)
        else:
            reply = await self._transact(snd_nke(address))
            if reply != bytes([ACK]):
                raise NoResponse(f"link reset (SND_NKE) to {address} not acknowledged")
        if reply not in (None, bytes([ACK])):
            raise NoResponse(f"link reset (SND_NKE) to {address} answered with a {len(reply)}-byte frame, not E5")
        self.stats.link_resets += 1
        state.fcb = True
        state.synced = True
        state.last = None

    async def _start(self, meter_address: int | str, state: LinkState, reset: bool) -> int:
        """Address the meter (selecting it if secondary) and reset its link when asked; returns the address."""
        if isinstance(meter_address, int):
            if reset:
                await self._reset(meter_address, state)
            return meter_address
        await self._select(meter_address)
        if reset:  # SND_NKE to 253 deselects the meter (EN 13757-3): select it again
            await self._reset(ADDR_NETWORK, state)
            await self._select(meter_address)
        return ADDR_NETWORK

    async def read_telegrams(self, meter_address: int | str) -> tuple[list[Payload], list[DecodedRecord]]:
        """A whole readout from the first telegram: REQ_UD2 until the last one (within the bus's max_telegrams).

        `self.links[meter_address].complete` tells whether the meter's last telegram was reached."""
        state = self.links.setdefault(meter_address, LinkState())
        async with self._readout:
            for attempt in range(2):
                try:
                    return await self._read_once(meter_address, state, force_reset=attempt > 0)
                except RepeatedTelegram as exc:
                    state.synced = False
                    self.stats.repeated_replies += 1
                    if attempt:
                        raise
                    self._log_once(
                        f"repeat-{meter_address}",
                        logging.WARNING,
                        "M-Bus meter %s: %s; not read as new data, readout restarted after a link reset",
                        meter_address,
                        exc,
                    )
                except BaseException:
                    state.synced = False  # a failure may leave the meter anywhere in its sequence or FCB state
                    raise
        raise AssertionError("unreachable")

    async def _read_once(
        self, meter_address: int | str, state: LinkState, force_reset: bool
    ) -> tuple[list[Payload], list[DecodedRecord]]:
        previous = state.last
        reset = force_reset or not state.synced or state.always_reset or state.telegrams != 1
        suspect = None if reset else previous
        addr = await self._start(meter_address, state, reset)
        payloads: list[Payload] = []
        records: list[DecodedRecord] = []
        state.complete = False
        for n in range(self.bus.max_telegrams):
            reply = await self._transact(req_ud2(addr, state.fcb))
            state.fcb = not state.fcb  # a valid reply ends the transaction: the next request is a new one
            assert reply is not None
            try:
                payload, decoded = decode_telegram(reply)
            except MbusFrameError as exc:
                self.stats.frame_errors += 1
                key = f"frame-{meter_address}"
                self._log_once(key, logging.WARNING, "M-Bus meter %s: telegram refused: %s", meter_address, exc)
                raise FrameError(str(exc)) from exc
            if n == 0 and suspect is not None and same_telegram(suspect, payload):
                raise RepeatedTelegram("the first telegram of a read is the last one of the previous read again")
            if any(same_telegram(p, payload, access=False) for p in payloads):
                raise RepeatedTelegram(f"telegram {n + 1} of a readout repeats an earlier one")
            if n == 0 and force_reset and previous is not None and same_telegram(previous, payload):
                # after a link reset the meter sends the same access number again: it does not count its replies,
                # so a repeat cannot be told from new data without a reset: reset before every read from now on
                state.always_reset = True
            payloads.append(payload)
            records += decoded
            state.last = payload
            if not payload.more_follows:
                state.complete = True
                break
        if state.complete:
            state.telegrams = len(payloads)
        else:
            state.synced = False  # the meter is left in the middle of its sequence: reset before the next read
        return payloads, records

    async def read(self, meter: MeterConfig, points: Sequence[str]) -> list[PointReading]:
        """Read all telegrams of a meter, check its medium and map the requested points (no energy from an
        incomplete readout)."""
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
        if not self.links[meter.address].complete:
            out = self.withhold_partial(meter, profile, out)
        return out

    def withhold_partial(self, meter: MeterConfig, profile, readings: list[PointReading]) -> list[PointReading]:
        """The readings an incomplete readout may publish: none of its energies, nothing summed over tariffs.

        More telegrams followed than max_telegrams allows: a billing value assembled from part of a readout can be
        wrong (a tariff missing from a sum, a register in another unit in a later telegram, an ambiguity not seen);
        points not read keep their last value, read time and quality."""
        self.stats.incomplete_reads += 1
        self._log_once(
            f"incomplete-{meter.id}",
            logging.WARNING,
            "M-Bus meter %s: more telegrams follow after max_telegrams=%d of bus %s; its energies are not published"
            " and points of the telegrams not read keep their last value and age; raise max_telegrams",
            meter.id,
            self.bus.max_telegrams,
            self.bus.id,
        )
        catalogue = load_catalogue()
        return [
            r
            for r in readings
            if not catalogue.get(r.point).is_energy and not getattr(profile.points.get(r.point), "sum", False)
        ]

    async def write(self, meter: MeterConfig, point: str, value: float | int | bool) -> None:
        """M-Bus meters are read-only through the gateway."""
        raise WriteRejected("M-Bus meters accept no writes through the gateway")

    async def reset_link(self, address: int) -> bool:
        """SND_NKE; True when the meter acknowledged."""
        state = self.links.get(address, LinkState())
        try:
            await self._reset(address, state)
        except NoResponse:
            state.synced = False
            return False
        self.links[address] = state
        return True

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
                # the meter's FCB state is unknown here: a repeated reply still carries its own identification
                fcb = self._scan_fcb
                self._scan_fcb = not fcb
                reply = await self._transact(req_ud2(ADDR_NETWORK, fcb))
                assert reply is not None
                payload = parse_payload(parse_frame(reply))
                if payload.header is not None:
                    found.append(payload.header.ident)
                    self.links.pop(payload.header.ident, None)  # its readout position moved: reset before reading
                return
            for digit in "0123456789":
                await search(pattern + digit)

        await search(prefix)
        return sorted(set(found))
