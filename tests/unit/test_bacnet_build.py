"""Point objects copied from a template (servers/bacnet_build.py) are the objects bacpypes3 builds, and a table
change stored directly into an unwatched object leaves it as bacpypes3's own assignment would."""

from __future__ import annotations

import time

from bacpypes3.basetypes import PropertyIdentifier
from bacpypes3.constructeddata import Any as AnyValue

from meter_gateway.app import Gateway
from meter_gateway.config import parse_config
from meter_gateway.core.quality import PointValue, Quality
from meter_gateway.servers.bacnet import BacnetServer
from meter_gateway.servers.bacnet_build import IMMUTABLE, ObjectTemplates

CONFIG = """
buses: [{id: rtu, type: modbus_rtu, simulated: true}]
meters:
  - {id: a, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000}
  - {id: b, bus: rtu, address: 2, profile: generic, bacnet_instance_base: 2000, mid: true}
  - {id: c, bus: rtu, address: 3, profile: eastron_sdm630, bacnet_instance_base: 3000}
upstream: {bacnet: {enabled: true, bind: 127.0.0.1, port: 0}}
"""


def _servers(profiles) -> tuple[BacnetServer, BacnetServer]:
    gw = Gateway(parse_config(CONFIG, profiles=profiles), profiles)
    copied, built = BacnetServer(gw.ports), BacnetServer(gw.ports)
    built._templates = ObjectTemplates(copy=False)
    return copied, built


async def _encoded(obj, name: str) -> bytes | str | None:
    """A property as a client reads it: its encoding, None, or the error bacpypes3 raises."""
    try:
        value = await obj.read_property(PropertyIdentifier(name), None)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if value is None else bytes(AnyValue(value).encode().encode().pduData)


async def _same(x, y) -> None:
    assert type(x) is type(y)
    for name in type(x)._elements:
        assert await _encoded(x, name) == await _encoded(y, name), (x.objectName, name)
    # the same attributes, but for elements left None (read from the class: absent_is_none)
    own = {k for k, v in vars(x).items() if v is not None and not k.startswith("_gw_")}
    assert own == {k for k, v in vars(y).items() if v is not None and not k.startswith("_gw_")}, x.objectName


async def test_copied_objects_are_the_objects_bacpypes3_builds(profiles):
    copied, built = _servers(profiles)
    a = [copied._make(s) for s in copied.specs]
    b = [built._make(s) for s in built.specs]
    kinds = {type(o).__name__ for o in a}
    assert {"GwAnalogInput", "GwAnalogValue", "GwAccumulator", "GwBinaryInput", "GwBinaryOutput"} <= kinds
    assert {"GwMultiStateValue", "GwDateTimeValue"} <= kinds
    assert copied._templates.copied > len(a) * 0.9 and built._templates.copied == 0
    for x, y in zip(a, b, strict=True):
        await _same(x, y)
    # nothing mutable is shared between two objects, each has its own property monitors
    seen: dict[int, str] = {}
    for o in a:
        assert o._property_monitors is not a[0]._property_monitors or o is a[0]
        for k, v in vars(o).items():
            if k.startswith("_gw_") or v is None or (isinstance(v, IMMUTABLE) and not isinstance(v, list)):
                continue
            if k in ("_property_monitors", "_app"):
                continue
            assert id(v) not in seen, f"{o.objectName}.{k} shared with {seen[id(v)]}"
            seen[id(v)] = f"{o.objectName}.{k}"


async def test_a_change_stored_directly_is_what_the_normal_assignment_makes(profiles):
    copied, built = _servers(profiles)
    a = {(o._gw_spec.meter_id, o._gw_spec.point.name, type(o)): o for o in map(copied._make, copied.specs)}
    b = {(o._gw_spec.meter_id, o._gw_spec.point.name, type(o)): o for o in map(built._make, built.specs)}
    for o in b.values():  # a watcher on each reference object: it takes bacpypes3's assignment path
        o._property_monitors["presentValue"].append(lambda old, new: None)
    now = time.time()
    steps = [
        PointValue(1, Quality.GOOD, now, now),
        PointValue(None, Quality.COMM_FAILURE, now, now),
        PointValue(2, Quality.GOOD, now + 1, now + 1),
        PointValue(2, Quality.STALE, now + 1, now + 1),
        PointValue(3.5, Quality.BAD_DATA, now + 2, now + 2),
    ]
    for key in a:
        mid, point, _ = key
        old = copied.table.get(mid, point)
        for new in steps:
            copied._on_change(mid, point, old, new)
            built._on_change(mid, point, old, new)
            old = new
            await _same(a[key], b[key])
