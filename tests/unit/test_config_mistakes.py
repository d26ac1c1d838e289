"""`check` catches what `run` would hit: a table of mistakes, each refused with the file, the line and the fix.

Every case edits one valid configuration (BASE) and expects a ConfigError that names `site/gateway.yaml:LINE:` and
holds the given words. LINE is where the edit landed (the line of `at`, default the first edited line), so the table
states where the user made the mistake, not what the code happens to print. Checks that need this machine (writable
state files, local bind addresses) run with preflight, as `check`, `run` and a reload do.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meter_gateway.config import ConfigError, load_config, parse_config
from meter_gateway.profiles import load_profiles

BASE = """\
gateway:
  name: site-a
  timezone: Europe/Paris
  stale_factor: 3
buses:
  - id: rs485
    type: modbus_rtu
    port: /dev/ttyUSB0
    baudrate: 9600
    parity: N
    timeout: 0.5
  - id: mbus
    type: mbus
    port: /dev/ttyAMA0
  - id: tcp
    type: modbus_tcp
    host: 192.168.1.50
    port: 502
meters:
  - id: m1
    name: Shop 1
    tenant: shop1
    bus: rs485
    address: 1
    profile: eastron_sdm630
    mid: true
    bacnet_instance_base: 1000
    modbus_unit: 1
    poll_intervals:
      power: 10
  - id: m2
    tenant: shop2
    bus: mbus
    address: "12345678"
    profile: mbus_generic
    bacnet_instance_base: 1100
    modbus_unit: 2
  - id: m3
    bus: tcp
    address: 3
    profile: generic
    bacnet_instance_base: 1200
upstream:
  bacnet:
    bind: 0.0.0.0
    port: 47808
    device_instance: 599
  modbus_tcp:
    bind: 127.0.0.1
    port: 5020
    write_timeout: 3
  prometheus:
    bind: 127.0.0.1
    port: 9105
writes:
  enabled: false
  allow_modbus:
    - 10.0.0.0/24
journal:
  enabled: true
  path: journal.sqlite
  interval: 900
  tariffs:
    off_peak: ["22:00-06:00"]
  alerts:
    - meter: m1
      kwh: 50
    - tenant: shop2
      period: month
      kwh: 900
