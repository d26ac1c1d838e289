"""Upstream Modbus TCP slave: one unit id per meter, the canonical register map, answers from the table only.

pymodbus 3.16 is used for framing and transport. Requests reach `GatewayContext`, which stands where pymodbus puts
its SimCore (same three methods), so every read is built from the point table and every write goes through the
write service. Register reads (functions 3 and 4), the bulk of SCADA traffic, are answered by the request handler
itself, synchronously and in order, from `GatewayContext.read` (no pymodbus decoding, no task per request); a read
already answered is answered again with the same bytes until a value of its meter changes in the table (a table
listener drops that meter's replies), the meter goes offline or is re-added; reads touching the diagnostics block
are always built afresh. The request-handler subclass also records the client's address (for write allowlists)
and answers each request with its own transaction id even when a client pipelines requests during a slow write.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import socket
import struct
import time
from typing import TYPE_CHECKING

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simutils import DataType as SimType

from ..core.catalogue import PointKind
from ..core.codec import CodecError, WordOrder, encode
from ..core.codec import DataType as CodecType
from ..core.quality import Quality
from ..core.table import COMM_STATUS, MeterState
from ..core.upstream_map import DIAGNOSTICS, NEVER, TABLE_FC, UpstreamMap, journal_state_code
from ..ratelog import OnceLog
from ..writes import Decision, WriteRequest
from .base import Server, ServerStartError

if TYPE_CHECKING:
    from ..ports import ServerPorts

log = logging.getLogger(__name__)
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # it logs bad input with tracebacks: we log our own line
_peer: contextvars.ContextVar[str] = contextvars.ContextVar("modbus_peer", default="")
#: per request: set once the write service (or a refusal) has audited the attempt
_audited: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar("modbus_audited", default=None)

FC_TABLE = {fc: table for table, fcs in TABLE_FC.items() for fc in fcs}
DECISION_CODE = {
    Decision.DENIED: ExcCodes.ILLEGAL_ADDRESS,
    Decision.OUT_OF_RANGE: ExcCodes.ILLEGAL_VALUE,
    Decision.FAILED: ExcCodes.DEVICE_FAILURE,
}
#: function codes that write (audited whatever becomes of them), with a name for the audit log
WRITE_FC = {
    5: "write single coil",
    6: "write single register",
    15: "write multiple coils",
    16: "write multiple registers",
    22: "mask write register",
    23: "read/write multiple registers",
}
#: function codes served; every other one (and FC 8 with another sub-function than 0) is answered 0x01
SERVED_FC = {1, 2, 3, 4, 5, 6, 8, 15, 16}
MAX_ADU = 260  # MBAP header (7) + the longest PDU (253)
#: bytes read from a client connection at once: pymodbus drops its whole receive buffer beyond 516 bytes, and what
#: stays in it between reads is at most one incomplete request (< 260 bytes), so 256-byte reads never lose a
#: pipelined burst however long (asyncio's default 256 KiB read dropped any burst over 516 bytes, and fragmented the
#: C heap under load: RSS grew 0.5 MiB/s under a 15,000 request/s client)
RECV_SIZE = 256
REPLY_CACHE_PER_METER = 64  # distinct register reads remembered per meter (SCADA repeats a handful)
#: encoded values remembered: ~250 B each, so at most ~1 MiB (20,000 held ~5 MiB under a full-map SCADA sweep of 250
#: meters, for little: a value that changed is encoded anew anyway, and unchanged meters answer from their replies)
ENCODED_CACHE = 4096


def screen(pdu: bytes) -> tuple[int, str] | None:
    """Check a request PDU (function code onwards) before pymodbus sees it: None to serve, else (exception, why)."""
    fc = pdu[0]
    if fc not in SERVED_FC:
        return 1, f"function code {fc} not supported"
    body = pdu[1:]
    if fc == 8:
        if len(body) < 2:
            return 3, "diagnostics request without sub-function"
        sub = int.from_bytes(body[:2], "big")
        return None if sub == 0 else (1, f"diagnostics sub-function {sub} not supported")
    if len(body) < 4:
        return 3, f"function {fc}: request too short"
    count = int.from_bytes(body[2:4], "big")
    if fc in (1, 2, 3, 4):
        limit = 2000 if fc in (1, 2) else 125
        if len(body) != 4:
            return 3, f"function {fc}: request length {len(pdu)} is not 5"
        if not 1 <= count <= limit:
            return 3, f"function {fc}: quantity {count} outside 1-{limit}"
        return None
    if fc in (5, 6):
        if len(body) != 4:
            return 3, f"function {fc}: request length {len(pdu)} is not 5"
        if fc == 5 and count not in (0x0000, 0xFF00):
            return 3, f"write single coil: value {count:#06x} is neither 0x0000 nor 0xFF00"
        return None
    limit, nbytes = (1968, (count + 7) // 8) if fc == 15 else (123, 2 * count)
    if not 1 <= count <= limit:
        return 3, f"function {fc}: quantity {count} outside 1-{limit}"
    if len(body) < 5 or body[4] != nbytes or len(body) != 5 + nbytes:
        return 3, f"function {fc}: byte count does not match quantity {count}"
    return None


class _Handler(ServerRequestHandler):
    """Per-connection handler: screens requests, remembers the peer, keeps each request's identity across awaits."""

    peer_ip = ""
    last_active = 0.0  # monotonic time of the last complete request (or of the connection)
    busy = 0  # requests being answered

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self._tasks: set[asyncio.Task] = set()

    def callback_data(self, data: bytes, addr: tuple | None = None) -> int:
        """Answer requests we do not serve or that are malformed ourselves; pymodbus decodes the others, each of which
        is answered in its own task (so every request of a pipelined burst gets its answer)."""
        used = 0
        while len(data) - used >= 8:
            frame = data[used:]
            tid, pid, length, unit = struct.unpack(">HHHB", frame[:7])
            if pid != 0 or not 2 <= length <= MAX_ADU - 6:
                # the stream cannot be resynchronised: close it (the client reconnects)
                self.server.bad_input(self.peer_ip, "bad MBAP header", f"protocol id {pid}, length {length}")
                if self.transport:
                    self.transport.close()
                return len(data)
            if len(frame) < 6 + length:
                break  # wait for the rest (the idle time-out closes a connection that never completes it)
            pdu = frame[7 : 6 + length]
            self.last_active = time.monotonic()
            reply = self.server.context.cached_reply(unit, pdu)
            if reply is not None:  # a register read answered before, nothing changed since: send the same PDU
                used += 6 + length
                self.send(struct.pack(">HHHB", tid, 0, len(reply) + 1, unit) + reply)
                continue
            refused = screen(pdu)
            if refused is None and pdu[0] in (3, 4):  # register reads: answered here, from the table, in order
                used += 6 + length
                reply = self._read_registers(unit, pdu)
                self.send(struct.pack(">HHHB", tid, 0, len(reply) + 1, unit) + reply)
                continue
            if refused is None:
                super().callback_data(frame[: 6 + length], addr)  # decodes it into last_pdu (or answers 0x01)
                used += 6 + length
                request, self.last_pdu = self.last_pdu, None
                if request is not None:  # answered in its own task: pipelined requests each get their answer
                    task = self.loop.create_task(self.handle_request(request, addr))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                continue
            code, why = refused
            used += 6 + length
            kind = "malformed request" if code == 3 else "unsupported function"
            self.server.bad_input(self.peer_ip, kind, why)
            if pdu[0] in WRITE_FC:
                self.server.owner.audit_refusal(
                    self.peer_ip,
                    unit,
                    pdu[0],
                    pdu.hex(),
                    f"{why}: answered exception {code:#04x}",
                    Decision.OUT_OF_RANGE if code == 3 else Decision.DENIED,
                )
            fc = pdu[0] | 0x80
            self.send(struct.pack(">HHHBBB", tid, 0, 3, unit, fc, code))
        return used

    def _read_registers(self, unit: int, pdu: bytes) -> bytes:
        """The reply PDU to a screened register read (function 3 or 4), or its exception PDU."""
        fc = pdu[0]
        address, count = struct.unpack(">HH", pdu[1:5])
        try:
            regs = self.server.context.read(unit, fc, address, count)
        except Exception as exc:  # a bug must not kill the connection: answer "device failure", log it once
            self.server.bad_input(self.peer_ip, f"internal error {type(exc).__name__}", f"{pdu.hex()}: {exc}")
            return bytes([fc | 0x80, ExcCodes.DEVICE_FAILURE])
        if isinstance(regs, ExcCodes):
            return bytes([fc | 0x80, regs])
        return struct.pack(f">BB{count}H", fc, 2 * count, *regs)

    def handle_later(self) -> None:
        """Not used: callback_data starts a task per request itself (pymodbus' way loses pipelined requests)."""

    def send(self, data: bytes, addr: tuple | None = None) -> None:
        """Write an answer; unlike pymodbus' send, keep the requests already received (pipelined) in the buffer."""
        if self.transport:
            self.transport.write(data)

    async def handle_request(self, pdu=None, addr=None) -> None:
        """Answer one decoded request from the point table or through the write service."""
        if not pdu:
            return
        _peer.set(self.peer_ip)
        audited = [False]
        _audited.set(audited)
        self.busy += 1
        try:
            response = await pdu.datastore_update(self.server.context, pdu.dev_id)
        except Exception as exc:  # a bug must not kill the connection: answer "device failure", log it once
            self.server.bad_input(self.peer_ip, f"internal error {type(exc).__name__}", f"{pdu}: {exc}")
            response = ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
        finally:
            self.busy -= 1
        if pdu.function_code in WRITE_FC and not audited[0]:
            code = getattr(response, "exception_code", None)
            why = f"refused before the write service: exception {code:#04x}" if code else "not audited (bug)"
            raw = (bytes([pdu.function_code]) + pdu.encode()).hex()
            self.server.owner.audit_refusal(self.peer_ip, pdu.dev_id, pdu.function_code, raw, why)
        response.transaction_id = pdu.transaction_id
        response.dev_id = pdu.dev_id
        self.server_send(response, addr)

    def callback_connected(self) -> None:
        """Take the connection; beyond the per-address or total limit, close the longest idle one to make room."""
        super().callback_connected()
        if self.transport is not None and hasattr(self.transport, "max_size"):
            self.transport.max_size = RECV_SIZE  # asyncio's selector transport reads this much at once
        peer = self.transport.get_extra_info("peername") if self.transport else None
        self.peer_ip = peer[0] if peer else ""
        self.last_active = time.monotonic()
        self.server.admit(self)


