"""Haystack export of the demo configuration, parsed back with an independent library (phable): JSON and Zinc."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from meter_gateway.bacnet_model import object_specs
from meter_gateway.config import load_config
from meter_gateway.models.common import gateway_meter_points
from meter_gateway.models.haystack import TAG_NAME, entities, to_json, to_zinc

phable = pytest.importorskip("phable", reason="phable is not installed (pip install -e '.[dev]'): Haystack skipped")
from phable.io.ph_json import ph_from_json  # noqa: E402
from phable.io.ph_zinc import ph_from_zinc  # noqa: E402
from phable.kinds import Marker, Number, Ref  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(profiles):
    cfg = load_config(ROOT / "gateway.yaml", profiles)
    catalogue, points = gateway_meter_points(cfg, profiles)
    return cfg, catalogue, points, entities(cfg, catalogue, points)


def _parse(fmt: str, recs):
    return ph_from_json(json.loads(to_json(recs))) if fmt == "json" else ph_from_zinc(to_zinc(recs))


@pytest.mark.parametrize("fmt", ["json", "zinc"])
def test_round_trip_has_every_served_point_with_its_tags(demo, fmt):
    cfg, catalogue, points, recs = demo
    grid = _parse(fmt, recs)
    rows = {r["id"].val: r for r in grid.rows}
    # one Haystack point per served point: the DateTime Value beside Demand_Peak_Timestamp's AI is the same point
    specs = [s for s in object_specs(cfg, catalogue, points) if s.object_type != "datetime-value"]
    assert len(specs) > 100
    for s in specs:
        row = rows[s.name]  # every served point is present
        assert isinstance(row["point"], Marker) and row["equipRef"].val == f"meter.{s.meter_id}"
        assert row["bacnetCur"].endswith(str(s.instance)) and row["navName"] == s.point.name
        for tag in s.point.haystack:
            if TAG_NAME.match(tag) and tag != "phase":
                assert isinstance(row[tag], Marker), (s.name, tag)
    assert sum(1 for r in grid.rows if "point" in r) == len(specs)
    for r in grid.rows:  # Haystack tag names only
        assert all(TAG_NAME.match(k) for k in r), r


@pytest.mark.parametrize("fmt", ["json", "zinc"])
def test_equips_sites_units_and_addresses(demo, fmt):
    cfg, _catalogue, _points, recs = demo
    rows = {r["id"].val: r for r in _parse(fmt, recs).rows}
    equips = [r for r in rows.values() if "equip" in r]
    assert {r["id"].val for r in equips} == {f"meter.{m.id}" for m in cfg.meters if m.enabled}
    assert all(isinstance(r["elecMeter"], Marker) and isinstance(r["meter"], Marker) for r in equips)
    c = rows["meter.tenant-c"]
    assert c["submeterOf"].val == "meter.tenant-a" and c["tenant"] == "Tenant C"
    assert isinstance(rows[c["siteRef"].val]["site"], Marker) and rows[c["siteRef"].val]["dis"] == "Demo site"
    zone = rows[c["spaceRef"].val]
    assert zone["dis"] == "Tenant C offices" and isinstance(rows[zone["spaceRef"].val]["floor"], Marker)
    e = rows["tenant-a.Active_Energy_Import"]
    assert (e["unit"], e["kind"], e["bacnetCur"], e["modbusCur"]) == ("kWh", "Number", "ACC1001", "30001")
    assert isinstance(e["modbusAddr"], Number) and e["modbusAddr"].val == 0
    conn = rows[e["modbusConnRef"].val]
    assert conn["modbusSlave"].val == 1 and conn["uri"] == "modbus-tcp://127.0.0.1:5020/"
    assert rows["tenant-a.Reactive_Energy_Import"]["unit"] == "kVARh"
    v = rows["tenant-a.Voltage_L1_L2"]
    assert v["phase"] == "AB" and v["unit"] == "V" and "L1" not in v
    assert isinstance(rows[e["bacnetConnRef"].val]["bacnetConn"], Marker)
    assert isinstance(e["siteRef"], Ref) and e["tz"] == "Paris"


def test_haystack_command_zinc_parses(tmp_path):
    out = tmp_path / "site.zinc"
    cmd = [sys.executable, "-m", "meter_gateway.cli", "haystack", "-c", str(ROOT / "gateway.yaml")]
    r = subprocess.run(
        [*cmd, "--format", "zinc", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    grid = ph_from_zinc(out.read_text())
    assert sum(1 for r in grid.rows if "elecMeter" in r) == 5
