"""Builds the whole gateway from its configuration; start-up steps are paired with their teardown."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .aio import cancel_and_wait
from .config import GatewayConfig, MbusBus, MeterConfig, ModbusRtuBus, ModbusTcpBus
from .core.catalogue import PointKind, PollClass, load_catalogue
from .core.table import PointTable
from .drivers.base import Driver, WriteRejected
from .polling import BusRunner
from .ports import BusControl, ConfigFacts, GatewayStatus, ServerPorts
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


class SimulatedLines:
    """Simulated meters and lines for buses marked `simulated: true` (demo, tests): a part beside the gateway.

    The gateway asks it for the endpoint of a simulated bus (a pty path or a loopback TCP port) and treats that
    endpoint like a real line; tests reach the simulated meters here (`simulators`, `sim_buses`).
    """

    def __init__(self, profiles: ProfileRegistry) -> None:
        self.profiles = profiles
        self.simulators: dict[str, Any] = {}  # meter id -> simulated meter
        self.sim_buses: dict[str, Any] = {}  # bus id -> simulated line / server
        self._closers: dict[str, Callable[[], Awaitable[None]]] = {}
        self._meters_of: dict[str, list[str]] = {}

    async def open(self, bus: Any, meters: list[MeterConfig]) -> dict[str, Any]:
        """Start the simulated meters of one bus; returns the driver keyword arguments that reach them."""
        await self.close_bus(bus.id)
        self._meters_of[bus.id] = [m.id for m in meters]
        if isinstance(bus, (ModbusRtuBus, ModbusTcpBus)):
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
                self.sim_buses[bus.id], self._closers[bus.id] = rtu, rtu.close
                log.info("bus %s: simulated RTU meters on %s", bus.id, port)
                return {"port": port}
            tcp = TcpSimServer(sims, host="127.0.0.1", port=bus.port)
            tport = await tcp.start()
            self.sim_buses[bus.id], self._closers[bus.id] = tcp, tcp.close
            log.info("bus %s: simulated Modbus TCP meters on 127.0.0.1:%d", bus.id, tport)
            return {"host": "127.0.0.1", "tcp_port": tport}
        if isinstance(bus, MbusBus):
            from .sim.mbus import start_simulated_mbus_bus

            port, handle = await start_simulated_mbus_bus(bus, meters, self.profiles)
            self.simulators.update(handle.meters)
            self.sim_buses[bus.id], self._closers[bus.id] = handle.bus, handle.close
            log.info("bus %s: simulated M-Bus meters on %s", bus.id, port)
            return {"port": port}
        raise ValueError(f"unknown bus type {bus.type}")

    async def close_bus(self, bus_id: str) -> None:
        """Stop the simulated meters of one bus (idempotent)."""
        closer = self._closers.pop(bus_id, None)
        self.sim_buses.pop(bus_id, None)
        for mid in self._meters_of.pop(bus_id, []):
            self.simulators.pop(mid, None)
        if closer is not None:
            try:
                await asyncio.wait_for(closer(), timeout=5.0)
            except Exception as exc:
                log.error("bus %s: simulated line did not close cleanly: %s", bus_id, exc)

    async def close(self) -> None:
        """Stop every simulated bus."""
        for bus_id in list(self._closers):
            await self.close_bus(bus_id)


#: meter keys a bus runner and its driver use; a change of any other key (name, tenant, BACnet base, Modbus unit,
#: write rights) leaves the bus polling
POLL_KEYS = {"id", "bus", "address", "profile", "variant", "poll_intervals", "enabled"}
#: meter keys the point table's entry is built from; a change of any other key keeps the meter's values
TABLE_KEYS = {"profile", "variant", "poll_intervals", "max_power_kw", "enabled"}


def _bus_key(cfg: GatewayConfig, profiles: ProfileRegistry, bus_id: str) -> Any:
    """Everything a bus runner is built from: equal keys mean the running bus can be kept on reload."""
    bus = cfg.bus(bus_id)
    meters = cfg.meters_on(bus_id)
    return (bus, [m.model_dump(include=POLL_KEYS) for m in meters], [_profile_or_none(profiles, m) for m in meters])


def _meter_key(cfg: GatewayConfig, profiles: ProfileRegistry, meter_id: str, keys: set[str] | None = None) -> Any:
    m = cfg.meter(meter_id)
    return (m.model_dump(include=keys), _profile_or_none(profiles, m))


def _profile_or_none(profiles: ProfileRegistry, m: MeterConfig) -> Any:
    """The meter's profile; None for `profile: auto` (not identified yet)."""
    return None if m.profile == "auto" else profiles.get(m.profile)


