"""Brick model (RDF, Turtle) of the configured site: site, buildings, floors, spaces, electrical meters with their
submeter hierarchy, and every served point with its Brick class, QUDT unit and BACnet / Modbus references."""

from __future__ import annotations

from rdflib import BNode, Graph, Literal, Namespace, URIRef
from rdflib.namespace import RDF, RDFS, SKOS, XSD

from ..bacnet_model import device_of
from ..config import GatewayConfig
from ..core.catalogue import Catalogue
from .common import UNITS, served_meters, slug

BRICK = Namespace("https://brickschema.org/schema/Brick#")
REF = Namespace("https://brickschema.org/schema/Brick/ref#")
BACNET = Namespace("http://data.ashrae.org/bacnet/")
UNIT = Namespace("http://qudt.org/vocab/unit/")
QUDT = Namespace("http://qudt.org/schema/qudt/")
REC = Namespace("https://w3id.org/rec#")
#: the gateway's own vocabulary: the Modbus register reference (Brick defines none for Modbus)
MG = Namespace("https://meter-gateway.org/schema/ref#")

#: Brick classes the catalogue (the spec's names) spells differently from the Brick ontology (1.4 / 1.5)
BRICK_CLASS = {
    "Active_Energy_Sensor": "Electric_Energy_Sensor",
    "Peak_Power_Demand_Sensor": "Peak_Demand_Sensor",
}


def brick_class(catalogue_class: str) -> str:
    """The Brick ontology class of a catalogue Brick class name."""
    return BRICK_CLASS.get(catalogue_class, catalogue_class)


def _vocabulary(g: Graph) -> None:
    g.add((MG.ModbusReference, RDF.type, URIRef("http://www.w3.org/2002/07/owl#Class")))
    g.add((MG.ModbusReference, RDFS.subClassOf, REF.ExternalReference))
    g.add((MG.ModbusReference, RDFS.label, Literal("Modbus register reference")))
    g.add(
        (
            MG.ModbusReference,
            SKOS.definition,
            Literal(
                "Where the gateway's Modbus TCP server serves this point: unit id, table "
                "(input, holding, coil, discrete_input), zero-based address, Modicon reference, data type"
            ),
        )
    )


