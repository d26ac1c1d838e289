"""Upstream Modbus TCP slave: one unit id per meter, the canonical register map, answers from the table only.

pymodbus 3.16 is used for framing and transport. Requests reach `GatewayContext`, which stands where pymodbus puts
its SimCore (same three methods), so every read is built from the point table at request time and every write goes
through the write service. A small request-handler subclass records the client's address (for write allowlists) and
answers each request with its own transaction id even when a client pipelines requests during a slow meter write.
"""

from __future__ import annotations

import contextvars
import logging
import socket
import traceback

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
from ..core.table import COMM_STATUS
from ..core.upstream_map import DIAGNOSTICS, NEVER, TABLE_FC, UpstreamMap
from ..writes import Decision, WriteRequest
from .base import Server, ServerStartError

log = logging.getLogger(__name__)
_peer: contextvars.ContextVar[str] = contextvars.ContextVar("modbus_peer", default="")

FC_TABLE = {fc: table for table, fcs in TABLE_FC.items() for fc in fcs}
DECISION_CODE = {
    Decision.DENIED: ExcCodes.ILLEGAL_ADDRESS,
    Decision.OUT_OF_RANGE: ExcCodes.ILLEGAL_VALUE,
    Decision.FAILED: ExcCodes.DEVICE_FAILURE,
}


class _Handler(ServerRequestHandler):
    """Per-connection handler: remembers the peer and keeps each request's identity across awaits."""

    async def handle_request(self) -> None:
        pdu, addr = self.last_pdu, self.last_addr
        if not pdu:
            return
        peer = self.transport.get_extra_info("peername") if self.transport else None
        _peer.set(peer[0] if peer else "")
        try:
            response = await pdu.datastore_update(self.server.context, pdu.dev_id)
        except Exception as exc:  # a bug must not kill the connection: answer "device failure" and log it
            log.error("modbus request %s failed: %s\n%s", pdu, exc, traceback.format_exc())
            response = ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
        response.transaction_id = pdu.transaction_id
        response.dev_id = pdu.dev_id
        self.server_send(response, addr)

    def callback_connected(self) -> None:
        """Take the connection, or close it at once when the configured number of clients is connected already."""
        super().callback_connected()
        srv = self.server  # the listener: it registered this connection among its active ones already
        connected = len(srv.active_connections)
        if connected > srv.max_connections and self.transport:
            if not srv.refusing:
                log.warning("Modbus TCP server: %d clients connected, closing new connections", srv.max_connections)
            srv.refusing = True
            self.transport.close()
        elif connected < srv.max_connections:
            srv.refusing = False  # log again the next time the limit is reached


