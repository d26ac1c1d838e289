"""The write path shared by every upstream: policy decision, pass-through to the meter, audit record."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .core.catalogue import PointKind
from .core.write_policy import MeterRights, Verdict, decide
from .drivers.base import DriverError

if TYPE_CHECKING:
    from .app import Gateway

log = logging.getLogger(__name__)


class Decision(StrEnum):
    """Final outcome of a write attempt."""

    ACCEPTED = "accepted"
    DENIED = "denied"
    OUT_OF_RANGE = "out-of-range"
    FAILED = "failed"  # accepted by the policy, refused or not answered by the meter


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """One write attempt from an upstream client."""

    protocol: str  # "modbus" | "bacnet"
    source: str  # client IP address
    meter_id: str
    point: str
    value: float | int | bool


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What happened, for the upstream answer."""

    decision: Decision
    reason: str
    meter_reply: str = ""


class AuditLog:
    """Append-only JSON-lines file of every write attempt, flushed and synced per record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the gateway's lifetime

    def append(self, record: dict[str, Any]) -> None:
        """Write one record durably."""
        self._fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the file."""
        if not self._fh.closed:
            self._fh.close()


def read_audit(path: Path, last: int = 50) -> list[dict[str, Any]]:
    """The last `last` records of an audit file (malformed lines are skipped)."""
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out[-last:]


def audit_path(gateway: Gateway) -> Path:
    """The audit file, relative paths taken from the state directory (gateway.state_dir)."""
    from .config import state_path

    return state_path(gateway.config, gateway.config_path, gateway.config.writes.audit_log)


class WriteService:
    """Every upstream write goes through here: policy, then the meter, then the audit log."""

    def __init__(self, gateway: Gateway, timeout: float | None = None) -> None:
        self.gw = gateway
        self.timeout = timeout if timeout is not None else gateway.config.upstream.modbus_tcp.write_timeout
        self.audit = AuditLog(audit_path(gateway))
        self.counts: Counter[str] = Counter()  # decisions, for metrics
        self._lock = asyncio.Lock()

    def rights(self, meter_id: str) -> MeterRights:
        """What the configuration and the profile allow for a meter."""
        m = self.gw.config.meter(meter_id)
        prof = self.gw.profiles.get(m.profile)
        points = getattr(prof, "points", {})
        return MeterRights(
            meter_id=meter_id,
            mid=m.mid,
            allow_config_writes=m.allow_config_writes,
            allow_energy_reset=m.allow_energy_reset,
            supported_points=self.gw.meter_points(meter_id),
            declared_commands=frozenset(getattr(prof, "commands", {}) or {}),
            writable_config=frozenset(n for n, p in points.items() if getattr(p, "write", None) is not None),
            energy_reset_declared=getattr(prof, "energy_reset", None) is not None,
        )

    async def write(self, req: WriteRequest) -> WriteResult:
        """Decide, carry out and audit one write attempt."""
        cat = self.gw.catalogue
        if req.point not in cat or req.meter_id not in self.gw.table.meter_ids:
            result = WriteResult(Decision.DENIED, f"unknown meter or point {req.meter_id}.{req.point}")
            self._record(req, result)
            return result
        pdef = cat.get(req.point)
        w = self.gw.config.writes
        allow = w.allow_modbus if req.protocol == "modbus" else w.allow_bacnet
        policy = decide(
            pdef, req.value, self.rights(req.meter_id), writes_enabled=w.enabled, source=req.source, allowlist=allow
        )
        if policy.verdict is not Verdict.ACCEPTED:
            result = WriteResult(Decision(policy.verdict.value), policy.reason)
        else:
            async with self._lock:  # one write at a time: the audit order is the meter's order
                try:
                    value = bool(req.value) if pdef.kind is PointKind.COMMAND else req.value
                    reply = await asyncio.wait_for(self.gw.perform_write(req.meter_id, req.point, value), self.timeout)
                    result = WriteResult(Decision.ACCEPTED, policy.reason, reply)
                except TimeoutError:
                    result = WriteResult(Decision.FAILED, policy.reason, f"no reply within {self.timeout} s")
                except DriverError as exc:
                    result = WriteResult(Decision.FAILED, policy.reason, str(exc))
        self._record(req, result)
        return result

    def _record(self, req: WriteRequest, result: WriteResult) -> None:
        self.counts[result.decision.value] += 1
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "protocol": req.protocol,
            "source": req.source,
            "meter": req.meter_id,
            "point": req.point,
            "value": req.value,
            "decision": result.decision.value,
            "reason": result.reason,
            "meter_reply": result.meter_reply,
        }
        try:
            self.audit.append(record)
        except OSError as exc:
            log.error("cannot write the audit log %s: %s", self.audit.path, exc)
        level = logging.INFO if result.decision is Decision.ACCEPTED else logging.WARNING
        log.log(
            level,
            "write %s.%s=%s from %s/%s: %s (%s)",
            req.meter_id,
            req.point,
            req.value,
            req.protocol,
            req.source,
            result.decision.value,
            result.reason,
        )

    async def close(self) -> None:
        """Close the audit file."""
        self.audit.close()
