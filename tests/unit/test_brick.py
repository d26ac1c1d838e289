"""Brick model of the demo configuration: built with rdflib, checked against the Brick ontology's SHACL shapes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

rdflib = pytest.importorskip("rdflib", reason="rdflib is not installed (pip install -e '.[models]'): Brick skipped")
pytest.importorskip("brickschema", reason="brickschema is not installed (pip install -e '.[models]'): Brick skipped")

from rdflib import Literal, Namespace  # noqa: E402
from rdflib.namespace import RDF  # noqa: E402

from meter_gateway.config import load_config, parse_config  # noqa: E402
from meter_gateway.models.brick import BRICK, REF, brick_class, build_graph, validate  # noqa: E402
from meter_gateway.models.common import gateway_meter_points  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BACNET = Namespace("http://data.ashrae.org/bacnet/")
MG = Namespace("https://meter-gateway.org/schema/ref#")


@pytest.fixture(scope="module")
def demo(profiles):
    cfg = load_config(ROOT / "gateway.yaml", profiles)
    catalogue, points = gateway_meter_points(cfg, profiles)
    return cfg, catalogue, points, build_graph(cfg, catalogue, points)


def test_every_catalogue_brick_class_is_a_brick_class(demo):
    import brickschema

    _cfg, catalogue, _points, _g = demo
    ontology = brickschema.Graph(load_brick=True)
    missing = {p.brick for p in catalogue if (BRICK[brick_class(p.brick)], RDF.type, None) not in ontology}
    assert not missing, f"not in the Brick ontology: {missing}"


OTHER = """
gateway: {name: other}
buses: [{id: b, type: modbus_tcp, host: 127.0.0.1}]
meters:
  - {id: main, bus: b, address: 1, profile: generic, building: Hall, bacnet_instance_base: 1000, modbus_unit: 1}
  - {id: sub, bus: b, address: 2, profile: generic, parent: main, floor: Mezzanine, bacnet_instance_base: 1100}
  - {id: bare, bus: b, address: 3, profile: eastron_sdm120, parent: sub, bacnet_instance_base: 1200}
upstream: {bacnet: {enabled: false}}
"""


def test_demo_model_has_zero_shacl_results_and_a_broken_model_has_some(demo, profiles):
    cfg, catalogue, points, good = demo
    # one validation run (the Brick shapes take seconds): the demo model, a second valid model (a building's main
    # meter, a floor without building, a meter placed nowhere, no BACnet) and a broken copy of the demo, each in
    # its own namespace; every result must fall on the broken copy
    other_cfg = parse_config(OTHER, "other.yaml", profiles)
    _cat, other_points = gateway_meter_points(other_cfg, profiles)
    other = build_graph(other_cfg, catalogue, other_points, base="urn:other#")
    assert (rdflib.URIRef("urn:other#meter.main"), RDF.type, BRICK.Building_Electrical_Meter) in other
    assert (rdflib.URIRef("urn:other#meter.bare"), BRICK.meters, rdflib.URIRef("urn:other#site.other")) in other
    broken = build_graph(cfg, catalogue, points, base="urn:broken#")
    meter = rdflib.URIRef("urn:broken#meter.tenant-a")
    broken.add((meter, BRICK.meters, Literal("not a location")))
    point = rdflib.URIRef("urn:broken#point.tenant-a.Voltage_L1_N")
    broken.add((point, BRICK.hasUnit, Literal("volts")))
    results = validate(good + other + broken)
    assert results, "the broken model must be reported"
    assert all(r.startswith("urn:broken#") for r in results), results
    assert any("meter.tenant-a" in r for r in results) and any("Voltage_L1_N" in r for r in results), results


def test_model_carries_hierarchy_points_units_and_references(demo):
    cfg, _catalogue, points, g = demo
    ns = Namespace("urn:meter-gateway:demo-gateway#")
    meters = set(g.subjects(RDF.type, BRICK.Electrical_Meter))
    assert meters == {ns[f"meter.{m.id}"] for m in cfg.meters if m.enabled}
    assert (ns["meter.tenant-c"], BRICK.isSubMeterOf, ns["meter.tenant-a"]) in g
    assert (ns["meter.tenant-a"], BRICK.hasSubMeter, ns["meter.tenant-c"]) in g
    # every served point is there, once, on its meter
    for m in cfg.meters:
        have = {str(o).rsplit(".", 1)[1] for o in g.objects(ns[f"meter.{m.id}"], BRICK.hasPoint)}
        assert have == set(points[m.id]), m.id
    e = ns["point.tenant-a.Active_Energy_Import"]
    assert (e, RDF.type, BRICK.Electric_Energy_Sensor) in g
    assert (e, BRICK.hasUnit, rdflib.URIRef("http://qudt.org/vocab/unit/KiloW-HR")) in g
    refs = list(g.objects(e, REF.hasExternalReference))
    bac = next(r for r in refs if (r, RDF.type, REF.BACnetReference) in g)
    assert str(g.value(bac, BACNET["object-identifier"])) == "accumulator,1001"
    assert str(g.value(bac, REF.BACnetURI)) == "bacnet://599/accumulator,1001/present-value"
    mod = next(r for r in refs if (r, RDF.type, MG.ModbusReference) in g)
    assert (g.value(mod, MG.unitId).toPython(), g.value(mod, MG.table).toPython()) == (1, "input")
    assert (g.value(mod, MG.address).toPython(), str(g.value(mod, MG.modiconReference))) == (0, "30001")


def test_brick_command_writes_turtle_that_parses(tmp_path):
    out = tmp_path / "model.ttl"
    r = subprocess.run(
        [sys.executable, "-m", "meter_gateway.cli", "brick", "-c", str(ROOT / "gateway.yaml"), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    g = rdflib.Graph().parse(out, format="turtle")
    assert len(set(g.subjects(RDF.type, BRICK.Electrical_Meter))) == 5
