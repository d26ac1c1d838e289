"""The canonical point catalogue (53 points per meter), loaded from package data and validated."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

import yaml


class PointKind(StrEnum):
    """What a point is for."""

    MEASUREMENT = "measurement"
    COMMAND = "command"
    STATUS = "status"
    CONFIG = "config"


class PollClass(StrEnum):
    """Poll classes of the spec's polling table; each has a default interval."""

    POWER = "power"  # powers and currents
    VOLTAGE = "voltage"  # voltages, power factor, frequency, neutral current
    ENERGY = "energy"  # energies, peak demand, THD
    ALARM = "alarm"  # phase alarms, overload, tamper, pulse output
    STATUS = "status"  # general states
    CONFIG = "config"  # configuration: read at start, after writes, then rarely
    COMMAND = "command"  # commands: never polled
    DERIVED = "derived"  # computed by the gateway (Communication_Status)


#: Default poll interval in seconds per class (spec: "Fréquences de polling recommandées").
DEFAULT_INTERVALS: dict[PollClass, float] = {
    PollClass.POWER: 10.0,
    PollClass.VOLTAGE: 30.0,
    PollClass.ENERGY: 60.0,
    PollClass.ALARM: 10.0,
    PollClass.STATUS: 30.0,
    PollClass.CONFIG: 3600.0,
}

#: Poll classes that the scheduler reads from meters.
POLLED_CLASSES: tuple[PollClass, ...] = tuple(DEFAULT_INTERVALS)

BACNET_TYPES = frozenset(
    {"accumulator", "analog-input", "binary-input", "multi-state-value", "binary-output", "analog-value"}
)
BACNET_UNITS = frozenset(
    {
        "kilowattHours",
        "kilovoltAmpereHoursReactive",
        "kilowatts",
        "kilovoltAmperesReactive",
        "kilovoltAmperes",
        "volts",
        "amperes",
        "noUnits",
        "hertz",
        "seconds",
        "percent",
        "minutes",
        "wattHours",
    }
)
MODBUS_TABLES = frozenset({"input", "holding", "coil", "discrete_input"})
MODBUS_TYPES = frozenset({"uint32", "float32", "bit"})
CONFIG_CLASSES = frozenset({"metrology", "comm", "other"})


class CatalogueError(ValueError):
    """The catalogue data file is inconsistent."""


@dataclass(frozen=True, slots=True)
class UpstreamRegister:
    """Where a point sits in the canonical upstream Modbus map."""

    table: str
    address: int
    type: str
    reference: str

    @property
    def count(self) -> int:
        """Number of 16-bit registers (or bits) the point occupies."""
        return 1 if self.type == "bit" else 2


@dataclass(frozen=True, slots=True)
class PointDef:
    """One canonical point as fixed by the catalogue."""

    index: int
    name: str
    kind: PointKind
    description: str
    description_fr: str
    unit: str
    bacnet_type: str
    bacnet_unit: str | None
    poll_class: PollClass
    range: tuple[float, float] | None
    modbus: UpstreamRegister
    haystack: tuple[str, ...]
    brick: str
    resolution: float | None = None
    allowed_values: tuple[int, ...] | None = None
    states: tuple[str, ...] | None = None
    config_class: str | None = None
    phase: str | None = None
    plausible: tuple[float, float] | None = None

    @property
    def is_energy(self) -> bool:
        """True for cumulative energy registers (billing values)."""
        return self.bacnet_type == "accumulator"

    @property
    def is_binary(self) -> bool:
        """True for two-state points (BI, BO)."""
        return self.bacnet_type in ("binary-input", "binary-output")

    @property
    def writable(self) -> bool:
        """True for points an upstream may try to write (commands and configuration)."""
        return self.kind in (PointKind.COMMAND, PointKind.CONFIG)

    def in_range(self, value: float) -> bool:
        """Whether a value lies inside the spec's range (or allowed set) for this point."""
        if self.allowed_values is not None:
            return value in self.allowed_values
        if self.range is None:
            return True
        return self.range[0] <= value <= self.range[1]

    def implausible(self, value: float | int | bool) -> str:
        """Why a reading cannot be true for this point (outside its plausible limits), or "" when it can."""
        if isinstance(value, bool):
            return ""
        if self.bacnet_type == "multi-state-value" and self.states and self.kind is not PointKind.CONFIG:
            ok = isinstance(value, int) and 0 <= value < len(self.states)
            return "" if ok else f"{value} is not one of the {len(self.states)} states"
        if self.plausible is not None:
            lo, hi = self.plausible
            if not lo <= value <= hi:
                return f"{value:g} {self.unit} outside the plausible {lo:g}..{hi:g}".replace("  ", " ")
            return ""
        if self.allowed_values is not None and value not in self.allowed_values:
            return f"{value:g} is not one of {list(self.allowed_values)}"
        return ""


