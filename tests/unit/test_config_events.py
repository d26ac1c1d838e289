"""`check` on the BACnet events configuration: each mistake named with its file and line."""

from __future__ import annotations

import pytest

from meter_gateway.config import ConfigError, parse_config

TEXT = """
gateway: {{name: t}}
buses: [{{id: rtu, type: modbus_rtu, simulated: true}}]
meters:
  - {{id: gen, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000{meter}}}
upstream:
  bacnet:
    events: {events}
"""


@pytest.mark.parametrize(
    ("events", "meter", "line", "message"),
    [
        ("{enabled: true, alarm_class: 5}", "", 8, "alarm_class 5 is not one of the notification_classes (1)"),
        (
            "{enabled: true, limits: {Active_Energy_Import: {high: 5}}}",
            "",
            8,
            "'Active_Energy_Import' is not an analog",
        ),
        ("{enabled: true}", ", bacnet_limits: {Voltage_L1_N: {high: 200, low: 210}}", 5, "must be above low"),
        ("{enabled: true}", ", bacnet_limits: {Voltage_L1_N: {high: 250, notification_class: 3}}", 5, "class 3 is not"),
        ("{enabled: true}", ", bacnet_limits: {Voltage_L1_N: {deadband: 1}}", 5, "needs `high:` or `low:`"),
        (
            "{notification_classes: [{number: 1, recipients: [{device: 5, address: 10.0.0.1}]}]}",
            "",
            8,
            "exactly one of `device: <instance>` or `address: <host:port>`",
        ),
        ("{notification_classes: [{number: 1, recipients: [{address: 10.0.0.1, from: '25:00'}]}]}", "", 8, "'25:00'"),
        ("{notification_classes: [{number: 1, recipients: [{address: 'bms:47808'}]}]}", "", 8, "IPv4 address"),
        ("{notification_classes: [{number: 1}, {number: 1}]}", "", 8, "notification class 1 is defined twice"),
    ],
)
def test_check_names_the_line_of_a_bad_events_configuration(events, meter, line, message):
    with pytest.raises(ConfigError) as err:
        parse_config(TEXT.format(events=events, meter=meter), "gw.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith(f"gw.yaml:{line}:"), str(err.value)


def test_a_full_events_configuration_is_accepted():
    events = (
        "{enabled: true, time_delay: 5, notify_type: event, alarm_class: 2, limit_class: 1, notification_classes: ["
        "{number: 1}, {number: 2, name: Alarms, priority: {offnormal: 10, fault: 5, normal: 200}, ack_required: "
        "[offnormal], recipients: [{device: 100, confirmed: true, days: [mon, fri], from: '07:00', to: '19:00'}, "
        "{address: '10.0.0.9:47809', process_id: 3, transitions: [offnormal]}]}], "
        "limits: {Active_Power_Total: {high: 40, low: 0, deadband: 1, time_delay: 10}}}"
    )
    cfg = parse_config(TEXT.format(events=events, meter=", bacnet_limits: {Voltage_L1_N: {low: 207}}"), "gw.yaml")
    ev = cfg.upstream.bacnet.events
    assert ev.notification_classes[1].recipients[0].from_time == "07:00"
    assert ev.limits["Active_Power_Total"].time_delay == 10
    assert cfg.meters[0].bacnet_limits["Voltage_L1_N"].high is None
