"""XML billing export: every export validated against the shipped XSD (xmlschema); resets and missing boundaries
are flagged, never hidden; CLI and HTTP give the same document."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from meter_gateway.config import parse_config
from meter_gateway.journal.store import JournalStore, Reading, load_or_create_key, side_paths
from meter_gateway.journal.xml import NS, to_xml, xsd_text

xmlschema = pytest.importorskip("xmlschema", reason="xmlschema is not installed (pip install -e '.[dev]')")

TZ = "Europe/Paris"
YAML = f"""
gateway: {{name: x, timezone: {TZ}, state_dir: .}}
buses: [{{id: b, type: modbus_rtu, simulated: true}}]
meters:
  - {{id: a, name: Shop A, tenant: T1, serial_number: S-1, bus: b, address: 1, profile: generic, mid: true,
     bacnet_instance_base: 1000}}
  - {{id: c, tenant: T2, bus: b, address: 2, profile: generic, bacnet_instance_base: 1100}}
journal:
  enabled: true
  path: journal.sqlite
  interval: 900
  tariffs: {{off_peak: ["22:00-06:00"]}}
"""
START = int(datetime(2026, 11, 2, 0, 0, tzinfo=ZoneInfo(TZ)).timestamp())
END = START + 86400


def _reading(meter: str, boundary: int, value: Decimal | None) -> Reading:
    ok = value is not None
    return Reading(
        meter=meter,
        tenant={"a": "T1", "c": "T2"}[meter],
        serial={"a": "S-1", "c": ""}[meter],
        model="generic",
        mid=meter == "a",
        point="Active_Energy_Import",
        kind="interval",
        boundary=boundary,
        status="ok" if ok else "missing",
        raw="[0, 0]" if ok else "",
        value=str(value) if ok else "",
        unit="kWh",
        profile="generic",
        profile_version=1,
        read_time=boundary - 7.5 if ok else None,
        clock_sync="synchronized",
        quality="good" if ok else "missing",
    )


@pytest.fixture
def journal(tmp_path):
    """Meter a: 1.00 kWh per quarter hour, a missing boundary at 10:00 and a reset to 0 at 15:00; meter c: 0.25."""
    path = tmp_path / "journal.sqlite"
    store = JournalStore(path, load_or_create_key(side_paths(path)[0])[0])
    a, c = Decimal("1000.00"), Decimal("500.00")
    rows = []
    for b in range(START, END + 1, 900):
        hour = (b - START) // 3600
        a = a + 1 if b > START else a
        if b == START + 15 * 3600:
            a = Decimal("0.50")  # the meter was reset (or replaced) between 14:45 and 15:00
        c = c + Decimal("0.25") if b > START else c
        rows.append(_reading("a", b, None if b == START + 10 * 3600 else a))
        rows.append(_reading("c", b, c))
        assert hour <= 24
    store.append(rows)
    yield store, tmp_path
    store.close()


def _validated(doc: bytes):
    schema = xmlschema.XMLSchema(xsd_text())
    schema.validate(doc)  # raises with the reason when the document does not conform
    from xml.etree import ElementTree as ET

    return ET.fromstring(doc)


def test_export_with_reset_and_missing_boundary_validates_and_carries_the_flags(journal):
    store, _ = journal
    cfg = parse_config(YAML, "gateway.yaml")
    root = _validated(to_xml(store, cfg, START, END, now=START))
    n = {"b": NS}
    a = root.find("b:meter[@id='a']", n)
    assert (a.get("mid"), a.get("serialNumber"), a.get("tenant"), a.get("name")) == ("true", "S-1", "T1", "Shop A")
    op, cl = a.find("b:opening", n), a.find("b:closing", n)
    assert (op.get("status"), op.get("index"), cl.get("status"), cl.get("index")) == ("ok", "1000.00", "ok", "36.50")
    seq = {r["boundary"]: r["seq"] for r in store.rows(meter="a")}
    assert int(op.get("sequence")) == seq[START] and int(cl.get("sequence")) == seq[END]
    assert op.get("readTime") == datetime.fromtimestamp(START - 7.5, ZoneInfo(TZ)).isoformat()
    flags = a.find("b:flags", n).attrib
    assert flags == {
        "missingBoundaries": "1",
        "openingMissing": "false",
        "closingMissing": "false",
        "indexReset": "true",
        "clockStep": "false",
        "complete": "false",
    }
    # the index went backwards: no consumption, split or peak demand is made up
    assert a.find("b:consumption", n) is None and a.find("b:tariffSplit", n) is None
    (reset,) = a.findall("b:reset", n)
    assert (reset.get("beforeIndex"), reset.get("afterIndex")) == (
        "1059.00",
        "0.50",
    )  # 14:45 is 59 quarter hours after 00:00
    assert int(reset.get("afterSequence")) == seq[START + 15 * 3600]
    c = root.find("b:meter[@id='c']", n)
    assert c.find("b:flags", n).get("complete") == "true" and c.get("mid") == "false"
    assert Decimal(c.find("b:consumption", n).text) == Decimal("24.00")  # 96 quarter hours x 0.25
    split = c.find("b:tariffSplit", n).attrib
    assert Decimal(split["offPeak"]) == Decimal("8.00") and Decimal(split["peak"]) == Decimal("16.00")
    assert c.find("b:peakDemand", n).get("kw") == "1.000"


def test_missing_opening_boundary_is_flagged(journal):
    store, _ = journal
    cfg = parse_config(YAML, "gateway.yaml")
    start = START + 10 * 3600  # meter a has no reading there
    root = _validated(to_xml(store, cfg, start, start + 3 * 3600, tenant="T1", now=START))
    (a,) = root.findall(f"{{{NS}}}meter")
    assert a.find(f"{{{NS}}}opening").attrib == {
        "boundary": datetime.fromtimestamp(start, ZoneInfo(TZ)).isoformat(),
        "status": "missing",
    }
    assert a.find(f"{{{NS}}}flags").get("openingMissing") == "true" and a.find(f"{{{NS}}}consumption") is None
    assert root.get("tenant") == "T1"


def test_schema_rejects_a_document_without_the_mid_flag(journal):
    store, _ = journal
    cfg = parse_config(YAML, "gateway.yaml")
    doc = to_xml(store, cfg, START, END, now=START).replace(b' mid="true"', b"")
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        xmlschema.XMLSchema(xsd_text()).validate(doc)


def test_cli_export_xml(journal):
    _store, tmp = journal
    (tmp / "gateway.yaml").write_text(YAML)
    cmd = [sys.executable, "-m", "meter_gateway.cli", "export", "-c", str(tmp / "gateway.yaml")]
    r = subprocess.run(
        [*cmd, "--from", "2026-11-02", "--to", "2026-11-03", "--format", "xml"],
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    root = _validated(r.stdout)
    assert [m.get("id") for m in root.findall(f"{{{NS}}}meter")] == ["a", "c"]
