"""The running gateway's HTTP listener serves the Brick and Haystack models, the XML export and its OpenAPI
document: fetched over real HTTP on loopback, parsed with independent libraries."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from meter_gateway.app import Gateway
from meter_gateway.config import parse_config
from meter_gateway.journal.recorder import Recorder, journal_path
from meter_gateway.journal.store import JournalStore, Reading, load_or_create_key, side_paths
from meter_gateway.servers.prometheus import PrometheusServer

ROOT = Path(__file__).resolve().parents[2]


async def fetch(server: PrometheusServer, path: str) -> tuple[int, str, bytes]:
    host, port = server.address()

    def get():
        try:
            req = urllib.request.Request(f"http://{host}:{port}{path}")
            req.add_header("Authorization", f"Bearer {server.auth.control_token}")  # the local CLI's admin token
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.headers["Content-Type"], r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers["Content-Type"], e.read()

    return await asyncio.to_thread(get)


def demo_config(profiles):
    text = (ROOT / "gateway.yaml").read_text().replace("    port: 9105", "    port: 0")
    return parse_config(text, str(ROOT / "gateway.yaml"), profiles)


async def test_models_and_openapi_over_http(profiles):
    rdflib = pytest.importorskip("rdflib", reason="rdflib is not installed (the models extra)")
    from phable.io.ph_json import ph_from_json
    from phable.io.ph_zinc import ph_from_zinc

    gw = Gateway(demo_config(profiles), profiles)
    server = PrometheusServer(gw.ports)
    await server.start()
    try:
        status, ctype, body = await fetch(server, "/model/brick.ttl")
        assert status == 200 and ctype.startswith("text/turtle")
        g = rdflib.Graph().parse(data=body.decode(), format="turtle")
        brick = rdflib.Namespace("https://brickschema.org/schema/Brick#")
        assert len(set(g.subjects(rdflib.RDF.type, brick.Electrical_Meter))) == 5
        n_points = sum(1 for _ in g.subjects(brick.isPointOf, None))
        status, ctype, body = await fetch(server, "/model/haystack.json")
        assert status == 200 and ctype == "application/json"
        grid = ph_from_json(json.loads(body))
        assert sum(1 for r in grid.rows if "point" in r) == n_points  # both models carry every served point
        status, _, body = await fetch(server, "/model/haystack.zinc")
        assert status == 200 and len(ph_from_zinc(body.decode()).rows) == len(grid.rows)
        status, ctype, body = await fetch(server, "/openapi.json")
        assert status == 200 and ctype == "application/json"
        doc = json.loads(body)
        spec_validator = pytest.importorskip("openapi_spec_validator", reason="openapi-spec-validator missing")
        spec_validator.validate(doc)
        assert set(doc["paths"]) == set(server.http.routes)  # every route documented, nothing undocumented
        status, _, _ = await fetch(server, "/model/nothing")
        assert status == 404
    finally:
        await server.stop()


XML_YAML = """
gateway: {name: x, timezone: Europe/Paris, state_dir: .}
buses: [{id: b, type: modbus_rtu, simulated: true}]
meters:
  - {id: a, tenant: T1, serial_number: S-1, bus: b, address: 1, profile: generic, mid: true, bacnet_instance_base: 1000}
upstream: {prometheus: {bind: 127.0.0.1, port: 0}}
journal: {enabled: true, interval: 900}
"""


async def test_xml_export_over_http_validates(tmp_path, profiles):
    xmlschema = pytest.importorskip("xmlschema", reason="xmlschema is not installed (the dev extra)")
    from meter_gateway.journal.xml import NS, xsd_text

    cfg_path = tmp_path / "gateway.yaml"  # state files (journal, key) go beside it, never into the working folder
    gw = Gateway(parse_config(XML_YAML, str(cfg_path), profiles), profiles, config_path=cfg_path)
    path = journal_path(gw.facts)
    store = JournalStore(path, load_or_create_key(side_paths(path)[0])[0])
    start = int(datetime(2026, 11, 2, tzinfo=ZoneInfo("Europe/Paris")).timestamp())
    store.append(
        [
            Reading("a", "T1", "S-1", "generic", True, "Active_Energy_Import", "interval", b, "ok", "[0, 1]",
                    f"{100 + i}.00", "kWh", "generic", 1, b - 3.0, "synchronized", "good")
            for i, b in enumerate(range(start, start + 4 * 900 + 1, 900))
        ]
    )  # fmt: skip
    gw.journal = Recorder(gw.facts, gw.table, store)
    server = PrometheusServer(gw.ports)
    await server.start()
    try:
        status, ctype, body = await fetch(server, "/export?from=2026-11-02&to=2026-11-02T01:00&format=xml")
        assert status == 200 and ctype == "application/xml", body
        xmlschema.XMLSchema(xsd_text()).validate(body)
        assert b"<consumption>4.00</consumption>" in body and NS.encode() in body
    finally:
        await server.stop()
        store.close()