class _TcpServer(ModbusTcpServer):
    max_connections = 128
    refusing = False

    def callback_new_connection(self):
        return _Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class GatewayContext:
    """Answers Modbus requests from the point table (the methods pymodbus calls on its datastore)."""

    def __init__(self, server: ModbusTcpGatewayServer) -> None:
        self.srv = server
        self.gw = server.gateway
        self.map = server.map
        self._echo: dict[tuple[int, int], list[bool]] = {}
        self._encoded: dict[tuple[str, object], list[int]] = {}  # (point, value) -> registers: values repeat a lot

    def device_ids(self) -> list[int]:
        """Unit ids served."""
        return sorted(self.srv.units)

    # -- reads ------------------------------------------------------------------------------------
    async def async_getValues(self, device_id: int, func_code: int, address: int, count: int = 1):
        """Registers or bits for a read (or for the echo of a write)."""
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
        table_ = self.gw.table
        if not table_.is_online(meter_id) and any(p.name != COMM_STATUS for p in touched):
            return ExcCodes.GATEWAY_NO_RESPONSE  # never let SCADA take a stale value for a fresh one
        values = {p.name: table_.get(meter_id, p.name) for p in touched}
        if table in ("coil", "discrete_input"):
            return [self._bit(values, table, a) for a in range(address, address + count)]
        regs: list[int] = []
        cache: dict[str, list[int]] = {}
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
        return regs

    def _encode(self, p, value) -> list[int]:
        key = (p.name, value)
        words = self._encoded.get(key)
        if words is None:
            if len(self._encoded) > 20000:
                self._encoded.clear()
            words = self._encoded[key] = self.map.encode_value(p, value)
        return words

    def _bit(self, values, table: str, address: int) -> bool:
        hit = self.map.point_at(table, address)
        if hit is None:
            return False
        v = values[hit[0].name].value
        return bool(v) if v is not None else False

    def _diagnostics(self, meter_id: str) -> dict[int, int]:
        t = self.gw.table
        values = t.meter_values(meter_id)
        state = t.meter(meter_id)
        runner = self.gw.runner_of(meter_id) if meter_id in self.gw.table.meter_ids else None
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
        """Pass a write through the write service; None when accepted, else an exception code."""
        meter_id = self.srv.units.get(device_id)
        if meter_id is None:
            return ExcCodes.GATEWAY_PATH_UNAVIABLE
        table = FC_TABLE.get(func_code)
        if table not in ("coil", "holding"):
            return ExcCodes.ILLEGAL_FUNCTION
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        writes = self._split(table, address, values)
        if writes is None:
            return ExcCodes.ILLEGAL_ADDRESS
        for pname, value in writes:
            result = await self.gw.write_service.write(
                WriteRequest("modbus", _peer.get() or "unknown", meter_id, pname, value)
            )
            if result.decision is not Decision.ACCEPTED:
                return DECISION_CODE[result.decision]
        if func_code == 5:
            self._echo[(device_id, address)] = [bool(values[0])]
        return None

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
                try:
                    value = self.map.decode_value(p, [int(x) for x in chunk])
                except CodecError:
                    return None
                if p.kind is PointKind.CONFIG and p.allowed_values:
                    value = round(value)
                out.append((p.name, value))
            a += n
            i += n
        return out


class ModbusTcpGatewayServer(Server):
    """The gateway's Modbus TCP slave."""

    name = "modbus_tcp"

    def __init__(self, gateway) -> None:
        super().__init__(gateway)
        cfg = gateway.config.upstream.modbus_tcp
        self.bind, self.port, self.word_order = cfg.bind, cfg.port, cfg.word_order
        self.map = UpstreamMap(gateway.catalogue, WordOrder(cfg.word_order))
        self.units = {m.modbus_unit: m.id for m in gateway.config.meters if m.enabled and m.modbus_unit is not None}
        self._server: _TcpServer | None = None
        self._bound: tuple[str, int] | None = None

    async def start(self) -> None:
        """Bind (checking the port is really ours) and serve in the background."""
        port = self._reserve(self.port)
        # the devices given to pymodbus only satisfy its constructor; GatewayContext answers every request
        devices = [SimDevice(id=u, simdata=[SimData(0, count=1, datatype=SimType.REGISTERS)]) for u in self.units]
        devices = devices or [SimDevice(id=0, simdata=[SimData(0, count=1, datatype=SimType.REGISTERS)])]
        self._server = _TcpServer(devices, address=(self.bind, port))
        self._server.max_connections = self.gateway.config.upstream.modbus_tcp.max_connections
        self._server.context = GatewayContext(self)
        try:
            await self._server.serve_forever(background=True)
        except (RuntimeError, OSError) as exc:
            raise ServerStartError(f"Modbus TCP server cannot listen on {self.bind}:{port}: {exc}") from exc
        sock = self._server.transport.sockets[0] if self._server.transport else None
        self._bound = sock.getsockname()[:2] if sock else (self.bind, port)
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

    async def stop(self) -> None:
        """Stop listening and close client connections."""
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    def address(self) -> tuple[str, int] | None:
        """The bound address."""
        return self._bound

    def meters_changed(self, meter_ids: set[str]) -> bool:
        """Reload: serve the new unit map; connected clients stay connected."""
        cfg = self.gateway.config
        self.units = {m.modbus_unit: m.id for m in cfg.meters if m.enabled and m.modbus_unit is not None}
        log.info("Modbus TCP server: units %s", ", ".join(f"{u}={m}" for u, m in sorted(self.units.items())))
        return True
