"""Live values of a running gateway as a JSON document (served at /values, read by `meter-gateway read`)."""

from __future__ import annotations

import contextlib
import json
import math
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VALUES_PATH = "/values"


@dataclass(frozen=True)
class Target:
    """Where and how the local CLI reaches the running gateway: base URL, control token, TLS context."""

    base: str
    token: str | None = None
    context: ssl.SSLContext | None = None

    def open(self, path: str, timeout: float, method: str = "GET"):
        """urlopen() of a path with the control token as bearer (raises like urlopen)."""
        req = urllib.request.Request(self.base + path, method=method)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        return urllib.request.urlopen(req, timeout=timeout, context=self.context)


def target(cfg: Any, config_path: str | Path | None) -> Target:
    """The running gateway of this configuration, with the token it wrote to <state_dir>/control.token."""
    from .config import config_dir, state_dir
    from .web.auth import read_control_token

    up = cfg.upstream.prometheus
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(
        up.bind, f"[{up.bind}]" if ":" in up.bind else up.bind
    )
    tls = cfg.upstream.http.tls
    context = None
    if tls is not None:  # trust exactly the gateway's own certificate (any host name: it is this machine)
        base = config_dir(config_path)
        context = ssl.create_default_context(cafile=str(base / tls.cert))
        context.check_hostname = False
    token = read_control_token(state_dir(cfg, config_path))
    return Target(f"{'https' if tls else 'http'}://{host}:{up.port}", token, context)


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


def fetch_values(where: Target, meter_id: str, timeout: float = 2.0) -> dict[str, Any] | str | None:
    """The running gateway's live values of one meter, None when no gateway answers there, or its refusal (str)."""
    try:
        with where.open(f"{VALUES_PATH}?meter={meter_id}", timeout) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return _refusal(exc)
        return None
    except (OSError, ValueError):  # refused, timeout, 404 (an older gateway), not JSON
        return None
    return doc if isinstance(doc, dict) and "meters" in doc else None


TRACE_PATH = "/trace"

_MODBUS_FUNCTIONS = {
    1: "read coils",
    2: "read discrete inputs",
    3: "read holding registers",
    4: "read input registers",
    5: "write coil",
    6: "write register",
    15: "write coils",
    16: "write registers",
}
_MODBUS_EXCEPTIONS = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    6: "busy",
    0x0B: "gateway target failed to respond",
}


def describe_modbus(direction: str, data: bytes, tcp: bool) -> str:
    """What a Modbus frame says: unit, function, address and count, or the exception."""
    if tcp:
        if len(data) < 8:
            return "short MBAP frame"
        unit, pdu = data[6], data[7:]
    else:
        if len(data) < 4:
            return "short frame"
        unit, pdu = data[0], data[1:-2]
    fc = pdu[0]
    if fc & 0x80:
        code = pdu[1] if len(pdu) > 1 else 0
        return f"unit {unit}: exception {code} ({_MODBUS_EXCEPTIONS.get(code, 'unknown')}) to function {fc & 0x7F}"
    name = _MODBUS_FUNCTIONS.get(fc, f"function {fc}")
    if direction == "tx" and len(pdu) >= 5:
        addr, n = int.from_bytes(pdu[1:3], "big"), int.from_bytes(pdu[3:5], "big")
        what = f"x{n}" if fc in (1, 2, 3, 4, 15, 16) else f"= 0x{n:04X}"
        return f"unit {unit}: {name} at {addr} (0x{addr:04X}) {what}"
    if direction == "rx" and fc in (1, 2, 3, 4) and len(pdu) >= 2:
        return f"unit {unit}: {name}: {pdu[1]} bytes"
    return f"unit {unit}: {name}"


def describe_mbus(direction: str, data: bytes) -> str:
    """What an M-Bus frame says (EN 13757-2): ACK, SND_NKE, REQ_UD2, selection, RSP_UD with its address."""
    if data[:1] == b"\xe5":
        return "ACK"
    if data[:1] == b"\x10" and len(data) >= 5:
        c, a = data[1], data[2]
        kind = {0x40: "SND_NKE (link reset)", 0x5B: "REQ_UD2", 0x7B: "REQ_UD2"}.get(c, f"short frame C=0x{c:02X}")
        return f"{kind} to address {a}"
    if data[:1] == b"\x68" and len(data) >= 9:
        c, a, ci = data[4], data[5], data[6]
        if c in (0x08, 0x18, 0x28, 0x38):
            more = " (more follows)" if data[-3:-2] == b"\x1f" else ""
            return f"RSP_UD from address {a}, CI 0x{ci:02X}, {data[1] - 3} bytes of user data{more}"
        if ci == 0x52:
            ident = data[7:11][::-1].hex().upper()
            return f"SND_UD select secondary address {ident}"
        return f"long frame C=0x{c:02X} to address {a}, CI 0x{ci:02X}"
    return "unrecognised bytes"


def trace_document(bus_id: str, driver: Any, kind: str, after: int = 0) -> dict[str, Any]:
    """Frames of one bus newer than sequence number `after`: time, direction, hex and decoded meaning."""
    frames = []
    for seq, t, direction, data in list(getattr(driver, "frames", ())):
        if seq <= after:
            continue
        try:
            if kind == "mbus":
                meaning = describe_mbus(direction, data)
            else:
                meaning = describe_modbus(direction, data, tcp=kind == "modbus_tcp")
        except IndexError:
            meaning = "undecodable"
        frames.append({"seq": seq, "time": t, "dir": direction, "hex": data.hex(" ").upper(), "meaning": meaning})
    return {"bus": bus_id, "kind": kind, "frames": frames}


def fetch_trace(where: Target, bus_id: str, after: int, timeout: float = 2.0) -> dict[str, Any] | str:
    """New frames of a bus from the running gateway, or the reason there are none (a message)."""
    try:
        with where.open(f"{TRACE_PATH}?bus={bus_id}&after={after}", timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return _refusal(exc)
    except (OSError, ValueError):
        return f"no running gateway answers at {where.base}"


def _refusal(exc: urllib.error.HTTPError) -> str:
    """The gateway's refusal as a message; 401/403 say how the CLI gets in."""
    body = exc.read().decode(errors="replace").strip()
    with contextlib.suppress(ValueError, AttributeError):
        body = json.loads(body).get("error", body)
    if exc.code == 401:
        return (
            f"the running gateway refused the request ({body or 'HTTP 401'}): run this command as the gateway's user "
            "(or root) so it can read <state_dir>/control.token"
        )
    return body or f"HTTP {exc.code}"


SCAN_PATH = "/scan"


def scan_document(bus_id: str, found: list[dict]) -> dict[str, Any]:
    """The answer of a scan by the running gateway."""
    return {"bus": bus_id, "found": found}


def fetch_scan(where: Target, bus_id: str, first: int | None, last: int | None, secondary: bool):
    """Ask the running gateway to scan a bus: the meters found, None when no gateway answers, or its refusal (str)."""
    query = f"bus={bus_id}&secondary={int(secondary)}"
    query += f"&first={first}" if first is not None else ""
    query += f"&last={last}" if last is not None else ""
    try:
        with where.open(f"{SCAN_PATH}?{query}", timeout=900) as resp:
            return json.loads(resp.read())["found"]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None  # the gateway does not poll this bus (no meters on it yet) or predates /scan: scan directly
        return _refusal(exc) or f"the running gateway refused the scan (HTTP {exc.code})"
    except (OSError, ValueError, KeyError):
        return None