class _TcpServer(ModbusTcpServer):
    max_connections = 128
    max_per_address = 16
    owner: ModbusTcpGatewayServer

    def callback_new_connection(self):
        return _Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)

    def handlers(self) -> list[_Handler]:
        """Open client connections."""
        return [
            h
            for h in self.active_connections.values()
            if isinstance(h, _Handler) and h.transport and not h.transport.is_closing()  # closing: room made already
        ]

    def admit(self, new: _Handler) -> None:
        """Enforce the connection limits by closing the longest idle connection (of the same address first)."""
        others = [h for h in self.handlers() if h is not new]
        same = [h for h in others if h.peer_ip == new.peer_ip]
        if len(same) >= self.max_per_address:
            pool, why = same, f"more than {self.max_per_address} connections from {new.peer_ip}"
        elif len(others) >= self.max_connections:
            pool, why = others, f"more than {self.max_connections} connections"
        else:
            return
        idle = [h for h in pool if not h.busy]
        victim = min(idle, key=lambda h: h.last_active) if idle else new
        # per address: logged once per address; the total: once (many addresses must not flood the log either)
        self.bad_input(new.peer_ip if pool is same else "*", "connection limit", f"{why}: closing the longest idle one")
        if victim.transport:
            victim.transport.close()

    def sweep(self, idle_timeout: float) -> None:
        """Close connections without a request for idle_timeout seconds."""
        limit = time.monotonic() - idle_timeout
        for h in self.handlers():
            if not h.busy and h.last_active < limit:
                log.debug("Modbus TCP: closing connection from %s idle for %g s", h.peer_ip, idle_timeout)
                h.transport.close()

    def bad_input(self, peer: str, kind: str, detail: str) -> None:
        """Log one line per client and kind of bad input (repeats at debug)."""
        self.owner.once.event(peer, kind, "Modbus TCP client %s: %s", peer, detail)


