"""The BACnet object model of a gateway (DESIGN.md section 4), without any BACnet stack: used by the BACnet server
and by the EDE export, so the two always agree."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import GatewayConfig, meter_device_instance
from .core.catalogue import Catalogue, PointDef
from .core.table import COMM_STATUS

#: COV increment per canonical unit (analog objects)
COV_INCREMENT = {
    "kWh": 0.01,
    "kVArh": 0.01,
    "kW": 0.1,
    "kVAr": 0.1,
    "kVA": 0.1,
    "V": 1.0,
    "A": 0.1,
    "": 0.01,
    "Hz": 0.05,
    "%": 0.5,
    "unix_s": 1.0,
    "min": 1.0,
    "s": 1.0,
    "Wh/imp": 1.0,
    "bps": 1.0,
}
ACCUMULATOR_MAX = 0xFFFFFFFF
#: points shown a second time as a DateTime Value object (a REAL cannot hold Unix seconds exactly)
DATETIME_POINTS = {"Demand_Peak_Timestamp": "Demand_Peak_DateTime"}


@dataclass(frozen=True, slots=True)
class ObjectSpec:
    """One BACnet object of the device: which meter point it shows and how."""

    meter_id: str
    point: PointDef
    object_type: str  # bacpypes3 object type name: accumulator, analog-input, binary-input, datetime-value, ...
    instance: int
    name: str
    description: str

    @property
    def writable(self) -> bool:
        """Present-value writes are offered (and decided by the write policy) on BO and AV objects only."""
        return self.object_type in ("binary-output", "analog-value")

    @property
    def cov_increment(self) -> float | None:
        """COV increment for analog objects."""
        if self.object_type in ("analog-input", "analog-value"):
            return COV_INCREMENT.get(self.point.unit, 0.1)
        return None

    @property
    def accumulator_scale(self) -> int:
        """Power of ten of an accumulator's present value (0.01 kWh -> -2)."""
        res = self.point.resolution or 1.0
        return round(math.log10(res))


def object_type_of(point: PointDef, energy_object: str) -> str:
    """The BACnet object type of a point (energies: accumulator unless the gateway is told analog-input)."""
    if point.bacnet_type == "accumulator" and energy_object == "analog-input":
        return "analog-input"
    return point.bacnet_type


def object_specs(
    config: GatewayConfig, catalogue: Catalogue, meter_points: dict[str, frozenset[str]]
) -> list[ObjectSpec]:
    """Every point object: one per supported point per enabled meter.

    Single device: instance = the meter's bacnet_instance_base + the point's fixed index, name `<meter>.<Point>`.
    Per-meter devices: each meter's objects are in its own device, instance = the fixed index, name `<Point>`, the
    same in every meter device (a head-end template fits every meter).
    """
    out = []
    energy_object = config.upstream.bacnet.energy_object
    per_meter = config.upstream.bacnet.devices == "per-meter"
    for m in config.meters:
        if not m.enabled:
            continue
        if per_meter:
            if meter_device_instance(m) is None:
                continue
            base, prefix = 0, ""
        elif m.bacnet_instance_base is None:  # allowed while BACnet is off: the meter has no objects
            continue
        else:
            base, prefix = m.bacnet_instance_base, f"{m.id}."
        pts = meter_points.get(m.id)
        if pts is None:  # `profile: auto` not identified (yet): no objects until it is
            continue
        for p in catalogue:
            if p.name not in pts and p.name != COMM_STATUS:
                continue
            desc = p.description if not m.name else f"{p.description} ({m.name})"
            out.append(
                ObjectSpec(m.id, p, object_type_of(p, energy_object), base + p.index, f"{prefix}{p.name}", desc[:255])
            )
            if p.name in DATETIME_POINTS:
                out.append(
                    ObjectSpec(
                        m.id,
                        p,
                        "datetime-value",
                        base + p.index,
                        f"{prefix}{DATETIME_POINTS[p.name]}",
                        f"{desc} (date and time)"[:255],
                    )
                )
    return out


@dataclass(frozen=True, slots=True)
class MeterDeviceSpec:
    """Per-meter devices: the BACnet device of one meter on the virtual network."""

    meter_id: str
    instance: int
    name: str
    description: str
    location: str
    serial_number: str
    model_name: str

    @property
    def mac(self) -> bytes:
        """Its address on the virtual network: the device instance in 3 octets (stable, unique)."""
        return self.instance.to_bytes(3, "big")


