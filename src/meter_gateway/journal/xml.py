"""XML billing export (schema: data/billing-export.xsd): the CSV/JSON export's figures plus the journal sequence
numbers and read times of the opening and closing readings, and flags for missing boundaries and index resets."""

from __future__ import annotations

import itertools
import sqlite3
import time
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from xml.etree import ElementTree as ET
from zoneinfo import ZoneInfo

from .export import POINT, iter_export
from .store import JournalStore, query_rows

NS = "https://meter-gateway.org/schema/billing/1"
XSD = "data/billing-export.xsd"


def xsd_text() -> str:
    """The shipped XSD of the export."""
    return resources.files("meter_gateway").joinpath(XSD).read_text(encoding="utf-8")


def _iso(ts: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, tz).isoformat()


def _reading(parent: ET.Element, tag: str, boundary: int, row: dict | None, tz: ZoneInfo) -> None:
    el = ET.SubElement(parent, f"{{{NS}}}{tag}", {"boundary": _iso(boundary, tz)})
    if row is None:
        el.set("status", "missing")
        return
    el.set("status", "ok")
    el.set("index", row["value"])
    if row["read_time"] is not None:
        el.set("readTime", _iso(row["read_time"], tz))
    el.set("sequence", str(row["seq"]))


def to_xml(
    source: JournalStore | sqlite3.Connection,
    config,
    start: int,
    end: int,
    tenant: str | None = None,
    now: float | None = None,
    journal_path: Path | None = None,
) -> bytes:
    """The XML billing export of [start, end] (Unix seconds on interval boundaries), UTF-8.

    `source` is a JournalStore or a (read-only) connection to a journal file."""
    if isinstance(source, sqlite3.Connection):
        return _to_xml(source, config, start, end, tenant, now, journal_path)
    with source._lock:
        return _to_xml(source.db, config, start, end, tenant, now, source.path)


def _to_xml(
    db: sqlite3.Connection,
    config,
    start: int,
    end: int,
    tenant: str | None,
    now: float | None,
    journal_path: Path | None,
) -> bytes:
    tz = ZoneInfo(config.gateway.timezone)
    root = ET.Element(
        f"{{{NS}}}billingExport",
        {
            "version": "1",
            "gateway": config.gateway.name,
            "generated": datetime.fromtimestamp(time.time() if now is None else now, UTC).isoformat(),
            "timezone": config.gateway.timezone,
        },
    )
    if tenant:
        root.set("tenant", tenant)
    ET.SubElement(
        root,
        f"{{{NS}}}period",
        {"from": _iso(start, tz), "to": _iso(end, tz), "intervalSeconds": str(config.journal.interval)},
    )
    names = {m.id: m.name for m in config.meters}
    for res in iter_export(db, config, start, end, tenant, journal_path):
        rows = [
            r
            for r in query_rows(db, meter=res["meter"], since=start, until=end, kind="interval", point=POINT)
            if r["status"] == "ok"
        ]
        opening = next((r for r in rows if r["boundary"] == start), None)
        closing = next((r for r in reversed(rows) if r["boundary"] == end), None)
        resets = [(a, b) for a, b in itertools.pairwise(rows) if Decimal(b["value"]) < Decimal(a["value"])]
        m = ET.SubElement(
            root,
            f"{{{NS}}}meter",
            {
                "id": res["meter"],
                "tenant": res["tenant"] or "",
                "serialNumber": res["serial"] or "",
                "mid": "true" if res["mid"] else "false",
                "unit": res["unit"],
            },
        )
        if names.get(res["meter"]):
            m.set("name", names[res["meter"]])
        _reading(m, "opening", start, opening, tz)
        _reading(m, "closing", end, closing, tz)
        trusted = not resets
        if trusted and opening is not None and closing is not None:
            ET.SubElement(m, f"{{{NS}}}consumption").text = str(Decimal(closing["value"]) - Decimal(opening["value"]))
        if trusted:
            split = {"unallocated": res["unallocated_kwh"]}
            if res.get("peak_kwh") is not None:
                split |= {"peak": res["peak_kwh"], "offPeak": res["off_peak_kwh"]}
            ET.SubElement(m, f"{{{NS}}}tariffSplit", split)
            if res.get("peak_demand_kw") is not None:
                ET.SubElement(
                    m, f"{{{NS}}}peakDemand", {"kw": res["peak_demand_kw"], "start": res["peak_demand_start"]}
                )
        complete = trusted and opening is not None and closing is not None and res["missing_boundaries"] == 0
        ET.SubElement(
            m,
            f"{{{NS}}}flags",
            {
                "missingBoundaries": str(res["missing_boundaries"]),
                "openingMissing": "true" if opening is None else "false",
                "closingMissing": "true" if closing is None else "false",
                "indexReset": "true" if resets else "false",
                "clockStep": "true" if res.get("clock_steps") else "false",
                "complete": "true" if complete else "false",
            },
        )
        for a, b in resets:
            ET.SubElement(
                m,
                f"{{{NS}}}reset",
                {
                    "beforeSequence": str(a["seq"]),
                    "beforeIndex": a["value"],
                    "afterSequence": str(b["seq"]),
                    "afterIndex": b["value"],
                    "after": _iso(b["boundary"], tz),
                },
            )
    ET.register_namespace("", NS)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
