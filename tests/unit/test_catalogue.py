"""The point catalogue: 53 points, fixed indexes, valid BACnet types and units, consistent upstream map."""

from __future__ import annotations

import copy
from importlib import resources

import pytest
import yaml

from meter_gateway.core.catalogue import CatalogueError, PointKind, load_catalogue, parse_catalogue

RAW = yaml.safe_load(resources.files("meter_gateway").joinpath("data/catalogue.yaml").read_text())


def test_53_points_by_kind():
    cat = load_catalogue()
    assert len(cat) == 53
    assert [len(cat.of_kind(k)) for k in PointKind] == [29, 2, 13, 9]


def test_indexes_are_fixed_forever():
    cat = load_catalogue()
    # these numbers are a contract: BACnet instances and documentation derive from them
    assert cat.get("Active_Energy_Import").index == 1
    assert cat.get("THD_Current_L1").index == 29
    assert cat.get("Reset_Demand_Peak").index == 30
    assert cat.get("Communication_Status").index == 32
    assert cat.get("Voltage_Unbalance_Threshold").index == 53
    assert [p.index for p in cat] == list(range(1, 54))


def test_upstream_map_follows_the_spec_references():
    cat = load_catalogue()
    e = cat.get("Active_Energy_Import")
    assert (e.modbus.table, e.modbus.address, e.modbus.type, e.resolution) == ("input", 0, "uint32", 0.01)
    p = cat.get("Active_Power_Total")
    assert (p.modbus.table, p.modbus.address, p.modbus.type) == ("holding", 0, "float32")
    assert cat.get("Reset_Demand_Peak").modbus.address == 0 and cat.get("Sync_Clock").modbus.address == 2
    assert cat.get("Communication_Status").modbus.table == "discrete_input"
    assert cat.get("CT_Primary_Rating").modbus.address == 1000
    assert cat.get("Demand_Peak_Timestamp").modbus.type == "uint32"


def test_types_units_states():
    cat = load_catalogue()
    assert {p.bacnet_type for p in cat} == {
        "accumulator",
        "analog-input",
        "binary-input",
        "multi-state-value",
        "binary-output",
        "analog-value",
    }
    assert cat.get("Energy_Direction").states == ("import", "export")
    assert cat.get("Modbus_Baudrate").allowed_values == (9600, 19200, 38400)
    assert cat.get("Modbus_Address").config_class == "comm"
    assert cat.get("CT_Primary_Rating").config_class == "metrology"
    assert cat.get("Demand_Interval").config_class == "other"
    assert cat.get("Demand_Interval").in_range(15) and not cat.get("Demand_Interval").in_range(61)


@pytest.mark.parametrize(
    "corrupt,message",
    [
        (lambda d: d["points"][1].update(name="Active_Energy_Import"), "duplicate point name"),
        (lambda d: d["points"][1].update(index=1), "index 1 duplicated"),
        (lambda d: d["points"][0].update(bacnet_type="analog-output"), "unknown BACnet object type"),
        (lambda d: d["points"][0].update(bacnet_unit="furlongs"), "unknown BACnet unit"),
        (lambda d: d["points"][1]["modbus"].update(address=1), "already used by Active_Energy_Import"),
        (lambda d: d["points"][31].update(states=["ok"]), "exactly two state texts"),
        (lambda d: d["points"][44].pop("config_class"), "config_class"),
    ],
)
def test_corrupted_catalogue_is_refused(corrupt, message):
    doc = copy.deepcopy(RAW)
    corrupt(doc)
    with pytest.raises(CatalogueError, match=message):
        parse_catalogue(doc)


def test_pulse_constant_is_a_range_not_two_allowed_values():
    # regression: the spec's "1-10000 Wh/imp" was once read as the two values {1, 10000}
    p = load_catalogue().get("Pulse_Constant")
    assert p.allowed_values is None and p.in_range(500) and not p.in_range(0) and not p.in_range(10001)


def test_every_analog_point_declares_plausible_limits_that_contain_the_spec_range():
    for p in load_catalogue():
        if p.bacnet_type in ("accumulator", "analog-input", "analog-value"):
            assert p.plausible is not None, p.name
            if p.range is not None:
                assert p.plausible[0] <= p.range[0] and p.range[1] <= p.plausible[1], p.name


@pytest.mark.parametrize(
    ("point", "value", "bad"),
    [
        ("Active_Energy_Import", -9223372036854776.0, True),  # int64 NA read as Wh x 0.001
        ("Active_Energy_Import", 123456.78, False),
        ("Active_Energy_Import", 2.0e10, True),
        ("Voltage_L1_N", 253.0, False),  # outside the spec's typical 200..250 but real: published
        ("Voltage_L1_N", 3000.0, True),
        ("Frequency", 0.0, True),
        ("Power_Factor_Total", -1.2, True),
        ("Active_Power_Total", -12.5, False),  # export
        ("Energy_Direction", 1, False),
        ("Energy_Direction", 7, True),
        ("Modbus_Baudrate", 4800, True),
        ("Phase_Loss_L1", True, False),
    ],
)
def test_implausible_values(point, value, bad):
    assert bool(load_catalogue().get(point).implausible(value)) is bad


def test_table_refuses_implausible_values_and_keeps_the_last_good_one():
    from meter_gateway.core.quality import Quality
    from meter_gateway.core.table import PointTable

    t = PointTable(load_catalogue(), clock=lambda: 1000.0)
    t.add_meter("m", ["Voltage_L1_N", "Active_Energy_Import"], {})
    assert t.update("m", "Active_Energy_Import", -9.2e15).value is None
    assert t.get("m", "Active_Energy_Import").quality is Quality.BAD_DATA
    t.update("m", "Voltage_L1_N", 231.0)
    v = t.update("m", "Voltage_L1_N", 5000.0)
    assert v.quality is Quality.BAD_DATA and v.value == 231.0 and "plausible" in v.reason
