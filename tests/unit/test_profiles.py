"""Every shipped profile loads and is consistent; user profiles add models with no code."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path

import pytest
import yaml

from meter_gateway.core.catalogue import PointKind, load_catalogue
from meter_gateway.profiles import ModbusProfile, ProfileError, load_profile_file, load_profiles

DATA = resources.files("meter_gateway.profiles").joinpath("data")
FILES = sorted(p.name for p in DATA.iterdir() if p.name.endswith(".yaml"))
CAT = load_catalogue()
REFERENCE_MODBUS = {
    "eastron_sdm630",
    "eastron_sdm120",
    "carlo_gavazzi_em340",
    "schneider_iem3000",
    "socomec_countis_e23",
    "generic",
}


def test_the_required_profiles_ship():
    names = {f.removesuffix(".yaml") for f in FILES}
    assert names >= REFERENCE_MODBUS


@pytest.mark.parametrize("fname", FILES)
def test_shipped_profile(fname):
    prof = load_profile_file(Path(str(DATA.joinpath(fname))))
    assert prof.name == fname.removesuffix(".yaml")
    assert prof.manufacturer and prof.model and prof.version >= 1
    if not isinstance(prof, ModbusProfile):
        return
    assert prof.points, "a profile maps at least one point"
    # every point is a catalogue point; register ranges of one table never overlap
    used: dict[tuple[int, int], str] = {}
    for name, p in prof.points.items():
        pdef = CAT.get(name)
        assert pdef.kind is not PointKind.COMMAND
        fn = prof.function_of(name)
        table = 3 if fn == 3 else fn
        for k in range(prof.count_of(name)):
            key = (table, p.address + k)
            if p.bit is None:
                assert key not in used, f"{name} overlaps {used.get(key)} at {key}"
            used[key] = name
        if p.write is not None:
            assert pdef.kind is PointKind.CONFIG
    # the reference's points for this make are all there (energies and the essential measures)
    essentials = ["Active_Energy_Import", "Active_Power_Total", "Voltage_L1_N", "Current_L1"]
    if prof.name in REFERENCE_MODBUS:
        essentials.append("Frequency")  # not every maker's public map documents a frequency register (ALE3)
    for essential in essentials:
        assert essential in prof.points, essential
    if prof.phases == 1:
        assert not [n for n in prof.points if "L2" in n or "L3" in n]
    assert prof.max_registers_per_read <= 125
    for cmd in prof.commands:
        assert CAT.get(cmd).kind is PointKind.COMMAND


def test_unconfirmed_entries_are_marked_with_a_note_or_flag():
    prof = load_profiles().get("eastron_sdm120")
    assert prof.points["Demand_Peak_Current"].unconfirmed and prof.sources_of("Demand_Peak_Current") == ["ref"]
    assert not prof.points["Active_Energy_Import"].unconfirmed


@pytest.mark.parametrize(
    ("profile", "points"),
    [
        (
            "carlo_gavazzi_em340",
            [
                "Reactive_Energy_Import",
                "Reactive_Energy_Export",
                "Voltage_L1_L2",
                "Voltage_L2_L3",
                "Voltage_L3_L1",
                "Demand_Peak_Current",
            ],
        ),
        ("schneider_iem3000", ["Voltage_L1_L2", "Voltage_L2_L3", "Voltage_L3_L1"]),
    ],
)
def test_the_nine_old_flags_are_cleared_by_a_second_source(profile, points):
    """Issue 17: EM340 reactive energies, line voltages and peak demand (0x003A), iEM3000 line voltages."""
    prof = load_profiles().get(profile)
    for name in points:
        assert not prof.points[name].unconfirmed, name
        assert len(set(prof.sources_of(name))) >= 2, name


def _write(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


MINIMAL = {
    "name": "acme_m1",
    "manufacturer": "ACME",
    "model": "M1",
    "points": {"Active_Energy_Import": {"address": 0, "type": "uint32", "scale": 0.01}},
}


def test_user_profile_directory_adds_a_model(tmp_path: Path):
    _write(tmp_path / "acme_m1.yaml", MINIMAL)
    reg = load_profiles([tmp_path])
    assert "acme_m1" in reg and "generic" in reg
    assert reg.get("acme_m1").points["Active_Energy_Import"].scale == 0.01


GOOD = """name: acme_m1
manufacturer: ACME
model: M1
points:
  Active_Energy_Import: {address: 0, type: uint32, scale: 0.01}
  Voltage_L1_N: {address: 10}
