"""Modbus RTU and Modbus TCP masters (pymodbus clients): planned block reads, writes, noise filter, bus pacing."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from ..config import MeterConfig, ModbusRtuBus, ModbusTcpBus
from ..core.catalogue import Catalogue, PointKind, load_catalogue
from ..core.codec import (
    CodecError,
    DataType,
    WordOrder,
    decode,
    encode,
    from_engineering,
    is_not_available,
    normalise_pf,
    to_engineering,
)
from ..core.planner import ReadBlock, plan_reads
from ..profiles import ModbusProfile, ProfileRegistry
from .base import Driver, FrameError, MeterException, NoResponse, PointReading, WriteRejected

log = logging.getLogger(__name__)
# pymodbus logs every failed transaction (and dumps frames) at error level; the driver logs each problem once itself.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def crc16(data: bytes) -> int:
    """Modbus RTU CRC-16 (little-endian on the wire: low byte first)."""
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def rtu_frame_ok(frame: bytes) -> bool:
    """True when the last two bytes are the CRC of the rest."""
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


def expected_reply_length(data: bytes) -> int | None:
    """Length of an RTU reply starting at data[0], or None when not yet known."""
    if len(data) < 2:
        return None
    fn = data[1]
    if fn & 0x80:
        return 5
    if fn in (1, 2, 3, 4, 0x17):
        return None if len(data) < 3 else 5 + data[2]
    if fn in (5, 6, 15, 16):
        return 8
    return None


def decode_point(catalogue: Catalogue, prof: ModbusProfile, name: str, data: list, off: int) -> PointReading:
    """Decode one point from the registers (or bits) of a read block starting at `off`."""
    p = prof.points[name]
    pdef = catalogue.get(name)
    try:
        if prof.function_of(name) in (1, 2):
            if off >= len(data):
                raise CodecError("short reply")
            raw_bit = bool(data[off])
            return PointReading(name, _state(pdef.bacnet_type, int(raw_bit ^ p.invert), p.map), (int(raw_bit),))
        n = prof.count_of(name)
        regs = tuple(data[off : off + n])
        if len(regs) != n:
            raise CodecError("short reply")
        dtype = prof.type_of(name)
        raw = decode(list(regs), dtype, prof.word_order_of(name))
        if is_not_available(regs, dtype, prof.word_order_of(name), prof.na_of(name)):
            return PointReading(name, None, regs, "meter reports the value as not available")
        if p.bit is not None:
            bit = (int(raw) >> p.bit) & 1
            return PointReading(name, _state(pdef.bacnet_type, bit ^ int(p.invert), p.map), regs)
        if pdef.bacnet_type == "multi-state-value" and pdef.kind is not PointKind.CONFIG:
            return PointReading(name, _state(pdef.bacnet_type, int(raw), p.map), regs)
        if dtype is DataType.FLOAT32:
            raw = float(f"{raw:.7g}")  # float32 carries ~7 significant digits; drop binary noise
        value = to_engineering(raw, prof.scale_of(name), p.offset)
        conv = prof.conventions
        if conv is not None and conv.reactive_power == "import_negative" and name == "Reactive_Power_Total":
            value = -value
        if pdef.name == "Demand_Peak_Timestamp" or pdef.allowed_values:
            value = round(value)
        elif pdef.resolution:
            value = round(value, 6)
        return PointReading(name, value, regs)
    except CodecError as exc:
        return PointReading(name, None, None, f"cannot decode: {exc}")


#: The active power whose sign gives a power factor its sign (docs/conventions.md).
PF_SIGN_SOURCE = {
    "Power_Factor_Total": "Active_Power_Total",
    "Power_Factor_L1": "Active_Power_L1",
    "Power_Factor_L2": "Active_Power_L2",
    "Power_Factor_L3": "Active_Power_L3",
}


def pf_sign_sources(prof: ModbusProfile, points: Sequence[str]) -> list[str]:
    """Active-power points a poll of `points` must also read to normalise the power factors' sign."""
    if prof.conventions is None or prof.conventions.power_factor == "active_power_sign":
        return []
    out: list[str] = []
    for name in points:
        src = _pf_source(prof, name)
        if src is not None and src not in points and src not in out:
            out.append(src)
    return out


