"""Real electricity-meter telegrams from three independent public sources, read through the profiles: every canonical
point equals the value the source publishes, every unmapped record is listed with its reason, and heat, water and
gas telegrams are refused (wrong device) so they produce no electrical point.

Sources (tests/data/mbus-electricity/README.md): libmbus test frames with libmbus's decoded XML (BSD-3-Clause),
wmbusmeters driver tests with the JSON wmbusmeters publishes (GPL-3.0), jMBus test messages (MPL-2.0) decoded by
libmbus. The expectations name where each value is published, never the value itself.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from meter_gateway.drivers.base import WrongDevice
from meter_gateway.drivers.mbus import check_medium
from meter_gateway.drivers.mbus_records import decode_telegram, map_records
from meter_gateway.mbus_frame import MbusFrameError
from meter_gateway.profiles import load_profiles

DATA = Path(__file__).resolve().parents[1] / "data"
SETS = DATA / "mbus-electricity"
LIBMBUS = DATA / "mbus-frames" / "test-frames"
EXPECT = yaml.safe_load((SETS / "expectations.yaml").read_text())
PROFILES = load_profiles()
#: libmbus normalised units to the catalogue's
UNIT = {"Wh": Decimal("0.001"), "W": Decimal("0.001"), "V": Decimal(1), "A": Decimal(1), "Hz": Decimal(1), "": 1}


def _telegrams(source: str) -> dict[str, dict]:
    return {t["name"]: t for t in yaml.safe_load((SETS / source / "telegrams.yaml").read_text())}


TELEGRAMS = {"wmbusmeters": _telegrams("wmbusmeters"), "jmbus": _telegrams("jmbus")}


def frame_bytes(frame: str) -> bytes:
    """The raw telegram of `set/name`."""
    source, name = frame.split("/", 1)
    if source == "libmbus":
        return bytes(int(tok, 16) for tok in (LIBMBUS / f"{name}.hex").read_text().split())
    return bytes.fromhex(TELEGRAMS[source][name]["telegram"])


def published(frame: str, where: str) -> tuple[Decimal, bool]:
    """The value the source publishes for `where`, and whether it is exact (not a float32 printed by the source)."""
    source, name = frame.split("/", 1)
    if source == "wmbusmeters":
        doc = json.loads(TELEGRAMS[source][name]["json"])
        return Decimal(str(doc[where])), False
    xml = LIBMBUS / f"{name}.norm.xml" if source == "libmbus" else SETS / source / "libmbus" / f"{name}.norm.xml"
    records = ET.parse(xml).getroot().findall("DataRecord")
    total = Decimal(0)
    for part in where.split("+"):
        rec = records[int(part.split()[-1])]
        value, unit = Decimal(rec.findtext("Value")), rec.findtext("Unit") or ""
        if unit not in UNIT and value == 0:
            continue  # libmbus does not know this unit (e.g. FB 02, kvarh): a zero is zero in any unit
        total += value * UNIT[unit]
    return total, True


def agrees(got: Decimal, want: Decimal, exact: bool, coded_real: bool) -> bool:
    """Integer and BCD records agree exactly; float32 records within float32 precision and the source's rounding."""
    if exact and not coded_real:
        return abs(got - want) <= Decimal("1e-9") * max(Decimal(1), abs(want))
    return abs(got - want) <= Decimal("1e-6") + Decimal("1.2e-7") * abs(want)


def _ids(e):
    return e["frame"]


REAL = [e for e in EXPECT if "not_real" not in e]


def test_the_corpus_is_what_the_issue_asks():
    sources = {e["frame"].split("/")[0] for e in REAL}
    assert len(REAL) >= 40 and sources == {"libmbus", "wmbusmeters", "jmbus"}
    for source in ("wmbusmeters", "jmbus"):
        assert (SETS / source / "LICENSE").exists()
    assert (DATA / "mbus-frames" / "LICENSE").exists()
    assert (SETS / "README.md").exists()


@pytest.mark.parametrize("e", EXPECT, ids=_ids)
def test_every_point_is_the_published_value(e):
    payload, records = decode_telegram(frame_bytes(e["frame"]))
    assert payload.header is not None and payload.header.medium == 0x02
    for profile_name, key in ((e["profile"], "points"), ("mbus_generic", "generic_points")):
        if key not in e:
            continue
        profile = PROFILES.get(profile_name)
        check_medium(profile, [payload])  # an electricity meter is accepted
        m = map_records(profile, records)
        assert set(m.values) == set(e[key]), (profile_name, sorted(m.values))
        withheld_key = "withheld" if key == "points" else "generic_withheld"
        assert m.withheld == e.get(withheld_key, {}), profile_name
        for point, where in e[key].items():
            want, exact = published(e["frame"], where)
            coded_real = any(records[i].record.data_field == 0x5 for i, p in m.used.items() if p == point)
            assert agrees(m.values[point], want, exact, coded_real), (profile_name, point, m.values[point], want)
        if key == "points":
            assert m.unmapped == {int(i): r for i, r in e["unmapped"].items()}


