"""Per-meter BACnet devices without a network: the configuration checks (file:line), the device and object model,
the EDE export, the routed requester seen by the write policy."""

from __future__ import annotations

import pytest
from bacpypes3.pdu import Address, RemoteStation

from meter_gateway.bacnet_model import ROUTER_MAC, meter_devices, object_specs
from meter_gateway.commands.ede import ede_rows
from meter_gateway.config import ConfigError, parse_config
from meter_gateway.core.catalogue import load_catalogue
from meter_gateway.profiles import load_profiles
from meter_gateway.servers.bacnet_router import placeholder_net, routed_peer


def text(bacnet: str = "devices: per-meter, virtual_network: 2001", meters: str = "") -> str:
    """A configuration: two meters (one with a device instance of its own), BACnet as given."""
    return f"""gateway: {{name: gw}}
buses:
  - {{id: rtu, type: modbus_rtu, port: /dev/null}}
meters:
  - id: a
    name: Shop A
    bus: rtu
    address: 1
    profile: generic
    bacnet_instance_base: 1000
    serial_number: SN-A
    building: North
    tenant: Bakery
  - id: b
    bus: rtu
    address: 2
    profile: eastron_sdm630
    bacnet_instance_base: 2000
    bacnet_device_instance: 70002
{meters}upstream:
  bacnet: {{enabled: true, device_instance: 599, {bacnet}}}
"""


@pytest.fixture(scope="module")
def profiles():
    """The profiles shipped with the package."""
    return load_profiles()


def test_device_instances_names_and_the_same_object_instances_in_every_device(profiles):
    cfg = parse_config(text(), "gw.yaml", profiles=profiles)
    devs = {d.meter_id: d for d in meter_devices(cfg)}
    assert (devs["a"].instance, devs["a"].name, devs["a"].serial_number) == (1000, "Shop A", "SN-A")
    assert devs["a"].location == "North" and "Bakery" in devs["a"].description
    assert (devs["b"].instance, devs["b"].name) == (70002, "b")  # no name: the meter's id
    assert devs["b"].mac == (70002).to_bytes(3, "big") != ROUTER_MAC
    cat = load_catalogue()
    pts = {m: frozenset(p.name for p in cat) for m in ("a", "b")}
    specs = object_specs(cfg, cat, pts)
    by_meter = {m: {(s.object_type, s.instance, s.name) for s in specs if s.meter_id == m} for m in ("a", "b")}
    assert by_meter["a"] == by_meter["b"]  # a head-end template fits every meter
    assert ("accumulator", cat.get("Active_Energy_Import").index, "Active_Energy_Import") in by_meter["a"]
    # single mode is unchanged: base + index, <meter>.<point>
    single = parse_config(text("devices: single"), "gw.yaml", profiles=profiles)
    assert not meter_devices(single)
    names = {(s.instance, s.name) for s in object_specs(single, cat, pts) if s.meter_id == "a"}
    assert (1000 + cat.get("Active_Energy_Import").index, "a.Active_Energy_Import") in names


@pytest.mark.parametrize(
    ("bacnet", "meters", "line", "message"),
    [
        ("devices: per-meter", "", 21, "needs `virtual_network:`"),
        ("devices: per-meter, virtual_network: 7, network_number: 7", "", 21, "need different numbers"),
        (
            "devices: per-meter, virtual_network: 2001",
            "  - {id: c, bus: rtu, address: 3, profile: generic, bacnet_device_instance: 70002}\n",
            20,
            "device instance 70002 of meter 'c' is already used by meter 'b'",
        ),
        (
            "devices: per-meter, virtual_network: 2001",
            "  - {id: c, bus: rtu, address: 3, profile: generic, bacnet_device_instance: 599}\n",
            20,
            "is already used by the gateway's own device",
        ),
        (
            "devices: per-meter, virtual_network: 2001",
            "  - {id: c, name: Shop A, bus: rtu, address: 3, profile: generic, bacnet_device_instance: 70003}\n",
            20,
            "device name 'Shop A' of meter 'c' is already used by meter 'a'",
        ),
    ],
)
def test_check_refuses_collisions_with_file_and_line(profiles, bacnet, meters, line, message):
    with pytest.raises(ConfigError) as err:
        parse_config(text(bacnet, meters), "gw.yaml", profiles=profiles)
    assert f"gw.yaml:{line}:" in str(err.value) and message in str(err.value), str(err.value)


def test_ede_lists_every_meter_device_with_its_objects(profiles):
    cfg = parse_config(text(), "gw.yaml", profiles=profiles)
    rows, _ = ede_rows(cfg, profiles)
    devices = [(r[1], r[2]) for r in rows if r[3] == "8"]
    assert devices == [("599", "gw"), ("1000", "Shop A"), ("70002", "b")]
    energy = {r[1]: (r[0], r[2], r[4]) for r in rows if r[2] == "Active_Energy_Import"}
    assert energy == {"1000": ("a.Active_Energy_Import", "Active_Energy_Import", "1"), "70002": energy["70002"]}
    assert energy["70002"][2] == "1"  # the same instance in both devices
    keys = [r[0] for r in rows]
    assert len(keys) == len(set(keys))  # EDE keynames are unique over the file
    # adding a meter adds a device and its rows; the others' rows stay as they were
    more = parse_config(
        text(meters="  - {id: c, bus: rtu, address: 3, profile: generic, bacnet_device_instance: 70003}\n"),
        "gw.yaml",
        profiles=profiles,
    )
    rows2, _ = ede_rows(more, profiles)
    assert [r for r in rows2 if r[1] != "70003"] == rows
    assert any(r[1] == "70003" and r[3] == "8" for r in rows2)


def test_requester_of_a_routed_request():
    ip = Address("127.0.0.1:47809")
    assert routed_peer(RemoteStation(7, ip.addrAddr), 7) == "127.0.0.1"  # from the router's own IP network
    assert routed_peer(RemoteStation(9, ip.addrAddr), 7).startswith("net9:")  # behind another router: no IP
    assert routed_peer(ip, 7) == "127.0.0.1"
    assert placeholder_net(65534) != 65534 and placeholder_net(2001) == 65534


def test_brick_and_haystack_point_at_each_meter_device(profiles):
    from rdflib.namespace import Namespace

    from meter_gateway.models.brick import build_graph
    from meter_gateway.models.common import gateway_meter_points
    from meter_gateway.models.haystack import entities

    cfg = parse_config(text(), "gw.yaml", profiles=profiles)
    catalogue, points = gateway_meter_points(cfg, profiles)
    recs = entities(cfg, catalogue, points)
    ids = [r["id"].val for r in recs]
    assert len(ids) == len(set(ids))  # the same object names in every device, distinct Haystack ids
    energy = {r["equipRef"].val: r for r in recs if r.get("navName") == "Active_Energy_Import"}
    conns = {r["id"].val: r["bacnetDeviceId"].val for r in recs if "bacnetConn" in r}
    assert {e: conns[r["bacnetConnRef"].val] for e, r in energy.items()} == {"meter.a": 1000, "meter.b": 70002}
    assert {r["bacnetCur"] for r in energy.values()} == {"ACC1"}  # the same instance in every device
    g = build_graph(cfg, catalogue, points)
    ref = Namespace("https://brickschema.org/schema/Brick/ref#")
    uris = {str(o) for o in g.objects(None, ref.BACnetURI)}
    assert {"bacnet://1000/accumulator,1/present-value", "bacnet://70002/accumulator,1/present-value"} <= uris
    assert not any(u.startswith("bacnet://599/") for u in uris)  # no point of a meter in the router's device