def _pf_source(prof: ModbusProfile, name: str) -> str | None:
    src = PF_SIGN_SOURCE.get(name)
    if src is None:
        return None
    if src not in prof.points and prof.phases == 1 and src == "Active_Power_L1":
        src = "Active_Power_Total"
    return src if src in prof.points else ""


def normalise_power_factors(prof: ModbusProfile, readings: list[PointReading]) -> list[PointReading]:
    """Give each power factor the sign of its active power (catalogue convention) unless the meter already does."""
    if prof.conventions is None or prof.conventions.power_factor == "active_power_sign":
        return readings
    by_name = {r.point: r for r in readings}
    out = []
    for r in readings:
        src = _pf_source(prof, r.point)
        if src is None or r.error is not None or r.value is None:
            out.append(r)
            continue
        power = by_name.get(src) if src else None
        if power is None or power.error is not None or not isinstance(power.value, int | float):
            why = f"{src} not read" if src else "the profile maps no active power for it"
            out.append(PointReading(r.point, None, r.raw, f"power factor sign unknown: {why}"))
            continue
        out.append(PointReading(r.point, normalise_pf(float(r.value), float(power.value)), r.raw))
    return out


def _state(bacnet_type: str, raw: int, mapping: dict[int, int] | None) -> bool | int:
    v = mapping.get(raw, raw) if mapping else raw
    if bacnet_type in ("binary-input", "binary-output"):
        return bool(v)
    return int(v)


