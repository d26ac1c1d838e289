"""Point table: quality model, staleness, energy sanity, comm failure, listeners."""

from __future__ import annotations

import pytest

from meter_gateway.core.catalogue import DEFAULT_INTERVALS, PollClass, load_catalogue
from meter_gateway.core.quality import Quality
from meter_gateway.core.table import COMM_STATUS, PointTable


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def setup():
    clock = Clock()
    table = PointTable(load_catalogue(), clock, stale_factor=3)
    table.add_meter(
        "m1", ["Active_Energy_Import", "Active_Power_Total", "Voltage_L1_N"], dict(DEFAULT_INTERVALS), max_power_kw=100
    )
    return table, clock


def test_unknown_then_good_then_stale(setup):
    table, clock = setup
    assert table.get("m1", "Active_Power_Total").quality is Quality.UNKNOWN
    assert table.get("m1", "Current_L2").quality is Quality.UNSUPPORTED
    table.update("m1", "Active_Power_Total", 5.0)
    v = table.get("m1", "Active_Power_Total")
    assert (v.value, v.quality, v.read_time) == (5.0, Quality.GOOD, clock.t)
    clock.t += 3 * DEFAULT_INTERVALS[PollClass.POWER] + 1
    v = table.get("m1", "Active_Power_Total")
    assert v.quality is Quality.STALE and v.value == 5.0 and v.read_time == clock.t - 31


def test_change_time_only_moves_on_change(setup):
    table, clock = setup
    table.update("m1", "Voltage_L1_N", 230.0)
    t0 = clock.t
    clock.t += 10
    table.update("m1", "Voltage_L1_N", 230.0)
    v = table.get("m1", "Voltage_L1_N")
    assert v.change_time == t0 and v.read_time == t0 + 10
    clock.t += 10
    table.update("m1", "Voltage_L1_N", 231.0)
    assert table.get("m1", "Voltage_L1_N").change_time == clock.t


def test_energy_backwards_is_bad_data_and_keeps_last_good(setup):
    table, clock = setup
    alarms = []
    table.add_alarm_listener(alarms.append)
    table.update("m1", "Active_Energy_Import", 1000.0)
    clock.t += 60
    v = table.update("m1", "Active_Energy_Import", 999.0)
    assert v.quality is Quality.BAD_DATA and v.value == 1000.0 and v.read_time == clock.t - 60
    assert alarms and "backwards" in alarms[0].message
    clock.t += 60
    assert table.update("m1", "Active_Energy_Import", 1001.0).quality is Quality.GOOD


def test_energy_impossible_jump_is_bad_data(setup):
    table, clock = setup
    table.update("m1", "Active_Energy_Import", 1000.0)
    clock.t += 60  # 100 kW for 60 s is 1.67 kWh at most
    assert table.update("m1", "Active_Energy_Import", 1002.0).quality is Quality.BAD_DATA
    assert table.update("m1", "Active_Energy_Import", 1001.5).quality is Quality.GOOD


def test_declared_wrap_is_not_backwards():
    clock = Clock()
    table = PointTable(load_catalogue(), clock)
    table.add_meter("m", ["Active_Energy_Import"], dict(DEFAULT_INTERVALS), max_power_kw=100, energy_wrap=100000.0)
    table.update("m", "Active_Energy_Import", 99999.5)
    clock.t += 60
    assert table.update("m", "Active_Energy_Import", 0.5).quality is Quality.GOOD


def test_comm_failure_flags_every_point_and_listeners_see_it(setup):
    table, _clock = setup
    seen = []
    table.add_listener(lambda m, p, old, new: seen.append((p, new.quality)))
    table.update("m1", "Active_Power_Total", 5.0)
    table.set_comm("m1", True)
    table.set_comm("m1", False, "no reply")
    assert table.get("m1", COMM_STATUS).value is False
    v = table.get("m1", "Active_Power_Total")
    assert v.quality is Quality.COMM_FAILURE and v.value == 5.0
    assert table.get("m1", "Current_L2").quality is Quality.UNSUPPORTED
    assert ("Active_Power_Total", Quality.COMM_FAILURE) in seen
    table.set_comm("m1", True)
    table.update("m1", "Active_Power_Total", 6.0)
    assert table.get("m1", "Active_Power_Total").quality is Quality.GOOD
    assert table.get("m1", COMM_STATUS).value is True


def test_command_points_recover_with_communication():
    """Found by the fault-injection suite: commands are never polled, so they stayed comm-failure after any loss."""
    table = PointTable(load_catalogue(), Clock(), stale_factor=3)
    table.add_meter("m1", ["Active_Power_Total", "Reset_Demand_Peak"], dict(DEFAULT_INTERVALS))
    table.update("m1", "Reset_Demand_Peak", False)
    table.set_comm("m1", True)
    table.set_comm("m1", False, "no reply")
    assert table.get("m1", "Reset_Demand_Peak").quality is Quality.COMM_FAILURE
    table.set_comm("m1", True)
    cmd = table.get("m1", "Reset_Demand_Peak")
    assert cmd.quality is Quality.GOOD and cmd.value is False
    # a read point stays comm-failure until it is actually read again
    assert table.get("m1", "Active_Power_Total").quality is not Quality.GOOD


def test_non_finite_value_refused(setup):
    table, _ = setup
    table.update("m1", "Voltage_L1_N", 230.0)
    v = table.update("m1", "Voltage_L1_N", float("nan"))
    assert v.quality is Quality.BAD_DATA and v.value == 230.0


def test_refresh_staleness_notifies(setup):
    table, clock = setup
    seen = []
    table.update("m1", "Voltage_L1_N", 230.0)
    table.add_listener(lambda m, p, old, new: seen.append((p, new.quality)))
    clock.t += 1000
    table.refresh_staleness()
    assert ("Voltage_L1_N", Quality.STALE) in seen