class GatewayContext:
    """Answers Modbus requests from the point table (the methods pymodbus calls on its datastore)."""

    def __init__(self, server: ModbusTcpGatewayServer) -> None:
        self.srv = server
        self.table = server.table
        self.status = server.ports.status
        self.map = server.map
        self._echo: dict[tuple[int, int], list[bool]] = {}
        #: (point, value) -> registers, for values that repeat (configuration, states, unchanged values of a meter
        #: whose cached replies a change dropped); bounded: cleared when full
        self._encoded: dict[tuple[str, object], tuple[int, ...]] = {}
        #: meter -> (its table state, request PDU -> reply PDU) for register reads of an online meter outside the
        #: diagnostics block; dropped on any change of the meter's values (table listener) or when the meter's
        #: state is replaced (reload, identification), so a reply is never older than the table
        self._replies: dict[str, tuple[MeterState, dict[bytes, bytes]]] = {}

    def cached_reply(self, unit: int, pdu: bytes) -> bytes | None:
        """The reply PDU to a register read answered before when nothing it depends on changed since, else None."""
        meter_id = self.srv.units.get(unit)
        entry = self._replies.get(meter_id) if meter_id is not None else None
        if entry is None:
            return None
        reply = entry[1].get(pdu)
        if reply is None:
            return None
        state = entry[0]
        try:
            current = self.table.meter(meter_id)
        except KeyError:
            return None
        return reply if current is state and state.online else None

    def invalidate(self, meter_id: str, point: str, old: object, new: object) -> None:
        """Table listener: a value or quality of the meter changed, its cached replies go."""
        self._replies.pop(meter_id, None)

    def invalidate_all(self) -> None:
        """Forget every cached reply (unit map reloaded)."""
        self._replies.clear()

    def _remember(self, meter_id: str, func_code: int, address: int, regs: list[int]) -> None:
        state = self.table.meter(meter_id)
        entry = self._replies.get(meter_id)
        if entry is None or entry[0] is not state or len(entry[1]) >= REPLY_CACHE_PER_METER:
            entry = self._replies[meter_id] = (state, {})
        count = len(regs)
        key = struct.pack(">BHH", func_code, address, count)
        entry[1][key] = struct.pack(f">BB{count}H", func_code, 2 * count, *regs)

    def device_ids(self) -> list[int]:
        """Unit ids served."""
        return sorted(self.srv.units)

    # -- reads ------------------------------------------------------------------------------------
    async def async_getValues(self, device_id: int, func_code: int, address: int, count: int = 1):
        """Registers or bits for a read (or for the echo of a write)."""
        return self.read(device_id, func_code, address, count)

    def read(self, device_id: int, func_code: int, address: int, count: int = 1):
        """Registers or bits for a read (or for the echo of a write), or an exception code; never waits."""
        meter_id = self.srv.units.get(device_id)
        if meter_id is None:
            return ExcCodes.GATEWAY_PATH_UNAVIABLE
        table = FC_TABLE.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if func_code == 5 and (device_id, address) in self._echo:
            return self._echo.pop((device_id, address))
        if not self.map.in_map(table, address, count):
            return ExcCodes.ILLEGAL_ADDRESS
        touched = self.map.points_in(table, address, count)
        table_ = self.table
        if not table_.is_online(meter_id) and any(p.name != COMM_STATUS for p in touched):
            return ExcCodes.GATEWAY_NO_RESPONSE  # never let SCADA take a stale value for a fresh one
        values = {p.name: table_.get(meter_id, p.name) for p in touched}
        if table in ("coil", "discrete_input"):
            return [self._bit(values, table, a) for a in range(address, address + count)]
        regs: list[int] = []
        cache: dict[str, tuple[int, ...]] = {}
        diag = self._diagnostics(meter_id) if self.map.touches_diagnostics(table, address, count) else {}
        for a in range(address, address + count):
            if a in diag:
                regs.append(diag[a])
                continue
            hit = self.map.point_at(table, a)
            if hit is None:
                regs.append(0)  # a hole inside the map reads as 0 (documented)
                continue
            p, k = hit
            if p.name not in cache:
                v = values[p.name]
                cache[p.name] = self._encode(p, v.value if v.quality is not Quality.UNSUPPORTED else None)
            regs.append(cache[p.name][k])
        if not diag and func_code in (3, 4) and table_.is_online(meter_id):
            self._remember(meter_id, func_code, address, regs)
        return regs

    def _encode(self, p, value) -> tuple[int, ...]:
        key = (p.name, value)
        words = self._encoded.get(key)
        if words is None:
            if len(self._encoded) >= ENCODED_CACHE:
                self._encoded.clear()
            words = self._encoded[key] = tuple(self.map.encode_value(p, value))
        return words

    def _bit(self, values, table: str, address: int) -> bool:
        hit = self.map.point_at(table, address)
        if hit is None:
            return False
        v = values[hit[0].name].value
        return bool(v) if v is not None else False

    def _diagnostics(self, meter_id: str) -> dict[int, int]:
        t = self.table
        values = t.meter_values(meter_id)
        state = t.meter(meter_id)
        runner = self.status.runner_of(meter_id) if meter_id in t.meter_ids else None
        stats = runner.driver.stats if runner is not None and hasattr(runner, "driver") else None
        online = state.online
        fields: dict[str, int] = {"comm_state": 2 if online is None else int(online)}
        for d in DIAGNOSTICS:
            if d.key.startswith("age_"):
                age = t.seconds_since_good(meter_id, d.key[4:])  # type: ignore[arg-type]
                fields[d.key] = NEVER if age is None else min(int(age), NEVER - 1)
        fields["comm_losses"] = state.errors
        fields["bad_data"] = state.bad_data
        if stats is not None:
            fields["bus_transactions"] = stats.transactions
            fields["bus_timeouts"] = stats.timeouts
            fields["bus_crc_errors"] = stats.crc_errors + stats.frame_errors
        fields["points_not_good"] = sum(
            1 for n, v in values.items() if n in state.points and v.quality not in (Quality.GOOD, Quality.UNSUPPORTED)
        )
        journal = self.status.journal
        fields["journal_state"] = (
            journal_state_code(None) if journal is None else journal_state_code(journal.state, journal.disk_full)
        )
        fields["profile_mismatch"] = int(bool(state.profile_warning))
        out: dict[int, int] = {}
        order = WordOrder(self.srv.word_order)
        for d in DIAGNOSTICS:
            v = fields.get(d.key, 0)
            words = [min(v, 0xFFFF)] if d.count == 1 else encode(v & 0xFFFFFFFF, CodecType.UINT32, order)
            for i, w in enumerate(words):
                out[d.address + i] = w
        return out

    # -- writes -----------------------------------------------------------------------------------
    async def async_setValues(self, device_id: int, func_code: int, address: int, values):
        """Pass a write through the write service; None when accepted, else an exception code. Always audited."""
        audited = _audited.get()
        if audited is not None:
            audited[0] = True
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        meter_id = self.srv.units.get(device_id)
        table = FC_TABLE.get(func_code)
        if meter_id is None or table not in ("coil", "holding"):
            code = ExcCodes.GATEWAY_PATH_UNAVIABLE if meter_id is None else ExcCodes.ILLEGAL_FUNCTION
            why = f"unknown unit id {device_id}" if meter_id is None else f"function {func_code} writes nothing here"
            self._refuse(device_id, func_code, address, values, f"{why}: answered exception {code:#04x}")
            return code
        try:
            writes = self._split(table, address, values)
        except CodecError as exc:
            self._refuse(device_id, func_code, address, values, f"{exc}: answered exception 0x03", out_of_range=True)
            return ExcCodes.ILLEGAL_VALUE
        if writes is None:
            why = "the write does not cover whole, known points: answered exception 0x02"
            self._refuse(device_id, func_code, address, values, why)
            return ExcCodes.ILLEGAL_ADDRESS
        for pname, value in writes:
            req = WriteRequest("modbus", _peer.get() or "unknown", meter_id, pname, value)
            if isinstance(value, float) and not math.isfinite(value):
                self.srv._writes().refuse(
                    req, f"{value} is not a number: answered exception 0x03", Decision.OUT_OF_RANGE
                )
                return ExcCodes.ILLEGAL_VALUE
            result = await self.srv._writes().write(req)
            if result.decision is not Decision.ACCEPTED:
                return DECISION_CODE[result.decision]
        if func_code == 5:
            self._echo[(device_id, address)] = [bool(values[0])]
        return None

    def _refuse(self, unit: int, fc: int, address: int, values: list, why: str, out_of_range: bool = False) -> None:
        """Audit a write attempt that names no known point."""
        meter_id = self.srv.units.get(unit, f"unit {unit}")
        table = FC_TABLE.get(fc, "holding")
        regs = [int(v) for v in values]
        target = f"{table} {address}" + (f"-{address + len(regs) - 1}" if len(regs) > 1 else "")
        decision = Decision.OUT_OF_RANGE if out_of_range else Decision.DENIED
        req = WriteRequest("modbus", _peer.get() or "unknown", meter_id, target, regs if len(regs) > 1 else regs[0])
        self.srv._writes().refuse(req, f"FC {fc} to {target}: {why}", decision)

    def _split(self, table: str, address: int, values: list) -> list[tuple[str, float | int | bool]] | None:
        """Cut a write into whole points; None when it does not cover whole, known points."""
        out: list[tuple[str, float | int | bool]] = []
        a = address
        i = 0
        while i < len(values):
            hit = self.map.point_at(table, a)
            if hit is None or hit[1] != 0:
                return None
            p, _ = hit
            n = p.modbus.count
            chunk = values[i : i + n]
            if len(chunk) != n:
                return None
            if table == "coil":
                out.append((p.name, int(bool(chunk[0]))))
            else:
                value = self.map.decode_value(p, [int(x) for x in chunk])  # CodecError: the caller answers 0x03
                if p.kind is PointKind.CONFIG and p.allowed_values and math.isfinite(value):
                    value = round(value)
                out.append((p.name, value))
            a += n
            i += n
        return out


