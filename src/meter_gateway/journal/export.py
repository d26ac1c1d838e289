"""Billing exports from the journal: opening and closing index, consumption, peak/off-peak split, peak demand.

Computed meter by meter from a bounded, indexed query (one series at a time, fetched in batches), so an export
of years of readings takes little memory; `iter_export` yields one result per meter and `csv_chunks` /
`json_chunks` turn them into text as they come (streamed by the CLI and by GET /export from a worker thread).
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Iterable, Iterator
from datetime import datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from .store import read_checkpoints, side_paths

POINT = "Active_Energy_Import"
MAX_CONCURRENT = 3  # exports running at once (HTTP); one more is answered 429
COLUMNS = (
    "meter",
    "tenant",
    "serial",
    "mid",
    "unit",
    "from",
    "to",
    "opening_index",
    "closing_index",
    "consumption",
    "peak_kwh",
    "off_peak_kwh",
    "unallocated_kwh",
    "peak_demand_kw",
    "peak_demand_start",
    "missing_boundaries",
    "index_resets",
    "clock_steps",
    "flags",
    "checkpoint_seq",
    "checkpoint_time",
    "checkpoint_head",
)


class ExportRequestError(ValueError):
    """A request that cannot be answered as asked (bad range, unknown tenant); `status` is the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _ranges(off_peak: list[str]) -> list[tuple[time, time]]:
    out = []
    for item in off_peak:
        a, b = (t.strip() for t in item.split("-"))
        ha, ma = (int(x) for x in a.split(":"))
        hb, mb = (int(x) for x in b.split(":"))
        out.append((time(ha % 24, ma), time(hb % 24, mb)))
    return out


def is_off_peak(ts: int, tz: ZoneInfo, ranges: list[tuple[time, time]]) -> bool:
    """Whether the interval starting at `ts` (local time) is off-peak."""
    t = datetime.fromtimestamp(ts, tz).time()
    return any((a <= b and a <= t < b) or (a > b and (t >= a or t < b)) for a, b in ranges)


def check_request(config, start: int, end: int, tenant: str | None) -> None:
    """Refuse a range backwards or too long, and an unknown tenant, with a message listing what exists."""
    if start > end:
        raise ExportRequestError("--from is after --to: the range is backwards")
    max_days = config.journal.retention_days + 31
    if end - start > max_days * 86400:
        raise ExportRequestError(
            f"the range spans {(end - start) / 86400:.0f} days; at most {max_days} (retention_days + 31) per export",
            413,
        )
    tenants = sorted({m.tenant for m in config.meters})
    if tenant is not None and tenant not in tenants:
        raise ExportRequestError(f"unknown tenant {tenant!r}; tenants: {', '.join(tenants)}")


def _last_checkpoint(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    docs, _bad = read_checkpoints(side_paths(path)[1])
    return max(docs, key=lambda d: d.get("seq", 0), default={})


def iter_export(
    db: sqlite3.Connection,
    config,
    start: int,
    end: int,
    tenant: str | None = None,
    journal_path: Path | None = None,
) -> Iterator[dict[str, Any]]:
    """One result per meter for [start, end] (Unix seconds on interval boundaries), as each is computed."""
    tz = ZoneInfo(config.gateway.timezone)
    iso = lambda t: datetime.fromtimestamp(t, tz).isoformat()  # noqa: E731
    ranges = _ranges(config.journal.tariffs.off_peak)
    interval = config.journal.interval
    cp = _last_checkpoint(journal_path)
    steps = [
        iso(b)
        for (b,) in db.execute(
            "SELECT boundary FROM readings WHERE kind='event' AND point='clock_step' AND boundary BETWEEN ? AND ? "
            "ORDER BY boundary",
            (start, end + interval),
        )
    ]
    for m in config.meters:
        if tenant and m.tenant != tenant:
            continue
        result: dict[str, Any] = dict.fromkeys(COLUMNS)
        result.update(meter=m.id, tenant=m.tenant, serial=m.serial_number, mid=m.mid, unit="kWh")
        result.update({"from": iso(start), "to": iso(end)})
        cur = db.execute(
            "SELECT boundary, status, value FROM readings WHERE meter=? AND point=? AND kind='interval' "
            "AND boundary BETWEEN ? AND ? ORDER BY boundary",
            (m.id, POINT, start, end),
        )
        missing = 0
        opening = closing = prev = None  # (boundary, Decimal)
        seg_first: Decimal | None = None
        consumption = peak = off = unallocated = Decimal(0)
        best: tuple[Decimal, int | None] = (Decimal(-1), None)
        resets: list[str] = []
        while batch := cur.fetchmany(5000):
            for boundary, status, value in batch:
                if status != "ok":
                    missing += 1
                    continue
                v = Decimal(value)
                if opening is None and boundary == start:
                    opening = (boundary, v)
                if seg_first is None:
                    seg_first = v
                if prev is not None:
                    delta = v - prev[1]
                    if delta < 0:  # the index went down: meter replaced or reset; this interval is unknown
                        resets.append(iso(boundary))
                        consumption += prev[1] - seg_first
                        seg_first = v
                    elif boundary - prev[0] != interval:
                        unallocated += delta  # spans missing boundaries: the total is known, the split is not
                    else:
                        if ranges and is_off_peak(prev[0], tz, ranges):
                            off += delta
                        else:
                            peak += delta
                        if delta > best[0]:
                            best = (delta, prev[0])
                prev = (boundary, v)
        if prev is not None and prev[0] == end:
            closing = prev
        result["missing_boundaries"] = missing
        result["opening_index"] = str(opening[1]) if opening else None
        result["closing_index"] = str(closing[1]) if closing else None
        if opening and closing and seg_first is not None:
            result["consumption"] = str(consumption + closing[1] - seg_first)
        if ranges:
            result["peak_kwh"], result["off_peak_kwh"] = str(peak), str(off)
        result["unallocated_kwh"] = str(unallocated)
        if best[1] is not None:
            result["peak_demand_kw"] = str((best[0] * Decimal(3600) / Decimal(interval)).quantize(Decimal("0.001")))
            result["peak_demand_start"] = iso(best[1])
        result["index_resets"] = " ".join(resets)
        result["clock_steps"] = " ".join(steps)
        flags = []
        if resets:
            flags.append("index_reset")  # consumption excludes the interval(s) in which the index went down
        if steps:
            flags.append("clock_step")
        if missing:
            flags.append("missing_boundaries")
        result["flags"] = " ".join(flags)
        result.update(checkpoint_seq=cp.get("seq"), checkpoint_time=cp.get("time"), checkpoint_head=cp.get("head"))
        yield result


def export(source, config, start: int, end: int, tenant: str | None = None) -> list[dict]:
    """All results at once (a JournalStore or a connection)."""
    if isinstance(source, sqlite3.Connection):
        return list(iter_export(source, config, start, end, tenant))
    with source._lock:
        return list(iter_export(source.db, config, start, end, tenant, source.path))


def csv_chunks(results: Iterable[dict]) -> Iterator[str]:
    """CSV text, a header then one line per result."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in results:
        w.writerow(r)
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
    if buf.getvalue():
        yield buf.getvalue()


def json_chunks(results: Iterable[dict]) -> Iterator[str]:
    """A JSON array, one element per result."""
    yield "["
    first = True
    for r in results:
        yield ("\n  " if first else ",\n  ") + json.dumps(r)
        first = False
    yield "\n]\n"


def to_csv(rows: list[dict]) -> str:
    """CSV text of export rows."""
    return "".join(csv_chunks(rows))
