"""The libmbus telegram corpus (tests/data/mbus-frames, BSD-3-Clause): good frames decode to libmbus's values,
error and unsupported frames are refused with a reason. Known differences are listed in docs/mbus.md."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path

import pytest

from meter_gateway.drivers.mbus import decode_telegram, map_points
from meter_gateway.mbus_frame import MbusFrameError
from meter_gateway.profiles import load_profiles

DATA = Path(__file__).resolve().parents[1] / "data" / "mbus-frames"
GOOD = sorted(p.stem for p in (DATA / "test-frames").glob("*.hex"))
ERRORS = sorted(p.stem for p in (DATA / "error-frames").glob("*.hex"))
UNSUPPORTED = sorted(p.stem for p in (DATA / "unsupported-frames").glob("*.hex"))
FUNCTION = {
    "Instantaneous value": 0,
    "Actual value": 0,
    "Maximum value": 1,
    "Minimum value": 2,
    "Value during error state": 3,
}
NOT_RECORDS = ("Manufacturer specific", "More records follow")

#: frames we refuse although libmbus decodes them, and why (also in docs/mbus.md)
REFUSED_ON_PURPOSE = {
    "manual_frame2": "CI 0x73: fixed data structure (pre-EN 13757 heat meters), not read by the gateway",
    "sen_pollusonic_2": "CI 0x73: fixed data structure",
    "frame1": "only manufacturer-specific data, no standard record to map",
}


def load(path: Path) -> bytes:
    """Hex tokens to bytes (a lone 'D' in a corrupted file is the byte 0x0D)."""
    return bytes(int(tok, 16) for tok in path.read_text().split())


def test_corpus_is_complete():
    assert len(GOOD) == 76 and len(ERRORS) == 20 and len(UNSUPPORTED) == 7
    assert (DATA / "COPYING").exists() and (DATA / "LICENSE").exists()


@pytest.mark.parametrize("name", GOOD)
def test_good_frame_matches_libmbus(name):
    raw = load(DATA / "test-frames" / f"{name}.hex")
    if name in REFUSED_ON_PURPOSE:
        with pytest.raises(MbusFrameError):
            decode_telegram(raw)
        return
    payload, records = decode_telegram(raw)
    norm = ET.parse(DATA / "test-frames" / f"{name}.norm.xml").getroot()
    expected = [d for d in norm.findall("DataRecord") if d.findtext("Function") not in NOT_RECORDS]
    assert len(records) == len(expected)
    ident = norm.findtext("SlaveInformation/Id")
    if payload.header is not None and ident:
        assert payload.header.ident.lstrip("0") == ident.lstrip("0"), (payload.header.ident, ident)
    for want, got in zip(expected, records, strict=True):
        if want.findtext("Function") is None:
            continue  # libmbus left this record empty (sen_pollutherm record 2): nothing to compare with
        fields = (
            FUNCTION[want.findtext("Function")],
            int(want.findtext("StorageNumber") or 0),
            int(want.findtext("Tariff") or 0),
            int(want.findtext("Device") or 0),
        )
        assert fields == (got.record.function, got.record.storage, got.record.tariff, got.record.subunit), want.get(
            "id"
        )
        if isinstance(got.value, Decimal):
            value = float(want.findtext("Value"))
            assert abs(value - float(got.value)) <= 1e-6 * max(1.0, abs(value)), (want.get("id"), got.value, value)


@pytest.mark.parametrize("name", ERRORS)
def test_error_frame_is_refused_with_a_reason(name):
    with pytest.raises(MbusFrameError) as err:
        decode_telegram(load(DATA / "error-frames" / f"{name}.hex"))
    assert len(str(err.value)) > 10
    xml = DATA / "error-frames" / f"{name}.xml"
    if xml.exists():
        libmbus = ET.parse(xml).getroot().findtext("SlaveInformation/Error").lower()
        first_word = libmbus.split()[0]
        assert first_word in str(err.value).lower() or "premature" in str(err.value), (libmbus, str(err.value))


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_frame_is_refused(name):
    with pytest.raises(MbusFrameError):
        decode_telegram(load(DATA / "unsupported-frames" / f"{name}.hex"))


@pytest.mark.parametrize(
    "frame,profile,expected",
    [
        ("SBC_Saia-Burgess-ALE3", "mbus_saia_burgess_ale3", {"Active_Energy_Import": 2.99, "Voltage_L1_N": 223.0}),
        (
            "electricity-meter-1",
            "mbus_saia_burgess_ale3",
            {
                "Active_Energy_Import": 17756.85,
                "Active_Power_Total": 3.2,
                "Current_L3": 6.9,
                "Voltage_L2_N": 231.0,
                "Reactive_Power_Total": -0.65,
            },
        ),
        (
            "FIN-Finder-7E.23.8.230.0020",
            "mbus_finder_7e",
            {"Active_Energy_Import": 1728.68, "Voltage_L1_N": 230.0, "Current_L1": 0.6, "Active_Power_Total": 0.09},
        ),
        ("nzr_dhz_5_63", "mbus_nzr_dhz", {"Active_Energy_Import": 1.274, "Voltage_L1_N": 237.2, "Current_L1": 0.0}),
        ("kamstrup_382_005", "mbus_generic", {"Active_Energy_Import": 0.0, "Demand_Peak_Current": 0.0}),
    ],
)
def test_profiles_map_real_telegrams(frame, profile, expected):
    _payload, records = decode_telegram(load(DATA / "test-frames" / f"{frame}.hex"))
    got = {r.point: r.value for r in map_points(load_profiles().get(profile), records)}
    for point, value in expected.items():
        assert got[point] == pytest.approx(value, abs=1e-9), point