def _server_key(cfg: GatewayConfig, key: str) -> Any:
    """What an upstream server is built from, besides the meters (a change restarts that server)."""
    g = cfg.gateway
    if key == "bacnet":  # the device carries the gateway's name, location, description; the journal alarm object
        return (cfg.upstream.bacnet, g.name, g.location, g.description, cfg.journal.enabled)
    if key == "prometheus":  # the HTTP server also carries the logins, tokens and HTTPS of upstream.http
        return (cfg.upstream.prometheus, cfg.upstream.http)
    return getattr(cfg.upstream, key)


class Gateway:
    """The running gateway, composed of parts: point table, one runner per bus, write service, journal, servers.

    Each part is started and stopped on its own, so a reload (`apply`) replaces only the parts whose
    configuration changed; the others keep running with their state.
    """

    def __init__(
        self,
        config: GatewayConfig,
        profiles: ProfileRegistry,
        config_path: Path | None = None,
        clock: Callable[[], float] = time.time,
        sims: SimulatedLines | None = None,
    ) -> None:
        #: the running configuration, shared with every part (swapped in place on reload)
        self.facts = ConfigFacts(config, profiles, load_catalogue(), config_path)
        self.catalogue = self.facts.catalogue
        self.config_path = config_path
        self.table = PointTable(self.catalogue, clock, stale_factor=config.gateway.stale_factor)
        self.buses: dict[str, BusRunner] = {}  # never rebound: the status and bus-control ports hold this dict
        self.servers: list[Server] = []
        self._own_sims = sims is None
        self.sims = sims if sims is not None else SimulatedLines(profiles)
        self._tasks: list[asyncio.Task] = []
        self.started = False
        self.write_service: Any = None
        self.journal: Any = None  # journal.recorder.Recorder when the journal is enabled
        self._journal_task: asyncio.Task | None = None
        self._identified: dict[str, tuple[MeterConfig, MeterConfig]] = {}  # auto meter id -> (as configured, as found)
        #: what upstream servers are built from: the parts they use, never this object
        self.ports = ServerPorts(
            facts=self.facts,
            table=self.table,
            writes=lambda: self.write_service,
            status=GatewayStatus(
                started=lambda: self.started,
                buses=self.buses,
                journal=lambda: self.journal,
                foreign_registration=self._foreign_registration,
                meter_bus=lambda meter_id: self.config.meter(meter_id).bus,
                bacnet_events=lambda: getattr(self.server("bacnet"), "events", None),
                bacnet_discovery=lambda: getattr(getattr(self.server("bacnet"), "router", None), "discovery", None),
            ),
            lines=BusControl(self.buses, lambda bus_id: self.config.bus(bus_id).type, self.scan_bus),
        )
        for m in config.meters:
            if m.enabled and m.profile != "auto":  # `profile: auto` meters join once identified (_start_bus)
                self._add_meter(m)

    @property
    def config(self) -> GatewayConfig:
        """The running configuration."""
        return self.facts.config

    @config.setter
    def config(self, value: GatewayConfig) -> None:
        self.facts.replace(value)

    @property
    def profiles(self) -> ProfileRegistry:
        """The running profile registry."""
        return self.facts.profiles

    @profiles.setter
    def profiles(self, value: ProfileRegistry) -> None:
        self.facts.profiles = value

    def _foreign_registration(self) -> str | None:
        server = self.server("bacnet")
        return server.foreign_registration() if server is not None else None  # type: ignore[attr-defined]

    @property
    def simulators(self) -> dict[str, Any]:
        """Simulated meters by meter id (simulated buses only)."""
        return self.sims.simulators

    @property
    def sim_buses(self) -> dict[str, Any]:
        """Simulated lines / servers by bus id."""
        return self.sims.sim_buses

    def _add_meter(self, m: MeterConfig) -> None:
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
        return self.facts.meter_points(meter_id)

    @property
    def state_dir(self) -> Path:
        """The folder of the journal, the audit log and other state files."""
        return self.facts.state_dir

    def runner_of(self, meter_id: str) -> BusRunner:
        """The bus runner that polls a meter."""
        return self.buses[self.config.meter(meter_id).bus]

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start buses, journal, write service, then upstream servers; on any failure undo all and raise."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            for bus in self.config.buses:
                await self._start_bus(bus.id)
            self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
            self._start_journal()
            self._start_write_service()
            for key in SERVER_FACTORIES:
                await self._start_server(key)
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

    async def _start_bus(self, bus_id: str, carried: BusRunner | None = None) -> None:
        """Start polling one bus; `carried` is the runner it replaces on reload, whose counters continue."""
        bus = self.config.bus(bus_id)
        meters = self.config.meters_on(bus_id)
        if not meters:
            return
        driver = await self._make_driver(bus, meters)
        meters = await self._identify_meters(bus, driver, meters)
        if not meters:
            await self.sims.close_bus(bus_id)
            return
        if carried is not None and type(carried.driver) is type(driver):
            driver.stats = carried.driver.stats  # the same line: its counters go on (Prometheus counters never drop)
        runner = BusRunner(
            bus.id,
            meters,
            {m.id: self.meter_points(m.id) for m in meters},
            driver,
            self.table,
            fail_after=bus.fail_after,
            backoff_max=bus.backoff_max,
        )
        if carried is not None:
            for mid, sched in runner.schedules.items():
                old = carried.schedules.get(mid)
                if old is not None and old.meter == sched.meter:
                    sched.polls, sched.attempts, sched.periods = old.polls, old.attempts, old.periods
        self.buses[bus.id] = runner  # before start: a failed open is still stopped (driver closed) by stop()
        await runner.start()
        if isinstance(bus, (ModbusRtuBus, ModbusTcpBus)):
            check = self._check_profiles(driver, meters, runner.first_round)
            self._tasks.append(asyncio.create_task(check, name=f"identify-{bus.id}"))

    async def _stop_bus(self, bus_id: str) -> None:
        runner = self.buses.pop(bus_id, None)
        if runner is not None:
            await _bounded(runner.stop(), f"bus {bus_id}")
        await self.sims.close_bus(bus_id)

    def _start_write_service(self) -> None:
        up = self.config.upstream
        if self.write_service is None and any(getattr(up, key).enabled for key in SERVER_FACTORIES):
            from .writes import WriteService

            self.write_service = WriteService(self.facts, self.table, self.perform_write)

    async def _stop_write_service(self) -> None:
        if self.write_service is not None:
            ws, self.write_service = self.write_service, None
            await ws.close()

    def _start_journal(self) -> None:
        if not self.config.journal.enabled:
            return
        from .journal.recorder import Recorder, journal_path
        from .writes import audit_path

        # the journal opens inside its own task (worker thread): a damaged or unwritable journal leaves the gateway
        # running, degraded, instead of stopping it
        self.journal = Recorder(self.facts, self.table, None, audit=audit_path(self.facts))
        self._journal_task = asyncio.create_task(self.journal.run(journal_path(self.facts)), name="journal")

    async def _stop_journal(self) -> None:
        if self._journal_task is not None:
            if not await cancel_and_wait(self._journal_task):
                log.error("the journal task did not stop")
            self._journal_task = None
        if self.journal is not None:
            if self.journal.store is not None:
                self.journal.store.close()
            self.journal = None

    def server(self, key: str) -> Server | None:
        """The running upstream server of a kind (modbus_tcp, bacnet, prometheus), if any."""
        return next((s for s in self.servers if s.name == key), None)

    async def _start_server(self, key: str) -> None:
        if not getattr(self.config.upstream, key).enabled:
            return
        try:
            cls = _load(SERVER_FACTORIES[key])
        except (ImportError, AttributeError) as exc:
            raise ServerStartError(f"upstream {key} is enabled but not available: {exc}") from exc
        server = cls(self.ports)
        self.servers.append(server)  # before start: a half-started server is stopped by stop()
        await server.start()

    async def _stop_server(self, key: str) -> None:
        server = self.server(key)
        if server is not None:
            self.servers.remove(server)
            await _bounded(server.stop(), f"upstream {key}")

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
        for m in auto:  # a reload that keeps the meter and its bus keeps what was found (_carry_identified)
            if m.id in identified:
                self._identified[m.id] = (m, identified[m.id])
            else:
                self._identified.pop(m.id, None)
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

    async def _check_profiles(self, driver: Driver, meters: list, first_round: asyncio.Event | None = None) -> None:
        """In the background, between polls: flag configured profiles the meters contradict (a silent meter
        costs one timeout here, not a delayed start); only once the bus's first poll round is done (`first_round`),
        so the checks' reads do not share the line with that round and the table fills sooner."""
        from .drivers.identify import check_bus

        configured = [m for m in meters if m.profile != "auto" and m.id in self.table.meter_ids]
        try:
            if first_round is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(first_round.wait(), 60)
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
        where: dict[str, Any] = await self.sims.open(bus, meters) if bus.simulated else {}
        if isinstance(bus, (ModbusRtuBus, ModbusTcpBus)):
            from .drivers.modbus import ModbusDriver

            return ModbusDriver(bus, self.profiles, **where)
        if isinstance(bus, MbusBus):
            from .drivers.mbus import MbusDriver

            if bus.simulated:  # a pty only takes 8N1: the simulated line ignores the configured parity
                bus = bus.model_copy(update={"parity": "N"})
            return MbusDriver(bus, self.profiles, **where)
        raise ValueError(f"unknown bus type {bus.type}")

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self.table.refresh_staleness()
            except Exception as exc:  # never let bookkeeping kill the gateway
                log.error("staleness refresh failed: %s", exc)

    async def stop(self) -> None:
        """Stop servers first (no new requests), then journal, polling, simulators; idempotent and bounded."""
        for t in self._tasks:
            if not await cancel_and_wait(t):
                log.error("task %s did not stop", t.get_name())
        self._tasks.clear()
        for server in reversed(list(self.servers)):
            await self._stop_server(server.name)
        await self._stop_journal()
        for bus_id in reversed(list(self.buses)):
            await self._stop_bus(bus_id)
        await self._stop_write_service()
        if self._own_sims:
            await self.sims.close()
        self.started = False

    async def scan_bus(self, bus_id: str, first: int | None, last: int | None, secondary: bool = True) -> list[dict]:
        """Find the meters on a polled bus between two polls: that bus pauses, the others keep polling."""
        from .scanning import scan_driver

        runner = self.buses[bus_id]
        async with runner.paused() as driver:
            return await scan_driver(driver, self.config.bus(bus_id), self.profiles, first, last, secondary)

    # -- reload ------------------------------------------------------------------------------------------
    async def apply(self, new: GatewayConfig, profiles: ProfileRegistry) -> ReloadPlan:
        """Reload as a diff: stop only the parts whose configuration changed, start them with the new one.

        Unchanged buses keep their runner (counters, schedules, connections), unchanged meters keep their table
        values, unchanged servers keep their sockets, clients and BACnet COV subscriptions. The caller has
        validated `new` completely. If a changed part cannot start, the error is raised after every other part
        was brought up: the gateway then serves with that part missing (it is logged by the caller).
        """
        old, old_profiles = self.config, self.profiles
        new = self._carry_identified(new, profiles)
        plan = ReloadPlan.between(old, old_profiles, new, profiles)
        failures: list[str] = []
        for key in plan.servers:
            await self._stop_server(key)
        if plan.journal:
            await self._stop_journal()
        carried = {bus_id: self.buses[bus_id] for bus_id in plan.buses if bus_id in self.buses}
        for bus_id in plan.buses:
            await self._stop_bus(bus_id)
        for mid in plan.values:
            self.table.remove_meter(mid)
        self.config, self.profiles = new, profiles
        self.sims.profiles = profiles
        self.table.stale_factor = new.gateway.stale_factor
        for m in new.meters:
            if m.enabled and m.id in plan.values and m.profile != "auto":  # auto: added once identified (_start_bus)
                self._add_meter(m)
        for bus in new.buses:
            if bus.id in plan.buses:
                try:
                    await self._start_bus(bus.id, carried.get(bus.id))
                except Exception as exc:
                    failures.append(f"bus {bus.id}: {exc}")
        if plan.writes:
            await self._stop_write_service()
        self._start_write_service()
        for server in list(self.servers):
            if plan.meters and not server.meters_changed(plan.meters):
                plan.servers.add(server.name)  # this server cannot follow meter changes live: restart it
                await self._stop_server(server.name)
        if plan.journal:
            try:
                self._start_journal()
            except Exception as exc:
                failures.append(f"journal: {exc}")
        for key in SERVER_FACTORIES:
            if key in plan.servers:
                try:
                    await self._start_server(key)
                except Exception as exc:
                    await self._stop_server(key)
                    failures.append(f"upstream {key}: {exc}")
        if failures:
            raise ServerStartError("; ".join(failures))
        return plan

    def _carry_identified(self, new: GatewayConfig, profiles: ProfileRegistry) -> GatewayConfig:
        """Reload: a `profile: auto` meter configured as before keeps the profile identified at start, unless its
        bus restarts (then it is identified again, like a meter whose configuration changed)."""
        keep = {
            m.id: found
            for m in new.meters
            if m.profile == "auto"
            and (seen := self._identified.get(m.id)) is not None
            and seen[0] == m
            and (found := seen[1]).profile in profiles.names()
        }

        def resolved(ids: set[str]) -> GatewayConfig:
            return new.model_copy(update={"meters": [keep[m.id] if m.id in ids else m for m in new.meters]})

        restarting = ReloadPlan.between(self.config, self.profiles, resolved(set(keep)), profiles).buses
        return resolved({mid for mid, m in keep.items() if m.bus not in restarting})

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


