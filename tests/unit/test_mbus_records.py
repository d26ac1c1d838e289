"""EN 13757-3 record naming, value exactness, profile matching on named fields, and the profile a scan proposes."""

from __future__ import annotations

import struct
from decimal import Decimal

import pytest

from meter_gateway.drivers.mbus import map_points
from meter_gateway.drivers.mbus_records import decode_records, decode_vib, map_records
from meter_gateway.mbus_frame import build_rsp_ud, split_records
from meter_gateway.profiles import load_profiles
from meter_gateway.profiles.mbus import propose_profile
from meter_gateway.sim.mbus import HABITS, SimMbusMeter
from meter_gateway.sim.physics import LoadModel

PROFILES = load_profiles()
MBUS = [n for n in PROFILES.names() if getattr(PROFILES.get(n), "protocol", "") == "mbus"]


@pytest.mark.parametrize(
    "vib,fields",
    [
        ("04", ("energy", "Wh", 1, "", "", "")),
        ("84 00", ("energy", "Wh", 1, "", "", "")),  # ABB habit: VIFE 0x00 changes nothing
        ("83 3B", ("energy", "Wh", 0, "import", "", "")),
        ("83 3C", ("energy", "Wh", 0, "export", "", "")),
        ("FB 82 3C", ("reactive_energy", "varh", 3, "export", "", "")),
        ("FB 82 F5 3C", ("reactive_energy", "varh", 2, "export", "", "")),  # x 10^(5-6)
        ("FD D9 FC 02", ("current", "A", -3, "", "L2", "")),
        ("FD C8 FC 05", ("voltage", "V", -1, "", "L1-L2", "")),
        ("FD DB FF 01", ("current", "A", -1, "", "", "FF01")),  # vendor phase tag kept raw
        ("A9 FF 81 00", ("power", "W", -2, "", "", "FF8100")),
        ("FB 14", ("reactive_power", "var", 0, "", "", "")),
        ("FB 34", ("apparent_power", "VA", 0, "", "", "")),
        ("FB 2D", ("frequency", "Hz", -2, "", "", "")),
        ("FF 0B", ("manufacturer", "", 0, "", "", "FF0B")),
        ("86 FC 0C", ("energy", "Wh", 3, "net", "", "")),
    ],
)
def test_vib_named_fields(vib, fields):
    v = decode_vib(bytes.fromhex(vib))
    assert (v.quantity, v.unit, v.exponent, v.direction, v.phase, v.tag.hex().upper()) == fields


def _records(body: str):
    return decode_records(split_records(bytes.fromhex(body))[0])


def test_float_values_keep_their_float32_precision_only():
    """No 18.096107482910156 kW: a float32 record is the shortest decimal that reads back as the same float32."""
    raw = struct.pack("<f", 18096.107482910156)
    (rec,) = _records("05 2B" + raw.hex())
    assert rec.value == Decimal("18096.107")
    (reading,) = map_points(PROFILES.get("mbus_generic"), [rec], ["Active_Power_Total"])
    assert reading.value == 18.096107


def test_integer_and_bcd_values_are_exact_to_the_vif_step():
    recs = _records("04 04 39 30 00 00" + "0C 05 63 73 00 00" + "0A FD 48 35 02")
    assert [r.value for r in recs] == [Decimal("123450"), Decimal("736300"), Decimal("23.5")]


def test_generic_maps_only_the_unambiguous():
    body = (
        "04 03 10 27 00 00"  # energy 10000 Wh: import register
        "84 40 03 05 00 00 00"  # sub-unit 1: vendor-dependent (reactive on iEM3000), not mapped
        "84 10 03 07 00 00 00"  # tariff 1: not the total
        "44 03 09 00 00 00"  # storage 1: historic
        "04 83 3C 11 00 00 00"  # export (VIFE 0x3C)
        "04 FD D9 FC 01 E8 03 00 00"  # current L1 (0xFC 0x01)
        "04 FD 59 E8 03 00 00"  # current, no phase: which one?
    )
    m = map_records(PROFILES.get("mbus_generic"), _records(body))
    assert m.values == {
        "Active_Energy_Import": Decimal("10.000"),
        "Active_Energy_Export": Decimal("0.017"),
        "Current_L1": Decimal("1.000"),
    }
    assert m.unmapped == {
        1: "sub-unit 1",
        2: "tariff 1",
        3: "storage 1 (historic value)",
        6: "current with no phase stated",
    }


