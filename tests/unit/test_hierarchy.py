"""Meter hierarchy keys (parent, site, building, floor, zone, tenant): parents exist, no cycles, file:line errors."""

from __future__ import annotations

import pytest

from meter_gateway.config import ConfigError, parse_config

BASE = """\
buses:
  - id: rs485
    type: modbus_rtu
    port: /dev/ttyUSB0
meters:
  - id: main
    bus: rs485
    address: 1
    profile: generic
    site: Site 1
    building: B1
    bacnet_instance_base: 1000
  - id: sub1
    bus: rs485
    address: 2
    profile: generic
    parent: main
    floor: Level 1
    zone: Offices
    tenant: Tenant 1
    bacnet_instance_base: 1100
  - id: sub2
    bus: rs485
    address: 3
    profile: generic
    parent: sub1
    bacnet_instance_base: 1200
"""


def test_hierarchy_is_accepted():
    cfg = parse_config(BASE, "gateway.yaml")
    assert [m.parent for m in cfg.meters] == ["", "main", "sub1"]
    assert cfg.meter("sub1").zone == "Offices" and cfg.meter("main").building == "B1"


@pytest.mark.parametrize(
    "old,new,line,words",
    [
        (
            "    parent: main\n",
            "    parent: mian\n",
            17,
            "parent 'mian' is not a meter id; defined meters: main, sub1, sub2",
        ),
        ("    parent: main\n", "    parent: sub1\n", 17, "cannot be its own parent"),
        ("    site: Site 1\n", "    parent: sub2\n", 10, "cycle: main -> sub2 -> sub1 -> main"),
        ("    parent: sub1\n", "    parent: sub2\n", 26, "cannot be its own parent"),
    ],
    ids=["unknown parent", "own parent", "cycle of three", "self via second meter"],
)
def test_bad_hierarchy_is_refused_with_file_line(old, new, line, words):
    with pytest.raises(ConfigError) as err:
        parse_config(BASE.replace(old, new, 1), "site/gateway.yaml")
    text = str(err.value)
    assert words in text and f"site/gateway.yaml:{line}:" in text, text
    assert text.count("cycle") <= 1, text  # a cycle is reported once, not once per meter in it


def test_two_meter_cycle_names_both():
    text = BASE.replace("    site: Site 1\n", "    parent: sub1\n", 1)
    with pytest.raises(ConfigError, match=r"gateway.yaml:10: meter parents form a cycle: main -> sub1 -> main"):
        parse_config(text, "gateway.yaml")
