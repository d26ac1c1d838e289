"""gateway.yaml validation: 20 different mistakes, each refused with file:line and what to change."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from meter_gateway.config import ConfigError, json_schema, load_config, parse_config

BASE = """\
gateway:
  name: test-gateway
buses:
  - id: rs485
    type: modbus_rtu
    port: /dev/ttyUSB0
    baudrate: 9600
    parity: N
    timeout: 0.5
  - id: mbus
    type: mbus
    port: /dev/ttyUSB1
meters:
  - id: m1
    bus: rs485
    address: 1
    profile: eastron_sdm630
    mid: true
    bacnet_instance_base: 1000
    modbus_unit: 1
    poll_intervals:
      power: 10
  - id: m2
    bus: rs485
    address: 2
    profile: generic
    bacnet_instance_base: 1100
    modbus_unit: 2
upstream:
  prometheus:
    port: 9105
writes:
  enabled: false
  allow_modbus:
    - 10.0.0.0/24
"""

# (name, old text, new text, expected line, expected words in the message)
MISTAKES = [
    ("yaml syntax", "    baudrate: 9600\n", "    baudrate: [9600\n", 8, "YAML syntax error"),
    ("unknown top-level key", "writes:\n", "write:\n", 32, "unknown key 'write'"),
    ("typo in a meter key", "    profile: generic\n", "    profil: generic\n", 26, "unknown key 'profil'"),
    ("missing required key", "    bus: rs485\n    address: 2\n", "    address: 2\n", 23, "missing required key 'bus'"),
    ("wrong type", "    baudrate: 9600\n", "    baudrate: fast\n", 7, "baudrate"),
    ("duplicate meter id", "  - id: m2\n", "  - id: m1\n", 23, "meter id 'm1' is already used"),
    (
        "duplicate address on a bus",
        "    address: 2\n",
        "    address: 1\n",
        25,
        "address 1 on bus 'rs485' is already used",
    ),
    ("duplicate modbus unit", "    modbus_unit: 2\n", "    modbus_unit: 1\n", 28, "modbus_unit 1 is already used"),
    (
        "overlapping instance ranges",
        "    bacnet_instance_base: 1100\n",
        "    bacnet_instance_base: 1050\n",
        27,
        "overlap meter 'm1'",
    ),
    (
        "unknown bus",
        "    bus: rs485\n    address: 2\n",
        "    bus: rs486\n    address: 2\n",
        24,
        "bus 'rs486' is not defined",
    ),
    ("unknown profile", "    profile: generic\n", "    profile: genric\n", 26, "unknown profile 'genric'"),
    (
        "profile protocol mismatch",
        "    bus: rs485\n    address: 2\n",
        "    bus: mbus\n    address: 2\n",
        26,
        "is for modbus meters but bus 'mbus' is mbus",
    ),
    ("modbus address out of range", "    address: 2\n", "    address: 248\n", 25, "must be 1-247"),
    (
        "bad M-Bus secondary id",
        "    bus: rs485\n    address: 2\n    profile: generic\n",
        "    bus: mbus\n    address: '1234567'\n    profile: generic\n",
        25,
        "secondary address must be 8 digits",
    ),
    ("bad parity", "    parity: N\n", "    parity: X\n", 8, "parity"),
    ("negative timeout", "    timeout: 0.5\n", "    timeout: -1\n", 9, "timeout"),
    ("bad poll class", "      power: 10\n", "      powr: 10\n", 22, "'powr' is not a poll class"),
    ("bad allowlist network", "    - 10.0.0.0/24\n", "    - 10.0.0.300/24\n", 35, "is not an IP address or network"),
    ("duplicate YAML key", "    mid: true\n", "    mid: true\n    mid: false\n", 19, "duplicate key 'mid'"),
    ("serial bus without port", "    port: /dev/ttyUSB0\n", "", 4, "needs `port: /dev/ttyUSB0`"),
    ("port out of range", "    port: 9105\n", "    port: 99999\n", 31, "port"),
    ("interval out of range", "      power: 10\n", "      power: 0.01\n", 22, "between 0.5 and 86400"),
]


def test_base_config_is_valid():
    cfg = parse_config(BASE, "gateway.yaml")
    assert [m.id for m in cfg.meters] == ["m1", "m2"] and cfg.meter("m1").interval("power") == 10


def test_there_are_at_least_twenty_mistakes():
    assert len({m[0] for m in MISTAKES}) >= 20


@pytest.mark.parametrize("name,old,new,line,words", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistake_is_refused_with_file_line_and_fix(name, old, new, line, words):
    assert old in BASE, name
    with pytest.raises(ConfigError) as err:
        parse_config(BASE.replace(old, new, 1), "site/gateway.yaml")
    text = str(err.value)
    assert words in text, text
    assert f"site/gateway.yaml:{line}:" in text, text


def test_check_command_exits_2_with_the_message_and_no_traceback(tmp_path: Path):
    bad = tmp_path / "gateway.yaml"
    bad.write_text(BASE.replace("    profile: generic\n", "    profile: genric\n"))
    res = subprocess.run(
        [sys.executable, "-m", "meter_gateway.cli", "check", "-c", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2
    assert f"{bad}:26: unknown profile 'genric'" in res.stderr and "Traceback" not in res.stderr
    good = tmp_path / "good.yaml"
    good.write_text(BASE)
    res = subprocess.run(
        [sys.executable, "-m", "meter_gateway.cli", "check", "-c", str(good)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and "OK" in res.stdout and "2 meters" in res.stdout


def test_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_json_schema_is_up_to_date():
    shipped = json.loads(resources.files("meter_gateway").joinpath("data/gateway.schema.json").read_text())
    assert shipped == json.loads(json.dumps(json_schema()))


def test_shipped_demo_config_is_valid_and_matches_schema():
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "gateway.yaml")
    assert cfg.meters and all(b.simulated for b in cfg.buses)
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed: schema check skipped")
    import yaml

    jsonschema.validate(yaml.safe_load((root / "gateway.yaml").read_text()), json_schema())
