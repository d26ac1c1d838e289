"""The pure parts of BACnet intrinsic reporting: which objects report what, the Notification Class objects built
from the configuration, the EDE limits."""

from __future__ import annotations

import pytest

from meter_gateway.config import parse_config
from meter_gateway.servers.bacnet_events import (
    ALARM_VALUES,
    event_properties,
    notification_class_objects,
    transition_index,
)

CONFIG = """
gateway: {{name: t}}
buses: [{{id: rtu, type: modbus_rtu, simulated: true}}]
meters:
  - {{id: gen, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000,
     bacnet_limits: {{Voltage_L1_N: {{low: 207, deadband: 2, time_delay: 10}}}}}}
upstream:
  bacnet:
    events: {events}
"""
EVENTS = (
    "{enabled: true, alarm_class: 2, time_delay: 4, limits: {Voltage_L1_N: {high: 253}, Current_L1: {high: 80}},"
    " notification_classes: [{number: 1}, {number: 2, name: Alarms, priority: {offnormal: 10, fault: 5, normal: 200},"
    " ack_required: [offnormal], recipients: [{address: '127.0.0.1:47809', process_id: 4, confirmed: true,"
    " transitions: [offnormal, normal], days: [mon, sun], from: '07:30', to: '18:00'}, {device: 77}]}]}"
)


@pytest.fixture(scope="module")
def cfg(profiles):
    return parse_config(CONFIG.format(events=EVENTS), profiles=profiles)


def test_alarm_points_report_change_of_state_with_the_spec_alarm_values(cfg):
    meter = cfg.meters[0]
    ev = cfg.upstream.bacnet.events
    phase = event_properties(ev, meter, "Phase_Loss_L1", "binary-input")
    assert phase is not None
    assert (phase["alarmValue"], phase["notificationClass"], phase["timeDelay"]) == (1, 2, 4)  # active
    assert event_properties(ev, meter, "MID_Certification_Valid", "binary-input")["alarmValue"] == 0  # inactive
    assert event_properties(ev, meter, "Communication_Status", "binary-input")["alarmValue"] == 0
    assert event_properties(ev, meter, "Pulse_Output_Active", "binary-input") is None  # a status, not an alarm
    assert event_properties(ev, meter, "Energy_Direction", "multi-state-value") is None
    assert len(ALARM_VALUES) == 11
    off = parse_config(CONFIG.format(events="{enabled: false}"), profiles=None)
    assert event_properties(off.upstream.bacnet.events, off.meters[0], "Phase_Loss_L1", "binary-input") is None


def test_limits_come_from_the_meter_before_the_defaults(cfg):
    meter = cfg.meters[0]
    ev = cfg.upstream.bacnet.events
    volt = event_properties(ev, meter, "Voltage_L1_N", "analog-input")  # the meter's own: low only
    assert list(volt["limitEnable"]) == [1, 0]  # low-limit-enable, high-limit-enable
    assert (volt["lowLimit"], volt["deadband"], volt["timeDelay"], volt["timeDelayNormal"]) == (207, 2, 10, 10)
    assert volt["notificationClass"] == 1  # limit_class
    cur = event_properties(ev, meter, "Current_L1", "analog-input")  # the defaults
    assert list(cur["limitEnable"]) == [0, 1] and cur["highLimit"] == 80
    assert event_properties(ev, meter, "Frequency", "analog-input") is None  # no limit: no reporting


async def test_notification_classes_carry_priorities_ack_and_recipients(cfg):
    one, two = notification_class_objects(cfg.upstream.bacnet.events)
    assert one.objectIdentifier[1] == 1 and list(one.priority) == [100, 100, 200] and list(one.ackRequired) == [1, 1, 0]
    assert two.objectName == "Alarms" and list(two.priority) == [10, 5, 200] and list(two.ackRequired) == [1, 0, 0]
    addr, dev = two.recipientList
    assert bytes(addr.recipient.address.macAddress) == bytes([127, 0, 0, 1, 0xBA, 0xC1])
    assert addr.recipient.address.networkNumber == 0
    assert (addr.processIdentifier, bool(addr.issueConfirmedNotifications)) == (4, True)
    assert list(addr.transitions) == [1, 0, 1] and list(addr.validDays) == [1, 0, 0, 0, 0, 0, 1]
    assert tuple(addr.fromTime)[:2] == (7, 30) and tuple(addr.toTime)[:2] == (18, 0)
    assert dev.recipient.device[1] == 77 and list(dev.transitions) == [1, 1, 1]


def test_transition_index_groups_the_event_states():
    assert [transition_index(s) for s in ("offnormal", "high-limit", "low-limit", "fault", "normal")] == [0, 0, 0, 1, 2]


def test_ede_has_the_configured_limits(cfg, profiles):
    from meter_gateway.commands.ede import ede_rows

    rows, _ = ede_rows(cfg, profiles)
    by_name = {r[2]: r for r in rows}
    assert by_name["gen.Voltage_L1_N"][11:13] == ["", "207"]  # hi-limit, low-limit
    assert by_name["gen.Current_L1"][11:13] == ["80", ""]
    assert by_name["gen.Frequency"][11:13] == ["", ""]
