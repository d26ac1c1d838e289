"""The BACnet model's pure parts: UTC offset, multi-state validity, the services bitstring, DateTime objects."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from meter_gateway.bacnet_model import DATETIME_POINTS, object_specs, state_valid
from meter_gateway.servers.bacnet import SERVICES_SUPPORTED, services_supported, utc_offset_minutes


@pytest.mark.parametrize(
    ("zone", "when", "minutes"),
    [
        ("Europe/Paris", datetime(2026, 1, 15, 12), -60),
        ("Europe/Paris", datetime(2026, 7, 15, 12), -60),  # standard time, not summer time
        ("America/New_York", datetime(2026, 7, 15, 12), 300),
        ("Pacific/Kiritimati", datetime(2026, 7, 15, 12), -840),
        ("UTC", datetime(2026, 7, 15, 12), 0),
        ("Asia/Kolkata", datetime(2026, 7, 15, 12), -330),
    ],
)
def test_utc_offset_is_the_standard_offset_positive_west(zone, when, minutes):
    z = ZoneInfo(zone)
    assert utc_offset_minutes(z, when.replace(tzinfo=z)) == minutes


def test_services_bitstring_has_exactly_the_served_bits():
    bits = list(services_supported())
    assert {i for i, b in enumerate(bits) if b} == {1, 5, 12, 14, 15, 26, 27, 28, 33, 34}
    assert SERVICES_SUPPORTED["whoIs"] == 34 and SERVICES_SUPPORTED["iAm"] == 26
    assert SERVICES_SUPPORTED["whoHas"] == 33 and SERVICES_SUPPORTED["iHave"] == 27


def _specs(config_text: str, profiles):
    from meter_gateway.app import Gateway
    from meter_gateway.config import parse_config

    cfg = parse_config(config_text, profiles=profiles)
    gw = Gateway(cfg, profiles)
    return object_specs(cfg, gw.catalogue, {m: gw.meter_points(m) for m in gw.table.meter_ids})


CONFIG = """
buses: [{id: rtu, type: modbus_rtu, simulated: true}]
meters: [{id: m, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000}]
"""


def test_multi_state_validity_and_the_datetime_object(profiles):
    specs = {(s.point.name, s.object_type): s for s in _specs(CONFIG, profiles)}
    baud = specs[("Modbus_Baudrate", "multi-state-value")]
    assert state_valid(baud, 19200) and not state_valid(baud, 4800) and not state_valid(baud, 9600.5)
    direction = specs[("Energy_Direction", "multi-state-value")]
    assert state_valid(direction, 1) and not state_valid(direction, 2) and not state_valid(direction, -1)
    ai = specs[("Demand_Peak_Timestamp", "analog-input")]
    dtv = specs[("Demand_Peak_Timestamp", "datetime-value")]
    assert dtv.instance == ai.instance and dtv.name == f"m.{DATETIME_POINTS['Demand_Peak_Timestamp']}"
    assert not dtv.writable and len({s.name for s in specs.values()}) == len(specs)


def test_journal_alarm_object_exists_with_the_journal_and_is_in_the_ede(profiles):
    from meter_gateway.bacnet_model import JOURNAL_ALARM_NAME, gateway_objects, journal_alarm
    from meter_gateway.commands.ede import ede_rows
    from meter_gateway.config import parse_config

    assert gateway_objects(parse_config(CONFIG, profiles=profiles)) == []
    cfg = parse_config(CONFIG + "journal: {enabled: true}\n", profiles=profiles)
    (alarm,) = gateway_objects(cfg)
    assert (alarm.object_type, alarm.instance, alarm.name) == ("binary-input", 4194000, JOURNAL_ALARM_NAME)
    assert alarm.instance not in {s.instance for s in _specs(CONFIG, profiles)}
    rows, states = ede_rows(cfg, profiles)
    row = next(r for r in rows if r[2] == JOURNAL_ALARM_NAME)
    assert row[3:5] == ["3", "4194000"] and row[9] == "N" and row[15] == "gateway/journal_alarm"
    assert [row[13], "normal", "alarm"] in states
    text = CONFIG + "journal: {enabled: true}\nupstream: {bacnet: {gateway_alarm_instance: 4100000}}\n"
    moved = parse_config(text, profiles=profiles)
    assert gateway_objects(moved)[0].instance == 4100000
    assert not journal_alarm(None, False) and not journal_alarm("ok", False)
    assert journal_alarm("ok", True) and journal_alarm("degraded", False) and journal_alarm("unavailable", False)