def test_two_records_for_one_point_publish_nothing():
    m = map_records(PROFILES.get("mbus_generic"), _records("04 03 10 27 00 00 04 03 11 27 00 00"))
    assert m.values == {} and "ambiguous" in m.withheld["Active_Energy_Import"]
    (reading,) = map_points(PROFILES.get("mbus_generic"), _records("04 03 10 27 00 00 04 03 11 27 00 00"))
    assert reading.value is None and "ambiguous" in reading.error


def test_a_tariff_total_needs_every_tariff():
    ale3 = PROFILES.get("mbus_saia_burgess_ale3")
    m = map_records(ale3, _records("8C 10 04 00 01 00 00"))  # tariff 2 missing: a partial sum would be too low
    assert "Active_Energy_Import" not in m.values and "incomplete" in m.withheld["Active_Energy_Import"]
    m = map_records(ale3, _records("8C 10 04 00 01 00 00 8C 20 04 50 00 00 00"))
    assert m.values["Active_Energy_Import"] == Decimal("1.500")


@pytest.mark.parametrize("habits", [(), HABITS])
@pytest.mark.parametrize("name", MBUS)
def test_simulated_meter_round_trip(name, habits):
    """Every profile's records, encoded by the simulator (with vendor habits), decode back to every point."""
    profile = PROFILES.get(name)
    meter = SimMbusMeter(1, "12345678", profile, LoadModel(seed=3, base_kw=4, phases=profile.phases), habits=habits)
    meter.telegrams = 1
    values = meter.model.advance()
    meter.model.frozen = True
    got = {r.point: r for r in map_points(profile, decode_records(split_records(b"".join(meter.records()))[0]))}
    assert set(got) == set(profile.points) and all(r.error is None for r in got.values())
    for point, r in got.items():
        assert r.value == pytest.approx(values.get(point, 0.0), rel=0.02, abs=0.02), point


@pytest.mark.parametrize(
    "header,expected",
    [
        (("SEC", 0x02, 21), "mbus_schneider_iem3000"),
        (("ABB", 0x02, 32), "mbus_abb_ab"),
        (("ELT", 0x02, 1), "mbus_eltako"),
        (("NZR", 0x02, 0), "mbus_nzr"),
        (("NZR", 0x02, 1), "mbus_nzr_dhz"),
        (("SBC", 0x02, 22), "mbus_saia_burgess_ale3"),
        (("FIN", 0x02, 35), "mbus_finder_7e"),
        (("IME", 0x02, 29), "mbus_ime_nemo"),
        (("IME", 0x02, 102), "mbus_generic"),  # IME Conto: its own scaling system, no profile
        (("XYZ", 0x02, 3), "mbus_generic"),
        (("KAM", 0x04, 1), None),
        (("ELS", 0x03, 1), None),
    ],
)
def test_scan_proposes_the_matching_profile_or_none(header, expected):
    name, why = propose_profile(PROFILES, *header)
    assert name == expected, why
    if expected is None:
        assert why.startswith("none matches") and "not electricity" in why
    elif expected == "mbus_generic":
        assert "no per-make profile" in why or why.startswith("none matches")


def test_build_and_decode_a_whole_telegram():
    rec = bytes.fromhex("0E 84 00 13 39 00 00 00 00")  # ABB: energy 3913 x 10 Wh, BCD12, VIFE 0x00
    frame = build_rsp_ud(1, "00217819", "ABB", 32, 0x02, 1, rec)
    from meter_gateway.drivers.mbus_records import decode_telegram

    payload, records = decode_telegram(frame)
    assert payload.header.manufacturer == "ABB" and records[0].value == Decimal("39130")


@pytest.mark.parametrize("name", [n for n in MBUS if PROFILES.get(n).manufacturer_id])
def test_every_per_make_rule_cites_its_public_source(name):
    profile = PROFILES.get(name)
    assert all(rule.source for rule in profile.points.values()), name
    for rule in profile.points.values():
        if rule.sum:
            assert "total" in rule.note, f"{name}: a tariff total must say how it is formed"