def device_of(config: GatewayConfig, meter_id: str) -> tuple[int, str]:
    """(instance, name) of the device holding a meter's objects: its own in per-meter mode, else the gateway's."""
    bac = config.upstream.bacnet
    if bac.devices == "per-meter":
        m = config.meter(meter_id)
        dev = meter_device_instance(m)
        if dev is not None:
            return dev, m.name or m.id
    return bac.device_instance, bac.device_name or config.gateway.name


#: the router's own address on the virtual network (the wildcard instance, which no device has)
ROUTER_MAC = (4194303).to_bytes(3, "big")


def meter_devices(config: GatewayConfig) -> list[MeterDeviceSpec]:
    """The meter devices of per-meter mode (empty in single mode), from each enabled meter's configuration."""
    bac = config.upstream.bacnet
    if bac.devices != "per-meter":
        return []
    out = []
    for m in config.meters:
        dev = meter_device_instance(m)
        if not m.enabled or dev is None:
            continue
        where = ", ".join(x for x in (m.building, m.floor, m.zone) if x)
        desc = f"Submeter {m.id} ({m.profile})" + (f", tenant {m.tenant}" if m.tenant else "")
        out.append(
            MeterDeviceSpec(
                m.id,
                dev,
                (m.name or m.id)[:255],
                desc[:255],
                (where or bac.location or config.gateway.location)[:255],
                m.serial_number[:255],
                m.profile[:255],
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class GatewayObjectSpec:
    """A BACnet object of the gateway itself, tied to no meter (the journal alarm)."""

    key: str
    object_type: str
    instance: int
    name: str
    description: str
    inactive_text: str
    active_text: str


#: object name of the journal alarm (Binary Input)
JOURNAL_ALARM_NAME = "gateway.Journal_Alarm"


def gateway_objects(config: GatewayConfig) -> list[GatewayObjectSpec]:
    """The gateway's own objects: the journal alarm Binary Input while the journal is enabled."""
    if not config.journal.enabled:
        return []
    return [
        GatewayObjectSpec(
            "journal_alarm",
            "binary-input",
            config.upstream.bacnet.gateway_alarm_instance,
            JOURNAL_ALARM_NAME,
            "Billing journal alarm: active while the journal is degraded (damaged file kept aside, write error) or "
            "unavailable (cannot be opened), or the disk is full; see /health",
            "normal",
            "alarm",
        )
    ]


def journal_alarm(state: str | None, disk_full: bool) -> bool:
    """Whether the journal alarm is active: the journal is enabled and not ok, or its disk is full."""
    return state is not None and (state != "ok" or disk_full)


def state_valid(spec: ObjectSpec, value: float | int | bool | None) -> bool:
    """Whether a multi-state table value is one of the object's states (others show as multi-state-fault)."""
    p = spec.point
    if spec.object_type != "multi-state-value" or value is None:
        return True
    try:
        v = int(value)
    except (TypeError, ValueError):
        return False
    if v != value:
        return False
    if p.allowed_values:
        return v in p.allowed_values
    return 0 <= v < len(p.states or ())


def present_value(spec: ObjectSpec, value: float | int | bool | None) -> float | int | str:
    """The present-value to show for a table value (accumulator units, 1-based multi-state, binary texts)."""
    p = spec.point
    t = spec.object_type
    if t == "accumulator":
        if value is None:
            return 0
        raw = round(float(value) / (p.resolution or 1.0))
        return min(max(raw, 0), ACCUMULATOR_MAX)
    if t in ("binary-input", "binary-output"):
        return "active" if value else "inactive"
    if t == "multi-state-value":
        if value is None:
            return 1
        if p.allowed_values:
            try:
                return p.allowed_values.index(int(value)) + 1
            except ValueError:
                return 1
        return int(value) + 1
    return 0.0 if value is None else float(value)


def table_value(spec: ObjectSpec, written) -> float | int:
    """The table (canonical) value of a present-value written by a BACnet client."""
    p = spec.point
    if spec.object_type in ("binary-output", "binary-input"):
        return 1 if str(written) in ("active", "1", "BinaryPV(active)") or written == 1 else 0
    if spec.object_type == "multi-state-value":
        idx = int(written) - 1
        return p.allowed_values[idx] if p.allowed_values and 0 <= idx < len(p.allowed_values) else idx
    return float(written)
