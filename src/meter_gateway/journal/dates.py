"""Parsing the dates of export requests in the site's time zone."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo


def parse_local(text: str, tz: str) -> int:
    """'2026-11-01' or '2026-11-01T06:00' in the site's time zone, as Unix seconds."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a date such as 2026-11-01 or 2026-11-01T06:00") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=ZoneInfo(tz))
    return int(dt.timestamp())
