"""Builds the whole gateway from its configuration; start-up steps are paired with their teardown."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .aio import cancel_and_wait
from .config import GatewayConfig, MbusBus, ModbusRtuBus, ModbusTcpBus
from .core.catalogue import PointKind, PollClass, load_catalogue
from .core.table import COMM_STATUS, PointTable
from .drivers.base import Driver, WriteRejected
from .polling import BusRunner
from .profiles import ProfileRegistry
from .servers.base import Server, ServerStartError

log = logging.getLogger(__name__)

SERVER_FACTORIES = {
    "modbus_tcp": "meter_gateway.servers.modbus_tcp:ModbusTcpGatewayServer",
    "bacnet": "meter_gateway.servers.bacnet:BacnetServer",
    "prometheus": "meter_gateway.servers.prometheus:PrometheusServer",
}


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


class Gateway:
    """The running gateway: point table, one poll task per bus, upstream servers."""

    def __init__(
        self,
        config: GatewayConfig,
        profiles: ProfileRegistry,
        config_path: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.profiles = profiles
        self.config_path = config_path
        self.catalogue = load_catalogue()
        self.table = PointTable(self.catalogue, clock, stale_factor=config.gateway.stale_factor)
        self.buses: dict[str, BusRunner] = {}
        self.servers: list[Server] = []
        self.simulators: dict[str, Any] = {}
        self.sim_buses: dict[str, Any] = {}  # bus id -> simulated line/server (tests, demo)
        self._sim_handles: list[Any] = []
        self._teardown: list[Callable[[], Awaitable[None]]] = []
        self._tasks: list[asyncio.Task] = []
        self.started = False
        self.write_service: Any = None
        self.journal: Any = None  # journal.recorder.Recorder when the journal is enabled
        for m in config.meters:
            if m.enabled and m.profile != "auto":  # `profile: auto` meters join once identified (start)
                self._add_meter(m)

    def _add_meter(self, m: Any) -> None:
        prof = self.profiles.get(m.profile)
        self.table.add_meter(
            m.id,
            self.meter_points(m.id),
            m.intervals(),
            max_power_kw=m.max_power_kw or getattr(prof, "max_power_kw", 1000.0),
            energy_wrap=getattr(prof, "energy_wrap", None),
        )
        for cmd in getattr(prof, "commands", {}) or {}:
            self.table.update(m.id, cmd, False)  # commands rest inactive; a write pulses them

    # -- facts about meters --------------------------------------------------------------------------
    def meter_points(self, meter_id: str) -> frozenset[str]:
        """Points the meter's profile supports (plus commands it declares and Communication_Status)."""
        m = self.config.meter(meter_id)
        prof = self.profiles.get(m.profile)
        pts = set(getattr(prof, "points", {}))
        for v in getattr(prof, "variants", []):
            if v.name == getattr(m, "variant", None):
                pts -= set(v.points_absent)  # e.g. a PFA meter has no export register of its own
        pts |= set(getattr(prof, "commands", {}) or {})
        pts.add(COMM_STATUS)
        return frozenset(pts)

    def runner_of(self, meter_id: str) -> BusRunner:
        """The bus runner that polls a meter."""
        return self.buses[self.config.meter(meter_id).bus]

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start simulators, buses, then upstream servers; on any failure undo what was started and raise."""
        try:
            for bus in self.config.buses:
                meters = self.config.meters_on(bus.id)
                if not meters:
                    continue
                driver = await self._make_driver(bus, meters)
                meters = await self._identify_meters(bus, driver, meters)
                if not meters:
                    continue
                runner = BusRunner(
                    bus.id,
                    meters,
                    {m.id: self.meter_points(m.id) for m in meters},
                    driver,
                    self.table,
                    fail_after=bus.fail_after,
                    backoff_max=bus.backoff_max,
                )
                await runner.start()
                self.buses[bus.id] = runner
                self._teardown.append(runner.stop)
                if isinstance(bus, (ModbusRtuBus, ModbusTcpBus)):
                    self._tasks.append(asyncio.create_task(self._check_profiles(driver, meters), name="identify"))
            self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
            if self.config.journal.enabled:
                from .journal.recorder import Recorder, journal_path
                from .writes import audit_path

                # the journal opens inside its own task (worker thread): a damaged or unwritable journal leaves
                # the gateway running, degraded, instead of stopping it
                self.journal = Recorder(self, None, audit=audit_path(self))
                self._teardown.append(self._close_journal)
                self._tasks.append(asyncio.create_task(self.journal.run(journal_path(self)), name="journal"))
            await self._start_servers()
            self.started = True
            log.info(
                "gateway %s started: %d buses, %d meters, servers: %s",
                self.config.gateway.name,
                len(self.buses),
                len(self.table.meter_ids),
                ", ".join(s.name for s in self.servers) or "none",
            )
        except BaseException:
            await self.stop()
            raise

    async def _start_servers(self) -> None:
        up = self.config.upstream
        if any(getattr(up, key).enabled for key in SERVER_FACTORIES):
            from .writes import WriteService

            self.write_service = WriteService(self)
        for key, ref in SERVER_FACTORIES.items():
            section = getattr(up, key)
            if not section.enabled:
                continue
            try:
                cls = _load(ref)
            except (ImportError, AttributeError) as exc:
                raise ServerStartError(f"upstream {key} is enabled but not available: {exc}") from exc
            server = cls(self)
            await server.start()
            self.servers.append(server)
            self._teardown.append(server.stop)

    async def _identify_meters(self, bus: Any, driver: Driver, meters: list) -> list:
        """Modbus: identify `profile: auto` meters before polling starts (configured ones: _check_profiles)."""
        if not isinstance(bus, (ModbusRtuBus, ModbusTcpBus)) or not any(m.profile == "auto" for m in meters):
            return meters
        from .drivers.identify import check_bus

        auto = [m for m in meters if m.profile == "auto"]
        await driver.open()
        try:
            identified = {m.id: m for m in await check_bus(driver, auto, self.profiles, self.table)}
        finally:
            await driver.close()
        checked = [identified.get(m.id, m) for m in meters if m.profile != "auto" or m.id in identified]
        resolved = {m.id: m for m in checked}
        dropped = {m.id for m in meters} - set(resolved)
        self.config = self.config.model_copy(
            update={"meters": [resolved.get(m.id, m) for m in self.config.meters if m.id not in dropped]}
        )
        before = {m.id: m for m in meters}
        for m in checked:
            if m.id not in self.table.meter_ids or before[m.id] != m:  # identified profile or variant
                self._add_meter(m)
        return checked

    async def _check_profiles(self, driver: Driver, meters: list) -> None:
        """In the background, between polls: flag configured profiles the meters contradict (a silent meter
        costs one timeout here, not a delayed start)."""
        from .drivers.identify import check_bus

        configured = [m for m in meters if m.profile != "auto" and m.id in self.table.meter_ids]
        try:
            for m in configured:
                # after the meter's first poll, and only if it answered: a silent meter would cost the bus timeouts
                for _ in range(600):
                    if self.table.meter(m.id).online is not None:
                        break
                    await asyncio.sleep(0.1)
                if self.table.meter(m.id).online:
                    await check_bus(driver, [m], self.profiles, self.table)
        except Exception as exc:  # advisory: never let it disturb polling
            log.warning("profile identification check failed: %s", exc)

    async def _make_driver(self, bus: Any, meters: list) -> Driver:
        if isinstance(bus, (ModbusRtuBus, ModbusTcpBus)):
            from .drivers.modbus import ModbusDriver

            if not bus.simulated:
                return ModbusDriver(bus, self.profiles)
            from .sim.modbus import RtuSimBus, TcpSimServer, make_meter

            sims = [
                make_meter(
                    int(m.address),
                    self.profiles.get("generic" if m.profile == "auto" else m.profile),
                    seed=zlib.crc32(m.id.encode()),
                )
                for m in meters
            ]
            for m, s in zip(meters, sims, strict=True):
                self.simulators[m.id] = s
            if isinstance(bus, ModbusRtuBus):
                rtu = RtuSimBus(sims, baudrate=bus.baudrate)
                port = await rtu.start()
                self.sim_buses[bus.id] = rtu
                self._teardown.append(rtu.close)
                log.info("bus %s: simulated RTU meters on %s", bus.id, port)
                return ModbusDriver(bus, self.profiles, port=port)
            tcp = TcpSimServer(sims, host="127.0.0.1", port=bus.port)
            tport = await tcp.start()
            self.sim_buses[bus.id] = tcp
            self._teardown.append(tcp.close)
            log.info("bus %s: simulated Modbus TCP meters on 127.0.0.1:%d", bus.id, tport)
            return ModbusDriver(bus, self.profiles, host="127.0.0.1", tcp_port=tport)
        if isinstance(bus, MbusBus):
            from .drivers.mbus import MbusDriver

            if not bus.simulated:
                return MbusDriver(bus, self.profiles)
            from .sim.mbus import start_simulated_mbus_bus

            port, handle = await start_simulated_mbus_bus(bus, meters, self.profiles)
            self.simulators.update(handle.meters)
            self.sim_buses[bus.id] = handle.bus
            self._teardown.append(handle.close)
            log.info("bus %s: simulated M-Bus meters on %s", bus.id, port)
            # a pty only takes 8N1: the simulated line ignores the configured parity
            return MbusDriver(bus.model_copy(update={"parity": "N"}), self.profiles, port=port)
        raise ValueError(f"unknown bus type {bus.type}")

    async def _close_journal(self) -> None:
        if self.journal is not None:
            if self.journal.store is not None:
                self.journal.store.close()
            self.journal = None

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self.table.refresh_staleness()
            except Exception:  # never let bookkeeping kill the gateway
                log.exception("staleness refresh failed")

    async def stop(self) -> None:
        """Stop servers first (no new requests), then polling, then simulators; idempotent and bounded."""
        for t in self._tasks:
            if not await cancel_and_wait(t):
                log.error("task %s did not stop", t.get_name())
        self._tasks.clear()
        while self._teardown:
            step = self._teardown.pop()
            try:
                await asyncio.wait_for(step(), timeout=5.0)
            except Exception:
                log.exception("error while stopping %r", step)
        if self.write_service is not None:
            await self.write_service.close()
            self.write_service = None
        self.servers.clear()
        self.buses.clear()
        self.started = False

    # -- writes (called by the write service only, after the write policy accepted them) ---------------------
    async def perform_write(self, meter_id: str, point: str, value: float | int | bool) -> str:
        """Pass an accepted write to the meter, read the point back into the table, return the meter's reply."""
        pdef = self.catalogue.get(point)
        runner = self.runner_of(meter_id)
        if pdef.kind is PointKind.COMMAND:
            if not value:
                return "no action (command value 0)"
            arg = int(time.time()) if point == "Sync_Clock" else 1
            await runner.write(meter_id, point, arg)
            # a command is a pulse: the point reads back as inactive once the meter has done it
            self.table.update(meter_id, point, False)
            if point == "Reset_Demand_Peak":
                with contextlib.suppress(Exception):
                    await runner.read_now(
                        meter_id,
                        [
                            p
                            for p in ("Demand_Peak_Current", "Demand_Peak_Timestamp")
                            if p in self.meter_points(meter_id)
                        ],
                    )
            return "ok"
        if pdef.kind is PointKind.CONFIG or pdef.is_energy:
            await runner.write(meter_id, point, value)
            readback = (
                [point]
                if pdef.kind is PointKind.CONFIG
                else [p.name for p in self.catalogue if p.is_energy and p.name in self.meter_points(meter_id)]
            )
            await runner.read_now(meter_id, readback)
            got = self.table.get(meter_id, point).value
            return f"ok, read back {got}"
        raise WriteRejected(f"{point} is not writable")

    def request_config_poll(self, meter_id: str) -> None:
        """Re-read a meter's configuration soon."""
        self.runner_of(meter_id).request_poll(meter_id, (PollClass.CONFIG,))