"""

# (name, old text, new text, words expected in the message, `at`: the text whose line is expected)
MISTAKES: list[tuple[str, str, str, str, str | None]] = [
    # YAML itself
    ("yaml: unclosed bracket", "    baudrate: 9600\n", "    baudrate: [9600\n", "YAML syntax error", "    parity"),
    ("yaml: tab indentation", "    parity: N\n", "\tparity: N\n", "YAML syntax error", None),
    ("yaml: duplicate key", "    mid: true\n", "    mid: true\n    mid: false\n", "duplicate key 'mid'", "mid: false"),
    ("unknown top-level key", "writes:\n", "write:\n", "unknown key 'write'", None),
    ("unknown upstream key", "  prometheus:\n", "  promethus:\n", "unknown key 'promethus'", None),
    ("typo in a meter key", "    profile: generic\n", "    profil: generic\n", "unknown key 'profil'", None),
    # gateway section
    ("empty gateway name", "  name: site-a\n", '  name: ""\n', "name", None),
    (
        "unknown time zone",
        "  timezone: Europe/Paris\n",
        "  timezone: Europe/Pariss\n",
        "did you mean Europe/Paris",
        None,
    ),
    ("time zone not IANA", "  timezone: Europe/Paris\n", "  timezone: Paris\n", "unknown time zone 'Paris'", None),
    ("stale factor too small", "  stale_factor: 3\n", "  stale_factor: 1\n", "stale_factor", None),
    ("bad log level", "  stale_factor: 3\n", "  stale_factor: 3\n  log_level: verbose\n", "log_level", "log_level"),
    # buses
    ("bus without type", "    type: modbus_tcp\n", "", "missing `type:`; a bus is `type: modbus_rtu`", "  - id: tcp"),
    ("unknown bus type", "    type: modbus_tcp\n", "    type: modbustcp\n", "unknown type 'modbustcp'", None),
    ("baudrate not a number", "    baudrate: 9600\n", "    baudrate: fast\n", "baudrate", None),
    ("baudrate too low", "    baudrate: 9600\n", "    baudrate: 100\n", "baudrate", None),
    ("bad parity", "    parity: N\n", "    parity: X\n", "parity", None),
    ("bad stop bits", "    parity: N\n", "    parity: N\n    stopbits: 3\n", "stopbits", "stopbits"),
    ("bad byte size", "    parity: N\n", "    parity: N\n    bytesize: 9\n", "bytesize", "bytesize"),
    ("negative timeout", "    timeout: 0.5\n", "    timeout: -1\n", "timeout", None),
    ("too many retries", "    timeout: 0.5\n", "    timeout: 0.5\n    retries: 9\n", "retries", "retries"),
    ("fail_after zero", "    timeout: 0.5\n", "    timeout: 0.5\n    fail_after: 0\n", "fail_after", "fail_after"),
    ("backoff too short", "    timeout: 0.5\n", "    timeout: 0.5\n    backoff_max: 0.1\n", "backoff_max", "backoff"),
    ("bus id with a space", "  - id: tcp\n", "  - id: t c p\n", "may only hold letters, digits", None),
    ("duplicate bus id", "  - id: tcp\n", "  - id: mbus\n", "bus id 'mbus' is already used", None),
    ("serial bus without port", "    port: /dev/ttyUSB0\n", "", "needs `port: /dev/ttyUSB0`", "  - id: rs485"),
    (
        "two buses on one serial port",
        "    port: /dev/ttyAMA0\n",
        "    port: /dev/ttyUSB0\n",
        "uses serial port /dev/ttyUSB0 like bus 'rs485'",
        None,
    ),
    (
        "host with a port",
        "    host: 192.168.1.50\n",
        "    host: 127.0.0.1:502\n",
        "write `host: 127.0.0.1` and `port: 502`",
        None,
    ),
    ("host with a scheme", "    host: 192.168.1.50\n", "    host: tcp://192.168.1.50\n", "holds a scheme", None),
    ("host empty", "    host: 192.168.1.50\n", '    host: ""\n', "host is empty", None),
    ("tcp bus port 0 without simulation", "    port: 502\n", "    port: 0\n", "port 0 is only allowed", None),
    ("tcp bus port out of range", "    port: 502\n", "    port: 70000\n", "port", None),
    # meters
    ("duplicate meter id", "  - id: m2\n", "  - id: m1\n", "meter id 'm1' is already used", None),
    ("meter id with a slash", "  - id: m3\n", "  - id: m/3\n", "may only hold letters, digits", None),
    ("meter without bus", "    bus: tcp\n", "", "missing required key 'bus'", "  - id: m3"),
    ("meter on an unknown bus", "    bus: rs485\n", "    bus: rs486\n", "bus 'rs486' is not defined", None),
    ("unknown profile", "    profile: generic\n", "    profile: genric\n", "unknown profile 'genric'", None),
    (
        "M-Bus profile on a Modbus bus",
        "    profile: eastron_sdm630\n",
        "    profile: mbus_generic\n",
        "is for mbus meters but bus 'rs485' is modbus_rtu",
        None,
    ),
    ("Modbus address 0", "    address: 3\n", "    address: 0\n", "must be 1-247", None),
    ("Modbus address 248", "    address: 3\n", "    address: 248\n", "must be 1-247", None),
    ("Modbus address as a word", "    address: 3\n", "    address: three\n", "must be a number 1-247", None),
    (
        "two meters at one address",
        "    bus: tcp\n    address: 3\n",
        "    bus: rs485\n    address: 1\n",
        "address 1 on bus 'rs485' is already used",
        "address: 1",
    ),
    ("M-Bus primary address 251", '    address: "12345678"\n', "    address: 251\n", "must be 0-250", None),
    (
        "M-Bus secondary id unquoted",
        '    address: "12345678"\n',
        "    address: 12345678\n",
        'in quotes, exactly as on the meter, e.g. address: "12345678"',
        None,
    ),
    ("M-Bus secondary id 7 digits", '    address: "12345678"\n', '    address: "1234567"\n', "must be 8 digits", None),
    ("M-Bus secondary id letters", '    address: "12345678"\n', '    address: "1234567A"\n', "must be 8 digits", None),
    ("duplicate modbus_unit", "    modbus_unit: 2\n", "    modbus_unit: 1\n", "modbus_unit 1 is already used", None),
    ("modbus_unit 0", "    modbus_unit: 2\n", "    modbus_unit: 0\n", "modbus_unit", None),
    ("modbus_unit 300", "    modbus_unit: 2\n", "    modbus_unit: 300\n", "modbus_unit", None),
    (
        "overlapping instances",
        "    bacnet_instance_base: 1100\n",
        "    bacnet_instance_base: 1050\n",
        "overlap meter 'm1'",
        None,
    ),
    (
        "instances over the device",
        "    device_instance: 599\n",
        "    device_instance: 1005\n",
        "contains the device instance 1005",
        "    bacnet_instance_base: 1000",
    ),
    (
        "instances over the journal alarm",
        "    device_instance: 599\n",
        "    device_instance: 599\n    gateway_alarm_instance: 1110\n",
        "contains the journal alarm's instance 1110",
        "    bacnet_instance_base: 1100",
    ),
    (
        "no instance base with BACnet on",
        "    bacnet_instance_base: 1200\n",
        "",
        "needs `bacnet_instance_base:` (BACnet is enabled)",
        "  - id: m3",
    ),
    (
        "negative instance base",
        "    bacnet_instance_base: 1200\n",
        "    bacnet_instance_base: -5\n",
        "bacnet_instance_base",
        None,
    ),
    ("unknown poll class", "      power: 10\n", "      powr: 10\n", "'powr' is not a poll class", None),
    ("poll interval too short", "      power: 10\n", "      power: 0.01\n", "between 0.5 and 86400", None),
    ("poll interval a word", "      power: 10\n", "      power: fast\n", "between 0.5 and 86400", None),
    ("mid not a boolean", "    mid: true\n", "    mid: maybe\n", "mid", None),
    (
        "max power zero",
        "    profile: generic\n",
        "    profile: generic\n    max_power_kw: 0\n",
        "max_power_kw",
        "max_power",
    ),
    # upstream
    ("BACnet bind not an address", "    bind: 0.0.0.0\n", "    bind: 0.0.0.300\n", "is not an IPv4 address", None),
    ("BACnet bind IPv6", "    bind: 0.0.0.0\n", "    bind: '::'\n", "BACnet/IP needs an IPv4 address", None),
    ("Modbus bind with a port", "    bind: 127.0.0.1\n", "    bind: 127.0.0.1:5020\n", "holds a port", None),
    (
        "Prometheus bind a host name",
        "    bind: 127.0.0.1\n    port: 9105\n",
        "    bind: localhost\n    port: 9105\n",
        "use 127.0.0.1",
        None,
    ),
    (
        "bind not on this machine",
        "    bind: 127.0.0.1\n",
        "    bind: 192.0.2.10\n",
        "is not an address of this machine",
        None,
    ),
    ("two upstreams on one port", "    port: 9105\n", "    port: 5020\n", "both use TCP port 5020", None),
    (
        "foreign BBMD without port",
        "    device_instance: 599\n",
        "    device_instance: 599\n    foreign_bbmd: 10.0.0.1\n",
        "needs a port: write 10.0.0.1:47808",
        "foreign_bbmd",
    ),
    (
        "foreign BBMD bad port",
        "    device_instance: 599\n",
        "    device_instance: 599\n    foreign_bbmd: 10.0.0.1:99999\n",
        "the port must be a number 1-65535",
        "foreign_bbmd",
    ),
    (
        "device instance too big",
        "    device_instance: 599\n",
        "    device_instance: 4194303\n",
        "device_instance",
        None,
    ),
    ("BACnet port out of range", "    port: 47808\n", "    port: 70000\n", "port", None),
    ("bad energy object", "    port: 47808\n", "    port: 47808\n    energy_object: accu\n", "energy_object", "energy"),
    ("Modbus write timeout 0", "    write_timeout: 3\n", "    write_timeout: 0\n", "write_timeout", None),
    (
        "bad word order",
        "    write_timeout: 3\n",
        "    write_timeout: 3\n    word_order: middle\n",
        "word_order",
        "word_order",
    ),
    # writes
    (
        "allowlist not a network",
        "    - 10.0.0.0/24\n",
        "    - 10.0.0.300/24\n",
        "is not an IP address or network",
        None,
    ),
    ("writes.enabled not a boolean", "  enabled: false\n", "  enabled: yes please\n", "enabled", None),
    # journal
    ("journal interval 0", "  interval: 900\n", "  interval: 0\n", "interval", None),
    (
        "journal in a missing folder",
        "  path: journal.sqlite\n",
        "  path: /dev/null/journal.sqlite\n",
        "is not a folder",
        None,
    ),
    ("journal path is a folder", "  path: journal.sqlite\n", "  path: /\n", "is a folder, not a file", None),
    (
        "bad off-peak range",
        '    off_peak: ["22:00-06:00"]\n',
        '    off_peak: ["22h-6h"]\n',
        "is not a time range",
        None,
    ),
    (
        "alert for an unknown meter",
        "    - meter: m1\n",
        "    - meter: m9\n",
        "alert for meter 'm9', which is not defined",
        None,
    ),
    ("alert for an unknown tenant", "    - tenant: shop2\n", "    - tenant: shop3\n", "tenants: shop1, shop2", None),
    ("alert threshold 0", "      kwh: 50\n", "      kwh: 0\n", "kwh", None),
    ("alert for meter and tenant", "    - meter: m1\n", "    - meter: m1\n      tenant: shop1\n", "names either", None),
    ("alert period a week", "      period: month\n", "      period: week\n", "period", None),
    (
        "state directory not creatable",
        "  stale_factor: 3\n",
        "  stale_factor: 3\n  state_dir: /dev/null/state\n",
        "state directory: /dev/null/state cannot be created: /dev/null is not a folder",
        "state_dir",
    ),
]


def _expected_line(text: str, pos: int, new: str, at: str | None) -> int:
    """The line of `at` inside the edit (or, when the edit removed it, its first occurrence in the whole file)."""
    if at is None:
        return text[:pos].count("\n") + 1 + (len(new) - len(new.lstrip("\n")))
    if at in new:
        return text[: pos + new.index(at)].count("\n") + 1
    return text[: text.index(at)].count("\n") + 1


@pytest.fixture(scope="module")
def profiles():
    return load_profiles()


def test_base_is_valid(tmp_path: Path, profiles):
    cfg = parse_config(BASE, str(tmp_path / "gateway.yaml"), profiles=profiles, preflight=True)
    assert [m.id for m in cfg.meters] == ["m1", "m2", "m3"]


def test_at_least_sixty_different_mistakes():
    assert len({m[0] for m in MISTAKES}) == len(MISTAKES) >= 60


@pytest.mark.parametrize(("name", "old", "new", "words", "at"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistake_names_file_line_and_fix(tmp_path: Path, profiles, name, old, new, words, at):
    assert BASE.count(old) >= 1, name
    pos = BASE.index(old)
    text = BASE[:pos] + new + BASE[pos + len(old) :]
    source = tmp_path / "site" / "gateway.yaml"
    source.parent.mkdir()
    with pytest.raises(ConfigError) as err:
        parse_config(text, str(source), profiles=profiles, preflight=True)
    msg = str(err.value)
    line = _expected_line(text, pos, new, at)
    hits = [m for m in msg.splitlines() if words in m]
    assert hits, msg
    assert any(h.startswith(f"{source}:{line}: ") for h in hits), f"expected line {line}:\n{msg}"
    for leak in ("Unable to extract tag", "discriminator", "Traceback", "pydantic"):
        assert leak not in msg, msg


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("Latin-1", BASE.replace("Shop 1", "Boulangerie Café").encode("latin-1"), ":21: byte 0xe9 is not UTF-8"),
        ("UTF-16", BASE.encode("utf-16"), ":1: the file is UTF-16"),
        ("binary garbage", bytes(range(256)) * 4, ":1: the file is UTF-16 (or binary)"),
        ("UTF-8 with BOM is fine", b"\xef\xbb\xbf" + BASE.encode(), None),
    ],
)
def test_file_encodings(tmp_path: Path, profiles, name, data, words):
    path = tmp_path / "gateway.yaml"
    path.write_bytes(data)
    if words is None:
        assert load_config(path, profiles=profiles).gateway.name == "site-a"
        return
    with pytest.raises(ConfigError) as err:
        load_config(path, profiles=profiles)
    assert f"{path}{words}" in str(err.value) and "save" in str(err.value)


def test_check_reports_encoding_and_run_time_mistakes_without_traceback(tmp_path: Path):
    """`check` on a Latin-1 file with an unknown time zone: exit 2, file and line, no traceback."""
    bad = tmp_path / "gateway.yaml"
    bad.write_bytes(BASE.replace("Europe/Paris", "Europe/Pariss").encode("utf-8"))
    res = subprocess.run(
        [sys.executable, "-m", "meter_gateway.cli", "check", "-c", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2 and f"{bad}:3: " in res.stderr and "Traceback" not in res.stderr, res.stderr
    bad.write_bytes(BASE.encode("latin-1").replace(b"Shop 1", b"Caf\xe9"))
    res = subprocess.run(
        [sys.executable, "-m", "meter_gateway.cli", "check", "-c", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2 and f"{bad}:21: byte 0xe9" in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_profile_file_in_latin1_is_a_clear_error(tmp_path: Path):
    d = tmp_path / "profiles"
    d.mkdir()
    (d / "mine.yaml").write_bytes("name: mine\nmanufacturer: Soci\xe9t\xe9\n".encode("latin-1"))
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(BASE.replace("  stale_factor: 3\n", "  stale_factor: 3\n  profile_dirs: [profiles]\n"))
    res = subprocess.run(
        [sys.executable, "-m", "meter_gateway.cli", "check", "-c", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2 and "mine.yaml:2: byte 0xe9 is not UTF-8" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