"""


@pytest.mark.parametrize(
    "old,new,message,line",
    [
        ("{address: 0, type", "{adress: 0, type", "unknown key 'adress'", 5),
        ("model: M1\n", "model: M1\ncolour: red\n", "unknown key 'colour'", 4),
        ("  Voltage_L1_N:", "  Energy_Total:", "'Energy_Total' is not a catalogue point", 6),
        ("type: uint32", "type: int24", "type", 5),
        ("manufacturer: ACME\n", "", "missing required key 'manufacturer'", 1),
        ("{address: 10}", "{address: 70000}", "must be at most 65535", 6),
        (
            "  Voltage_L1_N: {address: 10}",
            "  Voltage_L1_N: {address: 10, write: {function: 16}}",
            "only configuration points are writable",
            6,
        ),
        (
            "points:",
            "commands:\n  Reset_Energy: {function: 5, address: 1, value: 1}\npoints:",
            "not a catalogue command",
            5,
        ),
    ],
)
def test_bad_profiles_are_refused_with_file_and_line(tmp_path: Path, old, new, message, line):
    assert old in GOOD
    f = tmp_path / "acme_m1.yaml"
    f.write_text(GOOD.replace(old, new))
    with pytest.raises(ProfileError) as err:
        load_profiles([tmp_path])
    text = str(err.value)
    assert message in text, text
    assert f"{f}:{line}:" in text, text


def test_good_user_profile_text_loads(tmp_path: Path):
    (tmp_path / "acme_m1.yaml").write_text(GOOD)
    assert load_profiles([tmp_path]).get("acme_m1").points["Voltage_L1_N"].address == 10


def test_profile_name_must_match_file(tmp_path: Path):
    _write(tmp_path / "other.yaml", MINIMAL)
    with pytest.raises(ProfileError, match="must match the file name"):
        load_profiles([tmp_path])


def test_single_phase_profile_cannot_declare_l3(tmp_path: Path):
    doc = yaml.safe_load(yaml.safe_dump(MINIMAL)) | {"phases": 1}
    doc["points"]["Current_L3"] = {"address": 10}
    _write(tmp_path / "acme_m1.yaml", doc)
    with pytest.raises(ProfileError, match="single-phase"):
        load_profiles([tmp_path])


def test_not_available_pattern_must_suit_the_type(tmp_path):
    doc = copy.deepcopy(MINIMAL) | {"name": "acme_na"}
    doc["points"]["Active_Energy_Import"]["na"] = ["nan"]  # uint32 has no NaN
    with pytest.raises(ProfileError, match="nan"):
        load_profile_file(_write(tmp_path / "acme_na.yaml", doc))


def test_a_mapped_power_factor_needs_a_declared_convention(tmp_path):
    doc = copy.deepcopy(MINIMAL) | {"name": "acme_pf"}
    doc["points"]["Power_Factor_Total"] = {"address": 10, "type": "float32"}
    with pytest.raises(ProfileError, match="conventions"):
        load_profile_file(_write(tmp_path / "acme_pf.yaml", doc))
    doc["conventions"] = {"power_factor": "lead_lag"}
    assert load_profile_file(_write(tmp_path / "acme_pf.yaml", doc)).conventions.power_factor == "lead_lag"


MODBUS_FILES = [f for f in FILES if not f.startswith("mbus_")]


#: profiles that describe the gateway's own canonical maps (the point spec, EN 13757-3), not a maker's meter
SPEC_PROFILES = {"generic.yaml", "mbus_generic.yaml"}


@pytest.mark.parametrize("fname", MODBUS_FILES)
def test_every_mapped_point_names_its_sources_and_confirmed_means_two(fname):
    """Issue 17, strict: every register names the public source(s) it comes from (never an invented address); a
    register not marked `unconfirmed` is confirmed by at least two of them, and cited sources name a document
    (title + version) or a repository and path."""
    prof = load_profile_file(Path(str(DATA.joinpath(fname))))
    assert prof.sources, "a profile cites at least one source"
    for key, text in prof.sources.items():
        assert len(text) > 20, (key, "cite the document title and version, or repository and path")
    unused = set(prof.sources)
    for name, point in prof.points.items():
        cited = prof.sources_of(name)
        unused -= set(cited)
        assert cited, f"{name}: no source (an unconfirmed register still names the one source it comes from)"
        assert all(k in prof.sources for k in cited)
        if fname not in SPEC_PROFILES and not point.unconfirmed:
            assert len(set(cited)) >= 2, f"{name}: confirmed by {cited} only; mark it unconfirmed or cite a second"
    for rule in [*prof.identify, *(r for v in prof.variants for r in v.identify)]:
        assert rule.source, "identification registers are cited too"
        unused -= set(rule.source)
    assert not unused, f"sources cited by no register: {sorted(unused)}"


@pytest.mark.parametrize("fname", [f for f in FILES if f.startswith("mbus_") and f not in SPEC_PROFILES])
def test_every_mbus_rule_names_its_source(fname):
    prof = load_profile_file(Path(str(DATA.joinpath(fname))))
    for name, rule in prof.points.items():
        assert rule.source or rule.unconfirmed, f"{name}: no source and not marked unconfirmed"


@pytest.mark.parametrize("fname", MODBUS_FILES)
def test_profiles_mapping_a_power_factor_declare_their_convention(fname):
    prof = load_profile_file(Path(str(DATA.joinpath(fname))))
    if any(n.startswith("Power_Factor") for n in prof.points):
        assert prof.conventions is not None


def test_identification_registers_never_overlap_points(tmp_path):
    doc = copy.deepcopy(MINIMAL) | {"name": "acme_id"}
    doc["identify"] = [{"address": 1, "function": 3, "type": "uint16", "equals": [7]}]
    doc["points"]["Active_Energy_Import"]["function"] = 3
    with pytest.raises(ProfileError, match="overlaps"):
        load_profile_file(_write(tmp_path / "acme_id.yaml", doc))


def test_readme_meters_table_is_generated_from_the_profiles():
    from meter_gateway.profiles.table import readme_block

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert readme_block() in readme, "regenerate: python -m meter_gateway.profiles.table"