#: multi-telegram reads as the driver sees them (records of every telegram of one read): the profile's points are
#: the union of the telegrams', with the same values; nothing becomes ambiguous
READS = [
    ["wmbusmeters/iem3000-2", "wmbusmeters/iem3000-3", "wmbusmeters/iem3000-4"],
    ["wmbusmeters/iem3000-5", "wmbusmeters/iem3000-6", "wmbusmeters/iem3000-7"],
    ["wmbusmeters/iem3000-8", "wmbusmeters/iem3000-9", "wmbusmeters/iem3000-10"],
    ["wmbusmeters/iem3000-11", "wmbusmeters/iem3000-12", "wmbusmeters/iem3000-13"],
    ["wmbusmeters/nemo-1", "wmbusmeters/nemo-2", "wmbusmeters/nemo-3"],
    ["jmbus/schneider_iem3x_msg1", "jmbus/schneider_iem3x_msg2", "jmbus/schneider_iem3x_msg3"],
    [f"jmbus/abb_a41_msg{i}" for i in range(1, 6)],
]


@pytest.mark.parametrize("frames", READS, ids=lambda f: f[0])
def test_a_whole_multi_telegram_read(frames):
    by_frame = {e["frame"]: e for e in EXPECT}
    records = []
    for f in frames:
        records += decode_telegram(frame_bytes(f))[1]
    profile = PROFILES.get(by_frame[frames[0]]["profile"])
    m = map_records(profile, records)
    expected = {}
    for f in frames:
        for point, where in by_frame[f]["points"].items():
            expected[point] = published(f, where)[0]
    assert set(m.values) == set(expected) and not m.withheld
    for point, want in expected.items():
        assert agrees(m.values[point], want, False, True), (point, m.values[point], want)


def test_schneider_energy_is_never_the_reactive_or_the_float_copy():
    """Issue 13 item 1: sub-unit 1 is reactive energy on iEM3000; the last telegram's float energy is 1000x low."""
    records = []
    for f in ("wmbusmeters/iem3000-2", "wmbusmeters/iem3000-3", "wmbusmeters/iem3000-4"):
        records += decode_telegram(frame_bytes(f))[1]
    iem = map_records(PROFILES.get("mbus_schneider_iem3000"), records)
    assert iem.values["Active_Energy_Import"] == Decimal("33385.482")
    assert iem.values["Active_Energy_Export"] == Decimal("0.017")
    generic = map_records(PROFILES.get("mbus_generic"), records)
    assert "Active_Energy_Export" not in generic.values
    assert generic.values["Active_Energy_Import"] == Decimal("33385.482")  # the float copy is not a register


def test_abb_vife_00_habit_gives_energy_and_power():
    """Issue 13 item 2: 0E 84 00 = 39130 Wh, 04 A9 00 = 18.68 W on an ABB A41."""
    _p, r1 = decode_telegram(frame_bytes("jmbus/abb_a41_msg1"))
    _p, r2 = decode_telegram(frame_bytes("jmbus/abb_a41_msg2"))
    m = map_records(PROFILES.get("mbus_abb_ab"), r1 + r2)
    assert m.values["Active_Energy_Import"] == Decimal("39.130")
    assert m.values["Active_Power_Total"] == Decimal("0.01868")


def test_every_frame_of_the_sets_that_is_not_a_meter_reading_is_refused():
    for name in ("schneider_iem3275_testmsg10", "schneider_testmsg12", "itron_cyble_testmsg11"):
        with pytest.raises(MbusFrameError):
            decode_telegram(frame_bytes(f"jmbus/{name}"))


def _other_media():
    out = [f"libmbus/{p.stem}" for p in sorted(LIBMBUS.glob("*.hex"))]
    out += [f"jmbus/{n}" for n in TELEGRAMS["jmbus"]]
    keep = []
    for f in out:
        try:
            payload, _r = decode_telegram(frame_bytes(f))
        except MbusFrameError:
            continue
        if payload.header is not None and payload.header.medium != 0x02:
            keep.append(f)
    return keep


OTHER_MEDIA = _other_media()


def test_there_are_heat_water_and_gas_telegrams():
    media = {decode_telegram(frame_bytes(f))[0].header.medium for f in OTHER_MEDIA}
    assert len(OTHER_MEDIA) >= 40 and {0x03, 0x04, 0x07} <= media


@pytest.mark.parametrize("frame", OTHER_MEDIA)
def test_heat_water_and_gas_give_no_electrical_point(frame):
    payload, _records = decode_telegram(frame_bytes(frame))
    for name in PROFILES.names():
        profile = PROFILES.get(name)
        if getattr(profile, "protocol", "") != "mbus":
            continue
        with pytest.raises(WrongDevice, match="wrong device"):
            check_medium(profile, [payload])