def build_graph(
    config: GatewayConfig, catalogue: Catalogue, meter_points: dict[str, frozenset[str]], base: str = ""
) -> Graph:
    """The Brick model of the configured gateway as an rdflib Graph."""
    ns = Namespace(base or f"urn:meter-gateway:{slug(config.gateway.name)}#")
    g = Graph()
    g.bind("brick", BRICK)
    g.bind("ref", REF)
    g.bind("bacnet", BACNET)
    g.bind("unit", UNIT)
    g.bind("qudt", QUDT)
    g.bind("rec", REC)
    g.bind("mg", MG)
    g.bind("site", ns)
    _vocabulary(g)
    bac = config.upstream.bacnet

    def bacnet_device(instance: int, label: str) -> URIRef:
        node = ns[f"bacnet-device-{instance}"]
        g.add((node, RDF.type, BACNET.BACnetDevice))
        g.add((node, RDF.type, BACNET.device))  # the class Brick's BACnetReference shape asks of bacnet:contains
        g.add((node, BACNET["device-instance"], Literal(instance, datatype=XSD.nonNegativeInteger)))
        g.add((node, RDFS.label, Literal(label)))
        return node

    dev = bacnet_device(bac.device_instance, bac.device_name or config.gateway.name) if bac.enabled else None
    mb = config.upstream.modbus_tcp
    served = served_meters(config, catalogue, meter_points)
    enabled = {s.config.id for s in served}

    def location(cls: URIRef, key: str, label: str, parent: URIRef | None) -> URIRef:
        node = ns[key]
        g.add((node, RDF.type, cls))
        g.add((node, RDFS.label, Literal(label)))
        if parent is not None:
            g.add((node, REC.isPartOf, parent))
            g.add((parent, REC.hasPart, node))
        return node

    for sm in served:
        m = sm.config
        site = location(REC.Site, f"site.{slug(m.site)}", m.site, None)
        served_loc = site  # site > building > floor > zone, each level optional
        if m.building:
            served_loc = location(REC.Building, f"building.{slug(m.site)}.{slug(m.building)}", m.building, site)
        if m.floor:
            key = f"floor.{slug(m.site)}.{slug(m.building)}.{slug(m.floor)}"
            served_loc = location(REC.Level, key, m.floor, served_loc)
        if m.zone:
            key = f"zone.{slug(m.site)}.{slug(m.building)}.{slug(m.floor)}.{slug(m.zone)}"
            served_loc = location(REC.Zone, key, m.zone, served_loc)
        meter = ns[f"meter.{m.id}"]
        g.add((meter, RDF.type, BRICK.Electrical_Meter))
        if m.building and not (m.floor or m.zone or m.parent):
            g.add((meter, RDF.type, BRICK.Building_Electrical_Meter))  # a building's main meter
        g.add((meter, RDFS.label, Literal(m.name or m.id)))
        g.add((meter, MG.meterId, Literal(m.id)))
        if m.tenant:
            g.add((meter, MG.tenant, Literal(m.tenant)))
        if m.serial_number:
            g.add((meter, MG.serialNumber, Literal(m.serial_number)))
        g.add((meter, MG.mid, Literal(m.mid)))
        g.add((meter, BRICK.meters, served_loc))  # the most specific location it serves
        g.add((served_loc, BRICK.isMeteredBy, meter))
        if m.parent and m.parent in enabled:
            parent = ns[f"meter.{m.parent}"]
            g.add((meter, BRICK.isSubMeterOf, parent))
            g.add((parent, BRICK.hasSubMeter, meter))
        meter_dev, meter_dev_instance = dev, bac.device_instance
        if dev is not None and bac.devices == "per-meter":  # the meter's own device, behind the gateway's router
            meter_dev_instance, label = device_of(config, m.id)
            meter_dev = bacnet_device(meter_dev_instance, label)
        for spec in sm.objects:  # a point may be served by two objects (Demand_Peak_Timestamp: AI and DateTime)
            p = spec.point
            point = ns[f"point.{m.id}.{p.name}"]
            g.add((point, RDF.type, BRICK[brick_class(p.brick)]))
            g.add((point, RDFS.label, Literal(f"{m.id}.{p.name}")))
            g.add((point, SKOS.definition, Literal(p.description)))
            g.add((point, BRICK.isPointOf, meter))
            g.add((meter, BRICK.hasPoint, point))
            if p.unit in UNITS:
                unit = UNIT[UNITS[p.unit][0]]
                g.add((point, BRICK.hasUnit, unit))
                g.add((unit, RDF.type, QUDT.Unit))  # as QUDT declares it, so the model reads without QUDT loaded
            if dev is not None:
                ref = BNode()
                obj = f"{spec.object_type},{spec.instance}"
                g.add((point, REF.hasExternalReference, ref))
                g.add((ref, RDF.type, REF.BACnetReference))
                g.add((ref, BACNET["object-identifier"], Literal(obj)))
                g.add((ref, BACNET["object-name"], Literal(spec.name)))
                g.add((ref, BACNET["object-type"], Literal(spec.object_type)))
                g.add((ref, BACNET.objectOf, meter_dev))
                g.add((ref, BACNET.contains, meter_dev))
                g.add((ref, REF.BACnetURI, Literal(f"bacnet://{meter_dev_instance}/{obj}/present-value")))
            # one register per point (not a second time for the DateTime Value of Demand_Peak_Timestamp)
            if mb.enabled and m.modbus_unit is not None and spec.object_type != "datetime-value":
                ref = BNode()
                reg = p.modbus
                g.add((point, REF.hasExternalReference, ref))
                g.add((ref, RDF.type, MG.ModbusReference))
                g.add((ref, MG.unitId, Literal(m.modbus_unit)))
                g.add((ref, MG.table, Literal(reg.table)))
                g.add((ref, MG.address, Literal(reg.address)))
                g.add((ref, MG.modiconReference, Literal(reg.reference)))
                g.add((ref, MG.dataType, Literal(reg.type)))
                if reg.count == 2:
                    g.add((ref, MG.wordOrder, Literal(mb.word_order)))
    return g


def to_turtle(
    config: GatewayConfig, catalogue: Catalogue, meter_points: dict[str, frozenset[str]], base: str = ""
) -> str:
    """The Brick model as Turtle text."""
    return build_graph(config, catalogue, meter_points, base).serialize(format="turtle")


def validate(graph: Graph) -> list[str]:
    """SHACL results (violations and warnings) of the Brick shapes on the model's own nodes; [] when it conforms.

    Needs the `models` extra (brickschema, pySHACL). Results whose focus node is a node of the Brick ontology
    itself (QUDT quantity kinds it references but does not ship) are not the model's and are left out."""
    import brickschema
    from rdflib.namespace import SH

    full = brickschema.Graph(load_brick=True)
    full += graph
    _conforms, results, _text = full.validate()
    own = set(graph.subjects())
    out = []
    for r in results.subjects(RDF.type, SH.ValidationResult):
        focus = results.value(r, SH.focusNode)
        if focus in own:
            out.append(f"{focus}: {results.value(r, SH.resultMessage)}")
    return sorted(out)
