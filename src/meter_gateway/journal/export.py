"""Billing exports from the journal: opening and closing index, consumption, peak/off-peak split, peak demand."""

from __future__ import annotations

import csv
import io
import itertools
from datetime import datetime, time
from decimal import Decimal
from zoneinfo import ZoneInfo

from .store import JournalStore

POINT = "Active_Energy_Import"


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


def export(store: JournalStore, config, start: int, end: int, tenant: str | None = None) -> list[dict]:
    """One row per meter for [start, end] (Unix seconds on interval boundaries)."""
    tz = ZoneInfo(config.gateway.timezone)
    ranges = _ranges(config.journal.tariffs.off_peak)
    interval = config.journal.interval
    out = []
    for m in config.meters:
        if tenant and m.tenant != tenant:
            continue
        rows = [r for r in store.rows(meter=m.id, since=start, until=end, kind="interval") if r["point"] == POINT]
        ok = [r for r in rows if r["status"] == "ok"]
        missing = [r["boundary"] for r in rows if r["status"] != "ok"]
        result: dict = {
            "meter": m.id,
            "tenant": m.tenant,
            "serial": m.serial_number,
            "mid": m.mid,
            "unit": "kWh",
            "from": start,
            "to": end,
            "missing_boundaries": len(missing),
        }
        opening = next((r for r in ok if r["boundary"] == start), None)
        closing = next((r for r in reversed(ok) if r["boundary"] == end), None)
        result["opening_index"] = opening["value"] if opening else None
        result["closing_index"] = closing["value"] if closing else None
        result["consumption"] = (
            str(Decimal(closing["value"]) - Decimal(opening["value"])) if opening and closing else None
        )
        peak = off = unallocated = Decimal(0)
        best = (Decimal(-1), None)
        for a, b in itertools.pairwise(ok):
            delta = Decimal(b["value"]) - Decimal(a["value"])
            if b["boundary"] - a["boundary"] != interval:
                unallocated += delta  # spans missing boundaries: the total is known, the split is not
                continue
            if ranges and is_off_peak(a["boundary"], tz, ranges):
                off += delta
            else:
                peak += delta
            if delta > best[0]:
                best = (delta, a["boundary"])
        if ranges:
            result["peak_kwh"], result["off_peak_kwh"] = str(peak), str(off)
        result["unallocated_kwh"] = str(unallocated)
        if best[1] is not None:
            result["peak_demand_kw"] = str((best[0] * Decimal(3600) / Decimal(interval)).quantize(Decimal("0.001")))
            result["peak_demand_start"] = datetime.fromtimestamp(best[1], tz).isoformat()
        else:
            result["peak_demand_kw"] = result["peak_demand_start"] = None
        out.append(result)
    return out


def to_csv(rows: list[dict]) -> str:
    """CSV text of export rows."""
    buf = io.StringIO()
    if rows:
        cols = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()