class Catalogue:
    """The validated, ordered set of canonical points."""

    def __init__(self, points: list[PointDef], version: int) -> None:
        self.version = version
        self.points: tuple[PointDef, ...] = tuple(sorted(points, key=lambda p: p.index))
        self._by_name = {p.name: p for p in self.points}
        self._by_index = {p.index: p for p in self.points}

    def __iter__(self):
        return iter(self.points)

    def __len__(self) -> int:
        return len(self.points)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> PointDef:
        """Return the point called `name` (KeyError if unknown)."""
        return self._by_name[name]

    def by_index(self, index: int) -> PointDef:
        """Return the point with fixed index `index`."""
        return self._by_index[index]

    def names(self) -> tuple[str, ...]:
        """All point names in index order."""
        return tuple(p.name for p in self.points)

    def of_kind(self, kind: PointKind) -> tuple[PointDef, ...]:
        """The points of one kind, in index order."""
        return tuple(p for p in self.points if p.kind is kind)


def _point_from_dict(d: dict[str, Any]) -> PointDef:
    where = f"point {d.get('index', '?')} {d.get('name', '?')}"
    try:
        m = d["modbus"]
        rng = d.get("range")
        p = PointDef(
            index=int(d["index"]),
            name=str(d["name"]),
            kind=PointKind(d["kind"]),
            description=str(d["description"]),
            description_fr=str(d["description_fr"]),
            unit=str(d.get("unit") or ""),
            bacnet_type=str(d["bacnet_type"]),
            bacnet_unit=d.get("bacnet_unit"),
            poll_class=PollClass(d["poll_class"]),
            range=(float(rng[0]), float(rng[1])) if rng else None,
            modbus=UpstreamRegister(str(m["table"]), int(m["address"]), str(m["type"]), str(m["reference"])),
            haystack=tuple(d.get("haystack") or ()),
            brick=str(d.get("brick") or ""),
            resolution=d.get("resolution"),
            allowed_values=tuple(d["allowed_values"]) if d.get("allowed_values") else None,
            states=tuple(d["states"]) if d.get("states") else None,
            config_class=d.get("config_class"),
            phase=d.get("phase"),
            plausible=(float(d["plausible"][0]), float(d["plausible"][1])) if d.get("plausible") else None,
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CatalogueError(f"{where}: {exc!r}") from exc
    if p.bacnet_type not in BACNET_TYPES:
        raise CatalogueError(f"{where}: unknown BACnet object type {p.bacnet_type!r}")
    needs_unit = p.bacnet_type in ("accumulator", "analog-input", "analog-value")
    if needs_unit and p.bacnet_unit not in BACNET_UNITS:
        raise CatalogueError(f"{where}: unknown BACnet unit {p.bacnet_unit!r}")
    if p.modbus.table not in MODBUS_TABLES or p.modbus.type not in MODBUS_TYPES:
        raise CatalogueError(f"{where}: bad upstream Modbus mapping {p.modbus}")
    if p.bacnet_type in ("binary-input", "binary-output") and (not p.states or len(p.states) != 2):
        raise CatalogueError(f"{where}: a binary point needs exactly two state texts")
    if p.bacnet_type == "multi-state-value" and not p.states:
        raise CatalogueError(f"{where}: a multi-state point needs state texts")
    analog = p.bacnet_type in ("accumulator", "analog-input", "analog-value")
    if analog and p.plausible is None:
        raise CatalogueError(f"{where}: an analog point declares its plausible limits")
    if p.plausible is not None and not p.plausible[0] < p.plausible[1]:
        raise CatalogueError(f"{where}: plausible limits must be increasing")
    if p.kind is PointKind.CONFIG and p.config_class not in CONFIG_CLASSES:
        raise CatalogueError(f"{where}: configuration point needs config_class in {sorted(CONFIG_CLASSES)}")
    return p


def parse_catalogue(data: dict[str, Any]) -> Catalogue:
    """Validate a parsed catalogue document and build the Catalogue."""
    points = [_point_from_dict(d) for d in data.get("points", [])]
    seen_names: set[str] = set()
    seen_idx: set[int] = set()
    seen_reg: dict[tuple[str, int], str] = {}
    for p in points:
        if p.name in seen_names:
            raise CatalogueError(f"duplicate point name {p.name}")
        if p.index in seen_idx or not 1 <= p.index <= 99:
            raise CatalogueError(f"point {p.name}: index {p.index} duplicated or outside 1..99")
        seen_names.add(p.name)
        seen_idx.add(p.index)
        for k in range(p.modbus.count):
            key = (p.modbus.table, p.modbus.address + k)
            if key in seen_reg:
                raise CatalogueError(f"point {p.name}: upstream register {key} already used by {seen_reg[key]}")
            seen_reg[key] = p.name
    return Catalogue(points, int(data.get("version", 1)))


@cache
def load_catalogue() -> Catalogue:
    """Load the catalogue shipped in the package (cached)."""
    text = resources.files("meter_gateway").joinpath("data/catalogue.yaml").read_text(encoding="utf-8")
    # libyaml when present: the same document in a tenth of the time (this load is on every start's path)
    return parse_catalogue(yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
