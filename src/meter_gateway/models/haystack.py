"""Project Haystack export of the configured site: site, floors and zones, meters as elecMeter equips (with
submeterOf), and every served point with the catalogue's tags, Haystack units and BACnet / Modbus addresses.

Encodings: Haystack 4 JSON (Hayson, `_kind` objects) and Zinc, both written here with the standard library."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ..bacnet_model import device_of
from ..config import GatewayConfig
from ..core.catalogue import Catalogue
from .common import UNITS, served_meters, slug

#: BACnet object type -> the object abbreviation of Haystack's bacnetCur ("AI3")
BACNET_ABBR = {
    "analog-input": "AI",
    "analog-value": "AV",
    "binary-input": "BI",
    "binary-output": "BO",
    "multi-state-value": "MV",
    "accumulator": "ACC",
}
#: catalogue phase -> Haystack 4 `phase` value
PHASE = {"L1": "A", "L2": "B", "L3": "C", "L1-L2": "AB", "L2-L3": "BC", "L3-L1": "CA", "N": "N"}
TAG_NAME = re.compile(r"^[a-z][a-zA-Z0-9_]*$")


class Marker:
    """The Haystack marker value."""

    def __repr__(self) -> str:
        return "M"


class Ref:
    """A Haystack reference with an optional display name."""

    def __init__(self, val: str, dis: str = "") -> None:
        self.val, self.dis = val, dis

    def __repr__(self) -> str:
        return f"@{self.val}"


class Num:
    """A Haystack number with an optional unit."""

    def __init__(self, val: float, unit: str = "") -> None:
        self.val, self.unit = val, unit


M = Marker()


def _ref_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_:.~-]", "_", text)


def _wildcard(bind: str) -> bool:
    return bind in ("", "0.0.0.0", "::")


def haystack_tz(iana: str) -> str:
    """The Haystack time zone name of an IANA zone (the city part: Europe/Paris -> Paris)."""
    return "UTC" if iana in ("UTC", "Etc/UTC") else iana.rsplit("/", 1)[-1]


def point_tags(tags: tuple[str, ...], phase: str | None) -> dict[str, Any]:
    """The Haystack tags of a catalogue point: markers, with the phase as Haystack 4's `phase` string."""
    out: dict[str, Any] = {}
    for t in tags:
        if t in ("L1", "L2", "L3", "N", "phase"):
            continue
        if not TAG_NAME.match(t):
            raise ValueError(f"catalogue Haystack tag {t!r} is not a valid Haystack tag name")
        out[t] = M
    if phase in PHASE:
        out["phase"] = PHASE[phase]
    return out


