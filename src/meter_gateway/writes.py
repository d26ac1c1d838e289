"""The write path shared by every upstream: policy decision, pass-through to the meter, audit record."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import stat
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .appendfile import cut_torn_tail
from .core.catalogue import PointKind
from .core.write_policy import MeterRights, Verdict, decide
from .drivers.base import DriverError
from .ratelog import OnceLog

if TYPE_CHECKING:
    from .ports import ConfigFacts, TableReader

#: carries an accepted write to the meter and returns the meter's reply (the gateway's bus runners do it)
PerformWrite = Callable[[str, str, "float | int | bool"], Awaitable[str]]

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

    protocol: str  # "modbus" | "bacnet" | "http"
    source: str  # client IP address
    meter_id: str
    point: str
    value: float | int | bool | str
    detail: str = ""  # e.g. the BACnet priority of a command, or what was refused before the policy
    user: str = ""  # the logged-in user (HTTP)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What happened, for the upstream answer."""

    decision: Decision
    reason: str
    meter_reply: str = ""


#: mode of a new audit file: owner read/write, group read (the gateway's group may run `meter-gateway audit`)
AUDIT_MODE = 0o640
#: refusal records written back to back before the rate limit applies, then per second; beyond, counted only
REFUSAL_BURST = 200
REFUSAL_RATE = 20.0
#: identical refusals (same protocol, source, meter, point, value, decision, reason) within this many seconds of
#: the record written for the first one are counted and written as one record with "count"
COALESCE_WINDOW = 10.0


class AuditLog:
    """Append-only JSON-lines file of every write attempt, created 0640; `durable` records are synced at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, AUDIT_MODE)  # a state file: not world-readable
        st = os.fstat(fd)
        self._regular = stat.S_ISREG(st.st_mode)  # not a device such as /dev/null: never chmod or fsync those
        mode = stat.S_IMODE(st.st_mode)
        if self._regular and mode & ~AUDIT_MODE:  # an older file readable by everyone: tighten it
            os.fchmod(fd, mode & AUDIT_MODE)
            log.warning("audit log %s was mode %o, now %o", path, mode, mode & AUDIT_MODE)
        if self._regular:
            rfd = os.open(path, os.O_RDWR)
            try:
                torn = cut_torn_tail(rfd)  # a record torn by a crash: cut, so the next record starts on its own line
            finally:
                os.close(rfd)
            if torn:
                log.warning(
                    "audit log %s: removed an incomplete last record (%d bytes, written when the gateway stopped)",
                    path,
                    torn,
                )
        self._fh = os.fdopen(fd, "ab", buffering=0)  # kept open for the gateway's lifetime; nothing stays buffered
        self._unsynced = False

    def append(self, record: dict[str, Any], durable: bool = True) -> None:
        """Write one record whole or not at all (OSError: a partial line is cut off); `durable` syncs it to disk
        before returning (otherwise at the next sync)."""
        data = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode()
        fd = self._fh.fileno()
        start = os.lseek(fd, 0, os.SEEK_END) if self._regular else 0
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            self._unsynced = self._regular
            if durable:
                self.sync()
        except OSError:
            if self._regular:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
            raise

    def sync(self) -> None:
        """Sync records written without `durable`."""
        if self._unsynced and not self._fh.closed:
            os.fsync(self._fh.fileno())
            self._unsynced = False

    def close(self) -> None:
        """Close the file (syncing what is not yet)."""
        if not self._fh.closed:
            try:
                self.sync()
            finally:
                self._fh.close()


@dataclass
class _Repeat:
    """Refusals coalesced into one record."""

    record: dict[str, Any]
    until: float  # monotonic time the window closes
    count: int = 0
    last: str = ""


class AuditRecorder:
    """Writes audit records: accepted and failed writes always and durably; refusals rate-limited and coalesced.

    Nothing is lost: a record with "count": N stands for N attempts (a record without "count" for one), so the sum of
    counts is the number of attempts. Identical refusals repeated within COALESCE_WINDOW share one record; refusals
    beyond REFUSAL_BURST + REFUSAL_RATE per second are summed per protocol and source into one record per window.
    """

    def __init__(self, audit: AuditLog, clock=time.monotonic) -> None:
        self.audit = audit
        self.clock = clock
        self.tokens = float(REFUSAL_BURST)
        self._refill = clock()
        self._repeats: dict[tuple, _Repeat] = {}
        self._overflow: dict[tuple[str, str], _Repeat] = {}

    def write(self, record: dict[str, Any]) -> None:
        """A write that reached the policy's acceptance: written and synced at once, never limited."""
        self.audit.append(record, durable=True)

    def refusal(self, record: dict[str, Any]) -> bool:
        """A refused attempt; True when it was written as its own record (False: counted into a later record)."""
        now = self.clock()
        self.flush(now)
        key = tuple(str(record.get(k)) for k in ("protocol", "source", "meter", "point", "value", "decision", "reason"))
        rep = self._repeats.get(key)
        if rep is not None:
            rep.count += 1
            rep.last = record["time"]
            return False
        self.tokens = min(float(REFUSAL_BURST), self.tokens + (now - self._refill) * REFUSAL_RATE)
        self._refill = now
        if self.tokens < 1.0:
            src = (str(record.get("protocol")), str(record.get("source")))
            over = self._overflow.get(src)
            if over is None:
                summary = {k: record.get(k) for k in ("time", "protocol", "source")}
                summary |= {"meter": "*", "point": "*", "value": None, "decision": "refused", "meter_reply": ""}
                summary["reason"] = f"refused write attempts beyond the audit rate limit ({REFUSAL_RATE:g}/s), summed"
                summary["decisions"] = {}
                over = self._overflow[src] = _Repeat(summary, now + COALESCE_WINDOW)
            over.count += 1
            over.last = record["time"]
            decisions = over.record["decisions"]
            decisions[record["decision"]] = decisions.get(record["decision"], 0) + 1
            return False
        self.tokens -= 1.0
        self.audit.append(record, durable=False)
        self._repeats[key] = _Repeat(record, now + COALESCE_WINDOW)
        return True

    def pending(self) -> bool:
        """True while some window is open (a flush is due later)."""
        return bool(self._repeats or self._overflow)

    def flush(self, now: float | None = None, force: bool = False) -> None:
        """Write the records of closed windows (all windows when `force`) and sync."""
        now = self.clock() if now is None else now
        for table in (self._repeats, self._overflow):
            for key in [k for k, r in table.items() if force or r.until <= now]:
                rep = table.pop(key)
                if rep.count:
                    first = rep.record["time"]
                    out = {**rep.record, "time": rep.last, "first_time": first, "count": rep.count}
                    self.audit.append(out, durable=False)
                    log.log(
                        logging.WARNING if table is self._overflow else logging.DEBUG,
                        "audit: %d refused write attempts from %s/%s coalesced (%s)",
                        rep.count,
                        rep.record.get("protocol"),
                        rep.record.get("source"),
                        rep.record.get("reason"),
                    )
        self.audit.sync()


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


