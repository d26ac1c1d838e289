"""Takes index readings of every energy point at wall-clock boundaries (plus daily and monthly closings)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from ..core.quality import Quality
from .store import JournalError, JournalStore, Reading, event, open_journal

if TYPE_CHECKING:
    from ..ports import ConfigFacts, TableReader

log = logging.getLogger(__name__)
MAX_BACKFILL = 2000  # missing boundaries recorded after a long stop, per meter and point


def clock_sync_state() -> str:
    """Whether the system clock is NTP-synchronised (timedatectl), 'unknown' when it cannot be told."""
    try:
        out = subprocess.run(
            ["timedatectl", "show", "-p", "NTPSynchronized", "--value"], capture_output=True, text=True, timeout=2
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return {"yes": "synchronized", "no": "unsynchronized"}.get(out, "unknown")


STEP_TOLERANCE = 5.0  # s: wall clock moving this much more or less than the monotonic clock is a step
CATCH_UP_BATCH = 50  # boundaries collected per tick: a long catch-up is spread over ticks, the loop keeps going
MAX_PENDING = 200_000  # rows kept in memory (as missing) while the journal cannot be written
AUDIT_CHECKPOINT_EVERY = 3600.0  # s between checkpoints copied into the audit log
SYNC_STATE_EVERY = 60.0  # s between clock synchronisation queries


class Recorder:
    """Writes journal rows from the point table.

    `collect(now)` runs on the event loop (reads the table, cheap, bounded); `commit(rows)` does the file work and
    runs in a worker thread from `run()`. `tick(now)` does both, for tests driving virtual time.
    """

    def __init__(
        self,
        facts: ConfigFacts,
        table: TableReader,
        store: JournalStore | None,
        clock: Callable[[], float] = time.time,
        clock_sync: Callable[[], str] = clock_sync_state,
        monotonic: Callable[[], float] = time.monotonic,
        audit: Path | None = None,
    ) -> None:
        self.facts = facts
        self.table = table
        self.cfg = facts.config.journal
        self.store = store
        self.clock = clock
        self.clock_sync = clock_sync
        self.monotonic = monotonic
        self.audit = audit
        self.tz = ZoneInfo(facts.config.gateway.timezone)
        self.interval = self.cfg.interval
        self.energy_points = [p for p in facts.catalogue if p.is_energy]
        self.next_boundary: int | None = None
        self.error: str = ""  # last write error (disk full...), exposed as an alarm
        self.problem: str = ""  # the journal could not be opened, or was damaged and kept aside
        self.disk_full = False
        self.alerts: dict[tuple[str, str, str], float] = {}  # (scope, name, period) -> kWh when it fired
        self.last_checkpoint: dict | None = None
        self._sync_state = "unknown"
        self._sync_at = -1e18
        self._pending: list[Reading] = []  # rows not written (journal unwritable), already turned into 'missing'
        self._pending_since: float | None = None
        self._pending_dropped = 0
        self._events: list[Reading] = []  # events waiting for the next commit
        self._last_wall: float | None = None
        self._last_mono = 0.0
        self._audit_cp_at = -1e18
        self._last_values: dict[tuple[str, str], Decimal] = {}
        if store is not None:
            self._adopt(store)

    def _adopt(self, store: JournalStore) -> None:
        self.store = store
        self._last_values = {k: Decimal(v) for k, v in store.last_values.items() if v}

    @property
    def state(self) -> str:
        """ok | degraded (damaged journal kept aside, write error, disk full) | unavailable (no journal open)."""
        if self.store is None:
            return "unavailable"
        return "degraded" if (self.error or self.problem) else "ok"

    # -- boundaries ------------------------------------------------------------------------------------
    def _kinds(self, boundary: int) -> list[str]:
        local = datetime.fromtimestamp(boundary, self.tz)
        kinds = ["interval"]
        if local.hour == 0 and local.minute == 0 and local.second == 0:
            kinds.append("daily")
            if local.day == 1:
                kinds.append("monthly")
        return kinds

    def _series(self):
        for m in self.facts.config.meters:
            if not m.enabled or m.id not in self.table.meter_ids:
                continue
            for p in self.energy_points:
                if self.table.supports(m.id, p.name):
                    yield m, p

    def start_catch_up(self, now: float) -> list[Reading]:
        """After a start: every boundary passed while the gateway was down, as missing rows."""
        current = int(now // self.interval * self.interval)
        rows: list[Reading] = []
        last_any = None
        for m, p in self._series():
            last = self.store.last_boundary(m.id, p.name, "interval") if self.store is not None else None
            if last is None:
                continue
            last_any = max(last_any or last, last)
            b = max(last + self.interval, current - MAX_BACKFILL * self.interval)
            while b <= current:
                rows += [self._row(m, p, b, kind, None) for kind in self._kinds(b)]
                b += self.interval
        if rows:
            log.warning("journal: %d boundary readings missed while the gateway was stopped", len(rows))
        # a clock set back while the gateway was down: start after the last boundary recorded, never before
        self.next_boundary = max(current + self.interval, (last_any or 0) + self.interval)
        if last_any is not None and last_any > now + self.interval:
            self._events.append(
                event(
                    "clock_step",
                    int(now),
                    f"the clock is {last_any - now:.0f} s behind the last boundary recorded; "
                    "recording resumes at the next boundary after it",
                )
            )
        return rows

    def _check_clock(self, now: float) -> None:
        mono = self.monotonic()
        if self._last_wall is not None:
            step = (now - self._last_wall) - (mono - self._last_mono)
            if abs(step) > STEP_TOLERANCE:
                log.warning("journal: the wall clock stepped %+.1f s", step)
                self._events.append(
                    event("clock_step", int(now), f"{step:+.1f} s (from {self._last_wall:.0f} to {now:.0f})")
                )
        self._last_wall, self._last_mono = now, mono

    def collect(self, now: float) -> list[Reading]:
        """Rows due by `now` (at most CATCH_UP_BATCH boundaries); call again while `behind(now)`."""
        self._check_clock(now)
        if self.next_boundary is None:
            rows = self.start_catch_up(now)
        else:
            rows = []
            n = 0
            oldest = int(now // self.interval * self.interval) - MAX_BACKFILL * self.interval
            if self.next_boundary < oldest:  # as after a stop: beyond MAX_BACKFILL, one event instead of rows
                skipped = (oldest - self.next_boundary) // self.interval
                rows.append(
                    event(
                        "boundaries_skipped",
                        int(now),
                        f"{skipped} boundaries from {self.next_boundary} to {oldest - self.interval} not recorded "
                        f"one by one (more than {MAX_BACKFILL} passed at once)",
                    )
                )
                self.next_boundary = oldest
            while now >= self.next_boundary and n < CATCH_UP_BATCH:
                rows += self.rows_at(self.next_boundary, now)
                self.next_boundary += self.interval
                n += 1
        events, self._events = self._events, []
        return events + rows

    def behind(self, now: float) -> bool:
        """Whether boundaries are still due (a catch-up spread over several ticks)."""
        return self.next_boundary is not None and now >= self.next_boundary

    def tick(self, now: float) -> None:
        """Record every boundary that has passed by `now` (synchronously: tests and tools)."""
        self.refresh_sync_state(now)
        self.commit(self.collect(now))
        while self.behind(now):
            self.commit(self.collect(now))

    def record(self, boundary: int, now: float) -> None:
        """One boundary, collected and committed at once."""
        self.commit(self.rows_at(boundary, now))

    def refresh_sync_state(self, now: float) -> None:
        """Ask whether the clock is synchronised (a subprocess: call it from a worker thread), at most once a minute."""
        if abs(now - self._sync_at) >= SYNC_STATE_EVERY:
            self._sync_at = now
            self._sync_state = self.clock_sync()

    def rows_at(self, boundary: int, now: float) -> list[Reading]:
        """One boundary: the latest good reading of every energy point, or 'missing'."""
        rows: list[Reading] = []
        grace = min(5.0, self.interval / 2)
        for m, p in self._series():
            max_age = max(2.0 * m.interval("energy"), 2.0 * self.interval)
            v = self.table.get(m.id, p.name)
            # a value read after the boundary (beyond a poll's grace) is not the index at the boundary: after a
            # stall or a clock step forward, the boundaries passed meanwhile are missing, not filled in
            fresh = (
                v.quality is Quality.GOOD
                and v.read_time is not None
                and v.value is not None
                and boundary - max_age <= v.read_time <= min(now, boundary + grace)
            )
            rows += [self._row(m, p, boundary, kind, v if fresh else None) for kind in self._kinds(boundary)]
            if fresh:
                self._index_check(m.id, p.name, rows[-1], boundary)
        return rows

    def _index_check(self, meter: str, point: str, row: Reading, boundary: int) -> None:
        new = Decimal(row.value)
        old = self._last_values.get((meter, point))
        if old is not None and new < old:
            log.warning("journal: meter %s %s went down from %s to %s: meter replaced or reset", meter, point, old, new)
            self._events.append(event("index_decrease", boundary, f"{point} {old} -> {new}", meter=meter))
        self._last_values[(meter, point)] = new

    def _row(self, m, p, boundary: int, kind: str, v) -> Reading:
        prof = self.facts.profiles.get(m.profile)
        value = "" if v is None else str(Decimal(str(v.value)).quantize(Decimal(str(p.resolution or 0.01))))
        return Reading(
            meter=m.id,
            tenant=m.tenant,
            serial=m.serial_number,
            model=f"{prof.manufacturer} {prof.model}",
            mid=m.mid,
            point=p.name,
            kind=kind,
            boundary=boundary,
            status="ok" if v is not None else "missing",
            raw="" if v is None or v.raw is None else str(list(v.raw)),
            value=value,
            unit=p.unit,
            profile=prof.name,
            profile_version=prof.version,
            read_time=None if v is None else v.read_time,
            clock_sync=self._sync_state,
            quality=str(v.quality) if v is not None else "missing",
        )

    def commit(self, rows: list[Reading]) -> None:
        """Write rows (plus any kept from a failed write, as missing), a checkpoint, then check alerts."""
        if not rows and not self._pending:
            return
        if self.store is None:
            self._keep(rows, "no journal open")
            return
        batch = rows
        if self._pending:
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._pending_since or 0))
            detail = f"journal not writable since {since} ({self.error}): {len(self._pending)} rows recorded missing"
            if self._pending_dropped:
                detail += f", {self._pending_dropped} more beyond the memory bound not recorded at all"
            batch = [event("write_error", int(self.clock()), detail), *self._pending, *rows]
        try:
            self.store.append(batch)
        except JournalError as exc:
            self._keep(rows, str(exc))
            return
        self._pending, self._pending_since, self._pending_dropped = [], None, 0
        try:
            self.last_checkpoint = self.store.checkpoint()
        except JournalError as exc:  # the rows are in; the next checkpoint will vouch for them
            if not self.error:
                log.error("journal: %s", exc)
            self.error = str(exc)
            self.disk_full = "space" in self.error.lower()
            return
        if self.error:
            log.info("journal: writing again after: %s", self.error)
        self.error, self.disk_full = "", False
        self._audit_checkpoint()
        boundaries = sorted({r.boundary for r in rows if r.kind == "interval"})
        for b in boundaries[-1:]:
            self._check_alerts(b)

    def _keep(self, rows: list[Reading], error: str) -> None:
        if not self.error:
            log.error("journal: readings NOT recorded (kept as missing until it can be written): %s", error)
        self.error = error
        self.disk_full = "full" in error.lower() or "space" in error.lower()
        if self._pending_since is None:
            self._pending_since = self.clock()
        for r in rows:
            if r.kind == "event":
                self._pending.append(r)
            else:
                self._pending.append(replace(r, status="missing", value="", raw="", read_time=None, quality="missing"))
        if len(self._pending) > MAX_PENDING:
            self._pending_dropped += len(self._pending) - MAX_PENDING
            del self._pending[:-MAX_PENDING]

    def _audit_checkpoint(self, force: bool = False) -> None:
        """Copy the last checkpoint into the audit log (a second place), hourly and at start and stop."""
        now = self.clock()
        if self.audit is None or self.last_checkpoint is None:
            return
        if not force and now - self._audit_cp_at < AUDIT_CHECKPOINT_EVERY:
            return
        self._audit_cp_at = now
        rec = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "event": "journal_checkpoint",
            "checkpoint": self.last_checkpoint,
        }
        try:
            fd = os.open(self.audit, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            try:
                os.write(fd, (json.dumps(rec, separators=(",", ":")) + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("journal: cannot copy the checkpoint into the audit log %s: %s", self.audit, exc)

    # -- alerts ----------------------------------------------------------------------------------------
    def _period_start(self, boundary: int, period: str) -> int:
        local = datetime.fromtimestamp(boundary, self.tz)
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if period == "month":
            start = start.replace(day=1)
        return int(start.timestamp())

    def consumption(self, meters: list[str], since: int, until: int) -> float:
        """kWh imported by the meters between two boundaries, from the journal."""
        total = Decimal(0)
        for mid in meters:
            rows = [
                r
                for r in self.store.rows(meter=mid, since=since, until=until, kind="interval")
                if r["point"] == "Active_Energy_Import" and r["status"] == "ok"
            ]
            if len(rows) >= 2:
                total += Decimal(rows[-1]["value"]) - Decimal(rows[0]["value"])
        return float(total)

    def _check_alerts(self, boundary: int) -> None:
        for rule in self.cfg.alerts:
            meters = [
                m.id
                for m in self.facts.config.meters
                if (rule.meter and m.id == rule.meter) or (rule.tenant and m.tenant == rule.tenant)
            ]
            start = self._period_start(boundary, rule.period)
            used = self.consumption(meters, start, boundary)
            key = ("meter" if rule.meter else "tenant", rule.meter or rule.tenant, f"{rule.period}:{start}")
            if used > rule.kwh and key not in self.alerts:
                self.alerts[key] = used
                log.warning(
                    "consumption alert: %s %s used %.2f kWh this %s (threshold %.2f kWh)",
                    key[0],
                    key[1],
                    used,
                    rule.period,
                    rule.kwh,
                )

    def active_alerts(self, now: float) -> list[tuple[str, str, str, float]]:
        """Alerts of the current day/month: (scope, name, period, kWh)."""
        out = []
        for (scope, name, period_key), kwh in list(self.alerts.items()):
            period, start = period_key.split(":")
            if int(start) == self._period_start(int(now), period):
                out.append((scope, name, period, kwh))
        return out

    # -- running -----------------------------------------------------------------------------------------
    def _open(self, path: Path) -> None:
        store, events, problem = open_journal(path, self.clock)
        self._adopt(store)
        self._events += events
        if problem:
            self.problem = problem
            log.error("journal: %s", problem)

    async def run(self, path: Path | None = None) -> None:
        """Open the journal (when not given one), tick at every boundary, prune once a day, until cancelled.

        File work runs in a worker thread: a slow disk, a catch-up or a prune never holds the event loop.
        """
        last_prune = 0.0
        retry_at = 0.0
        try:
            while True:
                now = self.clock()
                if self.store is None and path is not None and self.monotonic() >= retry_at:
                    failed_before = bool(self.problem)
                    try:
                        self.problem = ""
                        await asyncio.to_thread(self._open, path)
                    except (JournalError, OSError, ValueError) as exc:
                        if not failed_before:
                            log.error("journal: cannot open %s: %s (polling and upstreams continue)", path, exc)
                        self.problem = f"cannot open {path}: {exc}"
                        retry_at = self.monotonic() + 60.0
                await asyncio.to_thread(self.refresh_sync_state, now)
                rows = self.collect(now)
                await asyncio.to_thread(self.commit, rows)
                if self.store is not None and now - last_prune > 86400:
                    last_prune = now
                    try:
                        await asyncio.to_thread(self.store.prune, int(now - self.cfg.retention_days * 86400))
                    except JournalError as exc:
                        log.error("journal: retention pruning failed: %s", exc)
                if self.behind(self.clock()):
                    await asyncio.sleep(0)  # catching up: other tasks run between batches
                    continue
                nb = self.next_boundary or now + 1
                # bounded: a clock set back must not put the recorder to sleep for as long as the step
                await asyncio.sleep(min(max(0.05, nb - self.clock() + 0.2), 5.0))
        finally:
            if self.store is not None:
                self._audit_checkpoint(force=True)


def journal_path(facts: ConfigFacts) -> Path:
    """The SQLite file, relative paths taken from the state directory (gateway.state_dir)."""
    return facts.state_path(facts.config.journal.path)


__all__ = ["Recorder", "clock_sync_state", "journal_path"]