def entities(
    config: GatewayConfig, catalogue: Catalogue, meter_points: dict[str, frozenset[str]]
) -> list[dict[str, Any]]:
    """Every Haystack entity (site, spaces, connectors, equips, points) as dicts of tag -> value."""
    tz = haystack_tz(config.gateway.timezone)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    served = served_meters(config, catalogue, meter_points)
    enabled = {s.config.id for s in served}
    bac, mb = config.upstream.bacnet, config.upstream.modbus_tcp

    def add(rec: dict[str, Any]) -> None:
        if rec["id"].val not in seen:
            seen.add(rec["id"].val)
            out.append(rec)

    bacnet_conn = None
    if bac.enabled:
        bacnet_conn = Ref(f"conn.bacnet.{bac.device_instance}", f"BACnet device {bac.device_instance}")
        conn = {"id": bacnet_conn, "dis": bacnet_conn.dis, "bacnetConn": M, "bacnetDeviceId": Num(bac.device_instance)}
        if not _wildcard(bac.bind):  # a wildcard bind names no address a client could use
            conn["uri"] = f"bacnet://{bac.bind}:{bac.port}/{bac.device_instance}"
        add(conn)
    for sm in served:
        m = sm.config
        site = Ref(_ref_id(f"site.{slug(m.site)}"), m.site)
        add({"id": site, "dis": m.site, "site": M, "tz": tz})
        space: Ref | None = None
        if m.floor:
            dis = f"{m.building} {m.floor}".strip()
            space = Ref(_ref_id(f"floor.{slug(m.site)}.{slug(m.building)}.{slug(m.floor)}"), dis)
            rec = {"id": space, "dis": dis, "space": M, "floor": M, "siteRef": site}
            if m.building:
                rec["building"] = m.building
            add(rec)
        if m.zone:
            zone = Ref(_ref_id(f"zone.{slug(m.site)}.{slug(m.building)}.{slug(m.floor)}.{slug(m.zone)}"), m.zone)
            rec = {"id": zone, "dis": m.zone, "space": M, "siteRef": site}
            if space is not None:
                rec["spaceRef"] = space
            add(rec)
            space = zone
        meter = Ref(_ref_id(f"meter.{m.id}"), m.name or m.id)
        equip: dict[str, Any] = {"id": meter, "dis": m.name or m.id, "equip": M, "meter": M, "elec": M}
        equip["elecMeter"] = M  # Haystack 3 name of the elec-meter conjunct, still searched by many tools
        equip["siteRef"] = site
        if space is not None:
            equip["spaceRef"] = space
        if m.parent and m.parent in enabled:
            equip["submeterOf"] = Ref(_ref_id(f"meter.{m.parent}"))
        if m.tenant:
            equip["tenant"] = m.tenant
        if m.serial_number:
            equip["serialNumber"] = m.serial_number
        if m.mid:
            equip["midCertified"] = M
        if m.building and not m.floor:
            equip["building"] = m.building
        modbus_conn = None
        if mb.enabled and m.modbus_unit is not None:
            modbus_conn = Ref(_ref_id(f"conn.modbus.{m.id}"), f"Modbus TCP unit {m.modbus_unit} ({m.id})")
            conn = {"id": modbus_conn, "dis": modbus_conn.dis, "modbusConn": M, "modbusSlave": Num(m.modbus_unit)}
            if not _wildcard(mb.bind):
                conn["uri"] = f"modbus-tcp://{mb.bind}:{mb.port}/"
            add(conn)
        add(equip)
        meter_conn = bacnet_conn
        if bacnet_conn is not None and bac.devices == "per-meter":  # the meter's own device, behind the router
            dev, label = device_of(config, m.id)
            meter_conn = Ref(_ref_id(f"conn.bacnet.{dev}"), f"BACnet device {dev} ({label})")
            add({"id": meter_conn, "dis": meter_conn.dis, "bacnetConn": M, "bacnetDeviceId": Num(dev)})
        for spec in sm.objects:
            if spec.object_type == "datetime-value":
                continue  # the same point as its analog-input (Demand_Peak_Timestamp), which carries bacnetCur
            p = spec.point
            name = f"{m.id}.{p.name}"  # the object name in single mode; per-meter devices name it p.name
            rec = {"id": Ref(_ref_id(name), name), "dis": name, "navName": p.name}
            rec.update(point_tags(p.haystack, p.phase))
            rec["point"] = M
            rec["kind"] = "Bool" if spec.object_type in ("binary-input", "binary-output") else "Number"
            if p.unit in UNITS:
                rec["unit"] = UNITS[p.unit][1]
            rec.update({"equipRef": meter, "siteRef": site, "tz": tz})
            if space is not None:
                rec["spaceRef"] = space
            if p.states and rec["kind"] == "Bool":
                rec["enum"] = ",".join(p.states)
            if spec.writable and config.writes.enabled:
                rec["writable"] = M
            if bacnet_conn is not None:
                rec["cur"] = M
                rec["bacnetConnRef"] = meter_conn
                rec["bacnetCur"] = f"{BACNET_ABBR[spec.object_type]}{spec.instance}"
            if modbus_conn is not None:
                rec["modbusConnRef"] = modbus_conn
                rec["modbusCur"] = p.modbus.reference
                rec["modbusAddr"] = Num(p.modbus.address)
                rec["modbusTable"] = p.modbus.table
                rec["modbusType"] = p.modbus.type
            out.append(rec)
    return out


def _columns(recs: list[dict[str, Any]]) -> list[str]:
    cols = list(dict.fromkeys(k for r in recs for k in r))
    first = [c for c in ("id", "dis") if c in cols]
    return first + sorted(c for c in cols if c not in first)


def _json_val(v: Any) -> Any:
    if isinstance(v, Marker):
        return {"_kind": "marker"}
    if isinstance(v, Ref):
        return {"_kind": "ref", "val": v.val, **({"dis": v.dis} if v.dis else {})}
    if isinstance(v, Num):
        return {"_kind": "number", "val": v.val, **({"unit": v.unit} if v.unit else {})}
    return v


def to_json(recs: list[dict[str, Any]]) -> str:
    """A Haystack 4 JSON grid of the entities."""
    grid = {
        "_kind": "grid",
        "meta": {"ver": "3.0"},
        "cols": [{"name": c} for c in _columns(recs)],
        "rows": [{k: _json_val(v) for k, v in r.items()} for r in recs],
    }
    return json.dumps(grid, indent=1, ensure_ascii=False) + "\n"


def _zinc_str(s: str) -> str:
    esc = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "$": "\\$"}
    return '"' + "".join(esc.get(c, c) for c in s) + '"'


def _zinc_val(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, Marker):
        return "M"
    if isinstance(v, Ref):
        return f"@{v.val}" + (f" {_zinc_str(v.dis)}" if v.dis else "")
    if isinstance(v, Num):
        if not math.isfinite(v.val):
            return "NaN" if math.isnan(v.val) else ("INF" if v.val > 0 else "-INF")
        n = f"{v.val:g}" if isinstance(v.val, float) else str(v.val)
        return n + v.unit
    if isinstance(v, bool):
        return "T" if v else "F"
    return _zinc_str(str(v))


def to_zinc(recs: list[dict[str, Any]]) -> str:
    """A Zinc grid of the entities."""
    cols = _columns(recs)
    lines = ['ver:"3.0"', ",".join(cols)]
    lines += [",".join(_zinc_val(r.get(c)) for c in cols) for r in recs]
    return "\n".join(lines) + "\n"
