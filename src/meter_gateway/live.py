"""Live values of a running gateway as a JSON document (served at /values, read by `meter-gateway read`)."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from typing import Any

VALUES_PATH = "/values"


def values_document(table: Any, gateway_name: str, meter_ids: list[str] | None = None) -> dict[str, Any]:
    """Every supported point of the given meters (all when None): value, quality, reason, read and change times, age.

    Bad values are included with their quality: nothing is left out or made to look fresher than it is.
    """
    now = table.clock()
    meters: dict[str, Any] = {}
    for mid in meter_ids if meter_ids is not None else list(table.meter_ids):
        if mid not in table.meter_ids:
            continue
        state = table.meter(mid)
        points = {}
        for name, v in table.meter_values(mid).items():
            if not table.supports(mid, name):
                continue
            value = v.value
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            points[name] = {
                "value": value,
                "quality": str(v.quality),
                "reason": v.reason,
                "read_time": v.read_time,
                "change_time": v.change_time,
                "age_s": None if v.read_time is None else round(max(0.0, now - v.read_time), 3),
            }
        meters[mid] = {"online": state.online, "points": points}
    return {"gateway": gateway_name, "time": now, "meters": meters}


def fetch_values(host: str, port: int, meter_id: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """The running gateway's live values of one meter, or None when no gateway answers there."""
    url = f"http://{host}:{port}{VALUES_PATH}?meter={meter_id}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            doc = json.loads(resp.read())
    except (OSError, ValueError):  # refused, timeout, 404 (an older gateway), not JSON
        return None
    return doc if isinstance(doc, dict) and "meters" in doc else None