async def _bounded(aw: Awaitable[None], what: str, timeout: float = 5.0) -> None:
    """Await a stop step; log (never raise) when it fails or overruns."""
    try:
        await asyncio.wait_for(aw, timeout=timeout)
    except Exception as exc:
        log.error("error while stopping %s: %s", what, exc or type(exc).__name__)


@dataclass
class ReloadPlan:
    """What a reload replaces: bus ids, meter ids, upstream server keys, and whether journal/writes restart."""

    buses: set[str] = field(default_factory=set)
    meters: set[str] = field(default_factory=set)  # added, removed or changed in any way (servers follow them)
    values: set[str] = field(default_factory=set)  # whose point-table entry (values, alarms) starts afresh
    servers: set[str] = field(default_factory=set)
    journal: bool = False
    writes: bool = False

    @classmethod
    def between(
        cls, old: GatewayConfig, old_p: ProfileRegistry, new: GatewayConfig, new_p: ProfileRegistry
    ) -> ReloadPlan:
        """Compare two validated configurations."""
        plan = cls()
        old_b, new_b = {b.id for b in old.buses}, {b.id for b in new.buses}
        plan.buses = (old_b ^ new_b) | {b for b in old_b & new_b if _bus_key(old, old_p, b) != _bus_key(new, new_p, b)}
        old_m = {m.id for m in old.meters if m.enabled}
        new_m = {m.id for m in new.meters if m.enabled}
        plan.meters = (old_m ^ new_m) | {
            m for m in old_m & new_m if _meter_key(old, old_p, m) != _meter_key(new, new_p, m)
        }
        plan.values = (old_m ^ new_m) | {
            m for m in old_m & new_m if _meter_key(old, old_p, m, TABLE_KEYS) != _meter_key(new, new_p, m, TABLE_KEYS)
        }
        plan.servers = {k for k in SERVER_FACTORIES if _server_key(old, k) != _server_key(new, k)}
        plan.journal = (old.journal, old.gateway.timezone) != (new.journal, new.gateway.timezone)
        plan.writes = old.writes != new.writes or old.upstream.modbus_tcp.write_timeout != (
            new.upstream.modbus_tcp.write_timeout
        )
        return plan

    def summary(self) -> str:
        """One line for the log."""
        parts = [
            f"{what}: {', '.join(sorted(ids))}"
            for what, ids in (("buses", self.buses), ("meters", self.meters), ("servers", self.servers))
            if ids
        ]
        parts += [w for w, on in (("journal", self.journal), ("write service", self.writes)) if on]
        return "; ".join(parts) or "nothing changed"
