"""The narrow interfaces the gateway hands its parts: upstream servers, the write service and the journal get
these, never the Gateway object itself.

- `ConfigFacts`: the running configuration and what follows from it (catalogue, a meter's points, state paths);
  the gateway swaps the configuration inside it on reload, so every part sees the new one at once.
- `TableReader`: the point table, read side (values, meter states, change listeners).
- `GatewayStatus`: the state of the running parts as servers report it (started, bus statistics, journal,
  BACnet foreign-device registration).
- `BusControl`: commissioning on polled lines (scan between polls, frame trace).
- `ServerPorts`: the bundle an upstream server is built from.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .config import GatewayConfig, state_dir, state_path
from .core.catalogue import Catalogue
from .core.quality import PointValue
from .core.table import COMM_STATUS, Alarm, Listener, MeterState

if TYPE_CHECKING:
    from .journal.recorder import Recorder
    from .polling import BusRunner
    from .profiles import ProfileRegistry
    from .writes import WriteService


class ConfigFacts:
    """The running configuration, its profiles and catalogue; `replace` swaps them on reload."""

    def __init__(
        self, config: GatewayConfig, profiles: ProfileRegistry, catalogue: Catalogue, config_path: Path | None
    ) -> None:
        self.config = config
        self.profiles = profiles
        self.catalogue = catalogue
        self.config_path = config_path

    def replace(self, config: GatewayConfig, profiles: ProfileRegistry | None = None) -> None:
        """Make a new (validated) configuration the running one."""
        self.config = config
        if profiles is not None:
            self.profiles = profiles

    def meter_points(self, meter_id: str) -> frozenset[str]:
        """Points the meter's profile supports (minus its variant's absent ones, plus commands and
        Communication_Status)."""
        m = self.config.meter(meter_id)
        prof = self.profiles.get(m.profile)
        pts = set(getattr(prof, "points", {}))
        for v in getattr(prof, "variants", []):
            if v.name == getattr(m, "variant", None):
                pts -= set(v.points_absent)  # e.g. a PFA meter has no export register of its own
        pts |= set(getattr(prof, "commands", {}) or {})
        pts.add(COMM_STATUS)
        return frozenset(pts)

    @property
    def state_dir(self) -> Path:
        """The folder of the journal, the audit log and other state files."""
        return state_dir(self.config, self.config_path)

    def state_path(self, value: str) -> Path:
        """A state file's path (relative ones inside the state directory)."""
        return state_path(self.config, self.config_path, value)


class TableReader(Protocol):
    """The point table as the upstream servers see it: read values and states, follow changes."""

    clock: Callable[[], float]

    @property
    def meter_ids(self) -> tuple[str, ...]: ...

    def meter(self, meter_id: str) -> MeterState: ...

    def supports(self, meter_id: str, point: str) -> bool: ...

    def get(self, meter_id: str, point: str) -> PointValue: ...

    def meter_values(self, meter_id: str) -> dict[str, PointValue]: ...

    def snapshot(self) -> dict[str, dict[str, PointValue]]: ...

    def add_listener(self, listener: Listener) -> None: ...

    def remove_listener(self, listener: Listener) -> None: ...

    def add_alarm_listener(self, listener: Callable[[Alarm], None]) -> None: ...

    def remove_alarm_listener(self, listener: Callable[[Alarm], None]) -> None: ...


class GatewayStatus:
    """What the running parts report: whether the gateway started, each bus runner's statistics, the journal,
    the BACnet foreign-device registration. Read-only for servers."""

    def __init__(
        self,
        started: Callable[[], bool],
        buses: Mapping[str, BusRunner],
        journal: Callable[[], Recorder | None],
        foreign_registration: Callable[[], str | None],
        meter_bus: Callable[[str], str],
        bacnet_events: Callable[[], Any] = lambda: None,
        bacnet_discovery: Callable[[], Any] = lambda: None,
    ) -> None:
        self._started = started
        self.buses = buses  # the gateway's live mapping: bus id -> runner (statistics, meters, schedules)
        self._journal = journal
        self._foreign = foreign_registration
        self._meter_bus = meter_bus
        self._bacnet_events = bacnet_events
        self._bacnet_discovery = bacnet_discovery

    @property
    def started(self) -> bool:
        """True once every part is up."""
        return self._started()

    @property
    def journal(self) -> Recorder | None:
        """The billing journal's recorder (state, disk full, store), None when the journal is off."""
        return self._journal()

    def foreign_registration(self) -> str | None:
        """The BACnet foreign-device registration state, None when the device does not register."""
        return self._foreign()

    def bacnet_events(self) -> Any:
        """The BACnet device's intrinsic reporting (alarm counts for the metrics), None when it does not report."""
        return self._bacnet_events()

    def bacnet_discovery(self) -> Any:
        """The BACnet router's limits on routed Who-Is/Who-Has (counters for the metrics), None when not routing."""
        return self._bacnet_discovery()

    def runner_of(self, meter_id: str) -> BusRunner | None:
        """The runner polling a meter (its schedule and statistics), None while its bus is not polled."""
        try:
            return self.buses.get(self._meter_bus(meter_id))
        except KeyError:
            return None


class BusControl:
    """Commissioning actions on polled lines, for the CLI's live mode and the web page."""

    def __init__(
        self,
        buses: Mapping[str, BusRunner],
        bus_type: Callable[[str], str],
        scan: Callable[[str, int | None, int | None, bool], Awaitable[list[dict]]],
    ) -> None:
        self.buses = buses
        self._bus_type = bus_type
        self._scan = scan

    def bus_ids(self) -> Iterable[str]:
        """The polled buses."""
        return list(self.buses)

    def bus_type(self, bus_id: str) -> str:
        """modbus_rtu, modbus_tcp or mbus."""
        return self._bus_type(bus_id)

    def driver(self, bus_id: str) -> Any:
        """The line's driver (its frame trace), KeyError when the bus is not polled."""
        return self.buses[bus_id].driver

    async def scan(self, bus_id: str, first: int | None, last: int | None, secondary: bool = True) -> list[dict]:
        """Find the meters on a polled bus between two polls (that bus pauses, the others keep polling)."""
        return await self._scan(bus_id, first, last, secondary)


@dataclass(frozen=True)
class ServerPorts:
    """Everything an upstream server may use; it takes the parts it needs and nothing else."""

    facts: ConfigFacts
    table: TableReader
    writes: Callable[[], WriteService | None]  # the current write service (None when every upstream is off)
    status: GatewayStatus
    lines: BusControl