class ModbusDriver(Driver):
    """A Modbus master on one bus (RTU line or TCP endpoint); one transaction at a time."""

    def __init__(
        self,
        bus: ModbusRtuBus | ModbusTcpBus,
        profiles: ProfileRegistry,
        *,
        port: str | None = None,
        host: str | None = None,
        tcp_port: int | None = None,
    ) -> None:
        super().__init__()
        self.bus = bus
        self.kind = bus.type
        self.profiles = profiles
        self.catalogue = load_catalogue()
        self._port = port or getattr(bus, "port", "")
        self._host = host or getattr(bus, "host", "127.0.0.1")
        self._tcp_port = tcp_port if tcp_port is not None else getattr(bus, "port", 502)
        self._client: AsyncModbusSerialClient | AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()
        self._last_end = 0.0
        self._expect_unit: int | None = None
        self._rx = b""
        self._plans: dict[tuple[str, frozenset[str]], list[ReadBlock]] = {}
        #: (profile, points, split) -> (points, plan): meters of one profile share one plan and one set of names
        self._shared_plans: dict[tuple[str, frozenset[str], frozenset], tuple[frozenset[str], list[ReadBlock]]] = {}
        self._split: dict[str, set[tuple[int, int]]] = {}
        self._logged: set[str] = set()
        if isinstance(bus, ModbusRtuBus):
            char_time = (1 + bus.bytesize + (0 if bus.parity == "N" else 1) + bus.stopbits) / bus.baudrate
            self.char_time = char_time
            default_gap = max(3.5 * char_time, 0.00175)
            self.gap = bus.inter_frame_gap if bus.inter_frame_gap is not None else default_gap
        else:
            self.char_time = 0.0
            self.gap = 0.0

    # -- transport ------------------------------------------------------------------------------
    def _trace(self, sending: bool, data: bytes) -> bytes:
        self.record_frame("tx" if sending else "rx", data)
        if sending:
            self.stats.bytes_sent += len(data)
            return data
        self._rx = data
        if self.kind != "modbus_rtu" or not data or self._expect_unit is None:
            return data
        if data[0] == self._expect_unit:
            n = expected_reply_length(data)
            if n is None or len(data) < n or rtu_frame_ok(data[:n]):
                return data
        # Leading noise (a byte from a miswired line, an echo): find the real reply and hide the noise from the framer,
        # keeping the buffer length so the framer consumes everything it was given.
        for k in range(1, len(data)):
            if data[k] != self._expect_unit:
                continue
            n = expected_reply_length(data[k:])
            if n is None or len(data) - k < n:
                return b""  # wait for the rest of the frame
            if rtu_frame_ok(data[k : k + n]):
                self._log_once(
                    "noise", logging.WARNING, "bus %s: dropped %d noise byte(s) before a reply", self.bus.id, k
                )
                return data[k:] + bytes(k)
        return b""

    def _log_once(self, key: str, level: int, msg: str, *args: object) -> None:
        """Log a recurring problem once at `level`, then at debug."""
        if key in self._logged:
            log.debug(msg, *args)
        else:
            self._logged.add(key)
            log.log(level, msg, *args)

    async def open(self) -> None:
        """Create the pymodbus client and try to connect (a failure is retried at each transaction)."""
        b = self.bus
        if isinstance(b, ModbusRtuBus):
            self._client = AsyncModbusSerialClient(
                self._port,
                framer=FramerType.RTU,
                baudrate=b.baudrate,
                bytesize=b.bytesize,
                parity=b.parity,
                stopbits=b.stopbits,
                timeout=b.timeout,
                retries=0,
                reconnect_delay=0,
                trace_packet=self._trace,
                name=f"bus-{b.id}",
            )
        else:
            self._client = AsyncModbusTcpClient(
                self._host,
                port=self._tcp_port,
                timeout=b.timeout,
                retries=0,
                reconnect_delay=0,
                trace_packet=self._trace,
                name=f"bus-{b.id}",
            )
        self.stats.started = time.monotonic()
        await self._connect()

    async def _connect(self) -> bool:
        assert self._client is not None
        if self._client.connected:
            return True
        try:
            ok = await asyncio.wait_for(self._client.connect(), timeout=max(self.bus.timeout, 1.0))
        except (TimeoutError, OSError, ModbusException) as exc:
            self._log_once("connect", logging.ERROR, "bus %s: cannot connect: %s", self.bus.id, exc)
            return False
        if not ok:
            self._log_once("connect", logging.ERROR, "bus %s: cannot open %s", self.bus.id, self._where())
        else:
            self._logged.discard("connect")
        return bool(ok)

    def _where(self) -> str:
        return self._port if self.kind == "modbus_rtu" else f"{self._host}:{self._tcp_port}"

    async def close(self) -> None:
        """Close the client."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _call(self, unit: int, fn: int, address: int, arg: int | list[int] | bool | list[bool]):
        """One request/response with retries, pacing and statistics; returns the pymodbus response."""
        if self._client is None:
            raise NoResponse(f"bus {self.bus.id} is not open")
        c = self._client
        ops = {
            1: lambda: c.read_coils(address, count=arg, device_id=unit),
            2: lambda: c.read_discrete_inputs(address, count=arg, device_id=unit),
            3: lambda: c.read_holding_registers(address, count=arg, device_id=unit),
            4: lambda: c.read_input_registers(address, count=arg, device_id=unit),
            5: lambda: c.write_coil(address, bool(arg), device_id=unit),
            6: lambda: c.write_register(address, int(arg), device_id=unit),  # type: ignore[arg-type]
            15: lambda: c.write_coils(address, list(arg), device_id=unit),  # type: ignore[arg-type]
            16: lambda: c.write_registers(address, list(arg), device_id=unit),  # type: ignore[arg-type]
        }
        last_error: Exception | None = None
        attempts = self.bus.retries + 1
        stall_retried = False
        async with self._lock:
            while attempts > 0:
                attempts -= 1
                if not await self._connect():
                    last_error = NoResponse(f"{self._where()} not reachable")
                    await asyncio.sleep(min(self.bus.timeout, 0.5))
                    continue
                wait = self._last_end + self.gap - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._expect_unit = unit
                self._rx = b""
                t0 = time.monotonic()
                self.stats.transactions += 1
                try:
                    rsp = await ops[fn]()
                except (ModbusIOException, ConnectionException, TimeoutError, OSError) as exc:
                    if not stall_retried and self.held_up(t0, self.bus.timeout, self.bus.id):
                        stall_retried = True
                        attempts += 1
                        # RTU has no transaction id: let a late answer arrive while nothing is asked (pymodbus drops
                        # it) rather than be taken for the answer to the next request
                        await asyncio.sleep(min(self.bus.timeout, 256 * self.char_time + 0.02))
                        continue
                    self.stats.failed_transactions += 1
                    if self._rx:
                        self.stats.crc_errors += 1
                        last_error = FrameError(f"unit {unit}: malformed or corrupted reply ({len(self._rx)} bytes)")
                    else:
                        self.stats.timeouts += 1
                        last_error = NoResponse(f"unit {unit}: no reply within {self.bus.timeout} s ({exc})")
                    continue
                except ModbusException as exc:
                    self.stats.failed_transactions += 1
                    self.stats.frame_errors += 1
                    last_error = FrameError(f"unit {unit}: {exc}")
                    continue
                finally:
                    self._last_end = time.monotonic()
                    self.stats.busy_time += self._last_end - t0
                    self.stats.bytes_received += len(self._rx)
                    self._expect_unit = None
                if rsp.isError():
                    self.stats.exceptions += 1
                    code = getattr(rsp, "exception_code", None)
                    raise MeterException(f"unit {unit}: exception {code} for function {fn} at {address}", code)
                return rsp
        assert last_error is not None
        if isinstance(last_error, FrameError):
            raise NoResponse(str(last_error)) from last_error
        raise last_error

    # -- reads ------------------------------------------------------------------------------------
    def _profile(self, meter: MeterConfig) -> ModbusProfile:
        prof = self.profiles.get(meter.profile)
        assert isinstance(prof, ModbusProfile)
        return prof

    def plan(self, meter: MeterConfig, points: Sequence[str]) -> list[ReadBlock]:
        """The (cached) reads that fetch `points` from `meter`."""
        names = frozenset(points)
        plan = self._plans.get((meter.id, names))
        if plan is None:
            split = frozenset(self._split.get(meter.id, ()))
            shared = self._shared_plans.get((meter.profile, names, split))
            if shared is None:
                shared = self._shared_plans[(meter.profile, names, split)] = (
                    names,
                    plan_reads(self._profile(meter), points, split),
                )
            names, plan = shared
            self._plans[(meter.id, names)] = plan
        return plan

    def transactions_for(self, meter: MeterConfig, points: Sequence[str]) -> int:
        """Reads one poll of `points` takes (with the active powers that sign its power factors)."""
        return len(self.plan(meter, [*points, *pf_sign_sources(self._profile(meter), points)]))

    async def read(self, meter: MeterConfig, points: Sequence[str]) -> list[PointReading]:
        """Read points with planned block reads; raise NoResponse if no block was answered."""
        prof = self._profile(meter)
        extra = pf_sign_sources(prof, points)
        if extra:
            points = [*points, *extra]
        unit = int(meter.address)
        out: list[PointReading] = []
        answered = 0
        last: NoResponse | None = None
        for block in self.plan(meter, points):
            try:
                rsp = await self._call(unit, block.function, block.address, block.count)
            except MeterException as exc:
                answered += 1
                if exc.code == 2 and len(block.points) > 1:
                    # the meter refuses a merged read across a hole: read these points one by one from now on
                    self._split.setdefault(meter.id, set()).update(
                        (block.function, prof.points[n].address) for n, _ in block.points
                    )
                    self._plans = {k: v for k, v in self._plans.items() if k[0] != meter.id}
                    self._log_once(
                        f"split-{meter.id}",
                        logging.WARNING,
                        "meter %s refused a merged read at %d+%d: reading those points singly",
                        meter.id,
                        block.address,
                        block.count,
                    )
                    out += await self.read(meter, [n for n, _ in block.points])
                else:
                    out += [PointReading(n, None, None, f"meter exception {exc.code}") for n, _ in block.points]
                continue
            except NoResponse as exc:
                last = exc
                if answered == 0:
                    raise  # a silent meter: don't spend more bus time on it this cycle
                out += [PointReading(n, None, None, str(exc)) for n, _ in block.points]
                continue
            answered += 1
            data = rsp.bits if block.is_bits else rsp.registers
            for name, off in block.points:
                out.append(decode_point(self.catalogue, prof, name, data, off))
        if answered == 0 and last is not None:
            raise last
        return normalise_power_factors(prof, out)

    # -- writes -------------------------------------------------------------------------------------
    async def write(self, meter: MeterConfig, point: str, value: float | int | bool) -> None:
        """Write a configuration point, carry out a command, or reset energy, as the profile declares."""
        prof = self._profile(meter)
        pdef = self.catalogue.get(point)
        unit = int(meter.address)
        if pdef.kind is PointKind.COMMAND:
            cmd = prof.commands.get(point)
            if cmd is None:
                raise WriteRejected(f"profile {prof.name} declares no {point} command")
            await self._command(unit, cmd, value)
            return
        if pdef.is_energy:
            if prof.energy_reset is None:
                raise WriteRejected(f"profile {prof.name} declares no energy reset")
            await self._command(unit, prof.energy_reset, value)
            return
        p = prof.points.get(point)
        if p is None or p.write is None:
            raise WriteRejected(f"profile {prof.name} declares no write for {point}")
        dtype = prof.type_of(point)
        integer = dtype not in (DataType.FLOAT32, DataType.FLOAT64)
        try:
            raw = from_engineering(float(value), prof.scale_of(point), p.offset, integer=integer)
            regs = encode(raw, dtype, prof.word_order_of(point))
        except CodecError as exc:
            raise WriteRejected(f"{point}={value}: {exc}") from exc
        address = p.write.address if p.write.address is not None else p.address
        if p.write.function == 6:
            if len(regs) != 1:
                raise WriteRejected(f"{point}: function 6 writes one register, the type needs {len(regs)}")
            await self._call(unit, 6, address, regs[0])
        else:
            await self._call(unit, 16, address, regs)

    async def _command(self, unit: int, cmd, value: float | int | bool) -> None:
        if cmd.format is not None:
            order = WordOrder.LITTLE if cmd.format == "unix32_le" else WordOrder.BIG
            regs = encode(int(value), DataType.UINT32, order)
            await self._call(unit, 16, cmd.address, regs)
        elif cmd.function == 5:
            await self._call(unit, 5, cmd.address, bool(cmd.value))
        elif cmd.function == 15:
            await self._call(unit, 15, cmd.address, [bool(cmd.value)])
        elif cmd.function == 6:
            await self._call(unit, 6, cmd.address, int(cmd.value if cmd.value is not None else cmd.values[0]))
        else:
            await self._call(unit, 16, cmd.address, list(cmd.values) if cmd.values is not None else [int(cmd.value)])


async def scan_modbus(driver: ModbusDriver, units: Sequence[int]) -> list[dict]:
    """Probe unit ids on an open driver; for each answering unit, identify the model (drivers/identify.py)."""
    from .identify import identify_or_guess

    found = []
    for unit in units:
        try:
            await driver._call(unit, 3, 0, 1)
        except MeterException:
            pass  # an exception reply still proves a device answers at this unit id
        except NoResponse:
            continue
        ident = await identify_or_guess(driver, unit, driver.profiles)
        found.append(
            {
                "unit": unit,
                "profile": ident.profile,
                "variant": ident.variant,
                "evidence": ident.evidence,
                "identified": ident.by_registers and ident.profile is not None,
            }
        )
    return found