class ModbusTcpGatewayServer(Server):
    """The gateway's Modbus TCP slave."""

    name = "modbus_tcp"

    def __init__(self, ports: ServerPorts) -> None:
        super().__init__(ports)
        config = self.facts.config
        cfg = config.upstream.modbus_tcp
        self.bind, self.port, self.word_order = cfg.bind, cfg.port, cfg.word_order
        self.map = UpstreamMap(self.facts.catalogue, WordOrder(cfg.word_order))
        self.units = {m.modbus_unit: m.id for m in config.meters if m.enabled and m.modbus_unit is not None}
        self.idle_timeout = cfg.idle_timeout
        self.once = OnceLog(log)  # bad input: one line per client and kind
        self._server: _TcpServer | None = None
        self._sweeper: asyncio.Task | None = None
        self._bound: tuple[str, int] | None = None
        self._listening = None  # the reply cache's table listener while serving

    async def start(self) -> None:
        """Bind (checking the port is really ours) and serve in the background."""
        port = self._reserve(self.port)
        # the devices given to pymodbus only satisfy its constructor; GatewayContext answers every request
        devices = [SimDevice(id=u, simdata=[SimData(0, count=1, datatype=SimType.REGISTERS)]) for u in self.units]
        devices = devices or [SimDevice(id=0, simdata=[SimData(0, count=1, datatype=SimType.REGISTERS)])]
        self._server = _TcpServer(devices, address=(self.bind, port))
        cfg = self.facts.config.upstream.modbus_tcp
        self._server.max_connections = cfg.max_connections
        self._server.max_per_address = cfg.max_connections_per_address
        self._server.owner = self
        self._server.context = ctx = GatewayContext(self)
        self._listening = ctx.invalidate
        self.table.add_listener(ctx.invalidate)
        try:
            await self._server.serve_forever(background=True)
        except (RuntimeError, OSError) as exc:
            raise ServerStartError(f"Modbus TCP server cannot listen on {self.bind}:{port}: {exc}") from exc
        sock = self._server.transport.sockets[0] if self._server.transport else None
        self._bound = sock.getsockname()[:2] if sock else (self.bind, port)
        self._sweeper = asyncio.create_task(self._sweep(), name="modbus-tcp idle sweep")
        log.info(
            "Modbus TCP server on %s:%d, units %s",
            self._bound[0],
            self._bound[1],
            ", ".join(f"{u}={m}" for u, m in sorted(self.units.items())),
        )

    def _reserve(self, port: int) -> int:
        """Check that the port is free (no SO_REUSEPORT sharing); 0 picks a free one."""
        fam = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            try:
                s.bind((self.bind, port))
            except OSError as exc:
                raise ServerStartError(
                    f"Modbus TCP server cannot bind {self.bind}:{port}: {exc.strerror} (another process uses the port,"
                    f" or binding below 1024 needs CAP_NET_BIND_SERVICE)"
                ) from exc
            return s.getsockname()[1]

    async def _sweep(self) -> None:
        """Close idle connections, checking a few times per idle time-out."""
        while self._server is not None:
            await asyncio.sleep(min(self.idle_timeout / 4, 5.0))
            if self._server is not None:
                self._server.sweep(self.idle_timeout)

    def audit_refusal(
        self, peer: str, unit: int, fc: int, pdu_hex: str, why: str, decision: Decision = Decision.DENIED
    ) -> None:
        """Audit a write request refused before it could name a point (unsupported function, malformed frame)."""
        ws = self.ports.writes()
        if ws is None:
            return
        meter_id = self.units.get(unit, f"unit {unit}")
        target = f"FC {fc} ({WRITE_FC.get(fc, 'write')})"
        ws.refuse(WriteRequest("modbus", peer or "unknown", meter_id, target, pdu_hex), why, decision)

    async def stop(self) -> None:
        """Stop listening and close client connections."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._listening is not None:
            self.table.remove_listener(self._listening)
            self._listening = None
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    def address(self) -> tuple[str, int] | None:
        """The bound address."""
        return self._bound

    def meters_changed(self, meter_ids: set[str]) -> bool:
        """Reload: serve the new unit map; connected clients stay connected."""
        cfg = self.facts.config
        self.units = {m.modbus_unit: m.id for m in cfg.meters if m.enabled and m.modbus_unit is not None}
        if self._server is not None:
            self._server.context.invalidate_all()
        log.info("Modbus TCP server: units %s", ", ".join(f"{u}={m}" for u, m in sorted(self.units.items())))
        return True
