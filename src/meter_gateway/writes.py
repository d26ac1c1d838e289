"""The write path shared by every upstream: policy decision, pass-through to the meter, audit record."""

from __future__ import annotations

import asyncio
import contextlib
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
    value: float | int | bool | str
    detail: str = ""  # e.g. the BACnet priority of a command, or what was refused before the policy


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
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)  # a state file: not world-readable
        self._fh = os.fdopen(fd, "ab", buffering=0)  # kept open for the gateway's lifetime

    def append(self, record: dict[str, Any]) -> None:
        """Write one record durably, or nothing (OSError: a partial line is cut off, nothing stays buffered)."""
        data = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode()
        fd = self._fh.fileno()
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise

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
    """The audit file, relative paths taken from the configuration file's folder."""
    p = Path(gateway.config.writes.audit_log)
    if not p.is_absolute() and gateway.config_path is not None:
        p = gateway.config_path.parent / p
    return p


class WriteService:
    """Every upstream write goes through here: policy, then the meter, then the audit log."""

    def __init__(self, gateway: Gateway, timeout: float | None = None) -> None:
        self.gw = gateway
        self.timeout = timeout if timeout is not None else gateway.config.upstream.modbus_tcp.write_timeout
        self.audit = AuditLog(audit_path(gateway))
        self.counts: Counter[str] = Counter()  # decisions, for metrics
        self._unwritten: list[dict[str, Any]] = []  # audit records not yet written (disk full), oldest first
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
                intent = {**self._doc(req), "decision": "intent", "reason": policy.reason}
                try:
                    # the intent is durable before the meter is touched: no write without its audit record
                    self._durable(intent)
                except OSError as exc:
                    if self._unwritten and self._unwritten[-1] is intent:
                        self._unwritten.pop()
                    result = WriteResult(Decision.DENIED, f"refused: the audit record cannot be written ({exc})")
                    self._record(req, result)
                    return result
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

    def refuse(self, req: WriteRequest, reason: str) -> WriteResult:
        """Audit a write refused before the policy (read-only property, unknown object, wrong data type)."""
        result = WriteResult(Decision.DENIED, reason)
        self._record(req, result)
        return result

    @staticmethod
    def _doc(req: WriteRequest) -> dict[str, Any]:
        return {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "protocol": req.protocol,
            "source": req.source,
            "meter": req.meter_id,
            "point": req.point,
            "value": req.value,
        }

    def _durable(self, record: dict[str, Any]) -> None:
        """Append a record, after any kept from a failed attempt; raises OSError (the record is then kept)."""
        self._unwritten.append(record)
        self._flush()

    def _flush(self) -> None:
        while self._unwritten:
            self.audit.append(self._unwritten[0])
            self._unwritten.pop(0)

    def _record(self, req: WriteRequest, result: WriteResult) -> None:
        self.counts[result.decision.value] += 1
        record = {
            **self._doc(req),
            "decision": result.decision.value,
            "reason": result.reason,
            "meter_reply": result.meter_reply,
        }
        if req.detail:
            record["detail"] = req.detail
        try:
            self._durable(record)
        except OSError as exc:  # kept in memory (bounded), written when the audit file takes records again
            del self._unwritten[:-1000]
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
        """Write what the audit file refused earlier (if it takes it now), then close it."""
        try:
            self._flush()
        except OSError as exc:
            log.error("audit log %s: %d records not written: %s", self.audit.path, len(self._unwritten), exc)
        self.audit.close()
