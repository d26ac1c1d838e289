"""What a reload replaces: only the parts whose configuration changed (ReloadPlan.between)."""

from __future__ import annotations

import pytest

from meter_gateway.app import ReloadPlan
from meter_gateway.config import parse_config
from meter_gateway.profiles import load_profiles

BASE = """
gateway: {name: plan, timezone: Europe/Paris}
buses:
  - {id: rtu, type: modbus_rtu, port: /dev/ttyUSB0}
  - {id: tcp, type: modbus_tcp, host: 10.0.0.9}
meters:
  - {id: m1, bus: rtu, address: 1, profile: eastron_sdm630, tenant: shop1, bacnet_instance_base: 1000, modbus_unit: 1}
  - {id: m2, bus: tcp, address: 1, profile: generic, bacnet_instance_base: 1100, modbus_unit: 2}
upstream: {modbus_tcp: {port: 5020}}
journal: {enabled: true}
"""
PROFILES = load_profiles()


def plan(old: str, new: str) -> ReloadPlan:
    a = parse_config(old, "gateway.yaml", profiles=PROFILES)
    b = parse_config(new, "gateway.yaml", profiles=PROFILES)
    return ReloadPlan.between(a, PROFILES, b, PROFILES)


M3 = "\n  - {id: m3, bus: rtu, address: 2, profile: eastron_sdm120, bacnet_instance_base: 1200}\nupstream:"


@pytest.mark.parametrize(
    ("what", "old", "new", "buses", "meters", "values", "servers", "journal"),
    [
        ("nothing", "", "", set(), set(), set(), set(), False),
        ("tenant renamed", "tenant: shop1", "tenant: shop-1", set(), {"m1"}, set(), set(), False),
        ("BACnet base moved", "base: 1000", "base: 1300", set(), {"m1"}, set(), set(), False),
        ("Modbus unit moved", "modbus_unit: 2}", "modbus_unit: 7}", set(), {"m2"}, set(), set(), False),
        (
            "meter address",
            "address: 1, profile: eastron",
            "address: 4, profile: eastron",
            {"rtu"},
            {"m1"},
            set(),
            set(),
            False,
        ),
        ("meter profile", "profile: generic", "profile: schneider_iem3000", {"tcp"}, {"m2"}, {"m2"}, set(), False),
        ("meter added to a bus", "\nupstream:", M3, {"rtu"}, {"m3"}, {"m3"}, set(), False),
        ("bus timeout", "host: 10.0.0.9}", "host: 10.0.0.9, timeout: 2}", {"tcp"}, set(), set(), set(), False),
        ("Modbus TCP port", "port: 5020", "port: 5021", set(), set(), set(), {"modbus_tcp"}, False),
        (
            "gateway name",
            "name: plan",
            "name: plan2",
            set(),
            set(),
            set(),
            {"bacnet"},
            False,
        ),
        ("time zone", "Europe/Paris", "Europe/Brussels", set(), set(), set(), set(), True),
        # the journal alarm object comes and goes with the journal: the BACnet device restarts
        ("journal off", "journal: {enabled: true}", "journal: {enabled: false}", set(), set(), set(), {"bacnet"}, True),
        (
            "journal interval",
            "journal: {enabled: true}",
            "journal: {enabled: true, interval: 60}",
            set(),
            set(),
            set(),
            set(),
            True,
        ),
    ],
)
def test_reload_replaces_only_what_changed(what, old, new, buses, meters, values, servers, journal):
    p = plan(BASE, BASE.replace(old, new, 1))
    assert (p.buses, p.meters, p.values, p.servers, p.journal) == (buses, meters, values, servers, journal), what
    if not (buses or meters or servers or journal):
        assert p.summary() == "nothing changed"