def audit_path(facts: ConfigFacts) -> Path:
    """The audit file, relative paths taken from the state directory (gateway.state_dir)."""
    return facts.state_path(facts.config.writes.audit_log)


class WriteService:
    """Every upstream write goes through here: policy, then the meter, then the audit log."""

    def __init__(
        self, facts: ConfigFacts, table: TableReader, perform: PerformWrite, timeout: float | None = None
    ) -> None:
        self.facts = facts
        self.table = table
        self.perform = perform
        self.timeout = timeout if timeout is not None else facts.config.upstream.modbus_tcp.write_timeout
        self.audit = AuditLog(audit_path(facts))
        self.recorder = AuditRecorder(self.audit)
        self.counts: Counter[str] = Counter()  # decisions, for metrics
        self._unwritten: list[dict[str, Any]] = []  # audit records not yet written (disk full), oldest first
        self._lock = asyncio.Lock()
        self._refusals_logged = OnceLog(log)
        self._flush_timer: asyncio.TimerHandle | None = None

    def rights(self, meter_id: str) -> MeterRights:
        """What the configuration and the profile allow for a meter."""
        m = self.facts.config.meter(meter_id)
        prof = self.facts.profiles.get(m.profile)
        points = getattr(prof, "points", {})
        return MeterRights(
            meter_id=meter_id,
            mid=m.mid,
            allow_config_writes=m.allow_config_writes,
            allow_energy_reset=m.allow_energy_reset,
            supported_points=self.facts.meter_points(meter_id),
            declared_commands=frozenset(getattr(prof, "commands", {}) or {}),
            writable_config=frozenset(n for n, p in points.items() if getattr(p, "write", None) is not None),
            energy_reset_declared=getattr(prof, "energy_reset", None) is not None,
        )

    async def write(self, req: WriteRequest) -> WriteResult:
        """Decide, carry out and audit one write attempt."""
        cat = self.facts.catalogue
        if req.point not in cat or req.meter_id not in self.table.meter_ids:
            result = WriteResult(Decision.DENIED, f"unknown meter or point {req.meter_id}.{req.point}")
            self._record(req, result)
            return result
        pdef = cat.get(req.point)
        w = self.facts.config.writes
        allow = {"modbus": w.allow_modbus, "http": w.allow_http}.get(req.protocol, w.allow_bacnet)
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
                    reply = await asyncio.wait_for(self.perform(req.meter_id, req.point, value), self.timeout)
                    result = WriteResult(Decision.ACCEPTED, policy.reason, reply)
                except TimeoutError:
                    result = WriteResult(Decision.FAILED, policy.reason, f"no reply within {self.timeout} s")
                except DriverError as exc:
                    result = WriteResult(Decision.FAILED, policy.reason, str(exc))
        self._record(req, result)
        return result

    def refuse(self, req: WriteRequest, reason: str, decision: Decision = Decision.DENIED) -> WriteResult:
        """Audit an attempt refused before the policy (unknown unit or object, unmapped address, read-only property,
        wrong data type, unsupported function...)."""
        result = WriteResult(decision, reason)
        self._record(req, result)
        return result

    @staticmethod
    def _doc(req: WriteRequest) -> dict[str, Any]:
        value = req.value
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)  # JSON has no NaN or Infinity: keep the line valid
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "protocol": req.protocol,
            "source": req.source,
            "meter": req.meter_id,
            "point": req.point,
            "value": value,
        }
        if req.user:
            doc["user"] = req.user
        return doc

    def _durable(self, record: dict[str, Any]) -> None:
        """Append a record durably, after any kept from a failed attempt; raises OSError (the record is then kept)."""
        self._unwritten.append(record)
        self._flush()

    def _flush(self) -> None:
        while self._unwritten:
            self.recorder.write(self._unwritten[0])
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
        value = record["value"]
        reached_meter = result.decision in (Decision.ACCEPTED, Decision.FAILED)
        try:
            if reached_meter:
                self._durable(record)
            else:
                self._flush()  # older records first
                self.recorder.refusal(record)
                self._schedule_flush()
        except OSError as exc:  # kept in memory (bounded), written when the audit file takes records again
            if not reached_meter:
                self._unwritten.append(record)
            del self._unwritten[:-1000]
            log.error("cannot write the audit log %s: %s", self.audit.path, exc)
        msg = "write %s.%s=%s from %s/%s: %s (%s)"
        args = (req.meter_id, req.point, value, req.protocol, req.source, result.decision.value, result.reason)
        if reached_meter:
            log.log(logging.INFO if result.decision is Decision.ACCEPTED else logging.WARNING, msg, *args)
        else:
            # one line per client, decision and known point (a bounded set); unmapped targets share one kind
            known = req.point in self.facts.catalogue and req.meter_id in self.table.meter_ids
            kind = f"write {result.decision.value} " + (f"{req.meter_id}.{req.point}" if known else "unmapped target")
            self._refusals_logged.event(f"{req.protocol}/{req.source}", kind, msg, *args)

    def _schedule_flush(self) -> None:
        """Write coalesced records once their window closes, even when no further attempt comes."""
        if self._flush_timer is not None or not self.recorder.pending():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._flush_timer = loop.call_later(COALESCE_WINDOW / 2, self._flush_due)

    def _flush_due(self) -> None:
        self._flush_timer = None
        try:
            self.recorder.flush()
        except OSError as exc:
            log.error("cannot write the audit log %s: %s", self.audit.path, exc)
        self._schedule_flush()

    async def close(self) -> None:
        """Write what the audit file refused earlier and the coalesced records still open, then close it."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        try:
            self._flush()
            self.recorder.flush(force=True)
        except OSError as exc:
            log.error("audit log %s: %d records not written: %s", self.audit.path, len(self._unwritten), exc)
        finally:
            with contextlib.suppress(OSError):
                self.audit.close()
