"""Takes index readings of every energy point at wall-clock boundaries (plus daily and monthly closings)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from ..core.quality import Quality
from .store import JournalError, JournalStore, Reading

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


class Recorder:
    """Writes journal rows from the point table; `tick(now)` is driven by a loop or by tests with virtual time."""

    def __init__(
        self,
        gateway,
        store: JournalStore,
        clock: Callable[[], float] = time.time,
        clock_sync: Callable[[], str] = clock_sync_state,
    ) -> None:
        self.gw = gateway
        self.cfg = gateway.config.journal
        self.store = store
        self.clock = clock
        self.clock_sync = clock_sync
        self.tz = ZoneInfo(gateway.config.gateway.timezone)
        self.interval = self.cfg.interval
        self.energy_points = [p for p in gateway.catalogue if p.is_energy]
        self.next_boundary: int | None = None
        self.error: str = ""  # last write error (disk full...), exposed as an alarm
        self.alerts: dict[tuple[str, str, str], float] = {}  # (scope, name, period) -> kWh when it fired
        self._sync_state = "unknown"

    # -- boundaries ------------------------------------------------------------------------------------
    def _kinds(self, boundary: int) -> list[str]:
        local = datetime.fromtimestamp(boundary, self.tz)
        kinds = ["interval"]
        if local.hour == 0 and local.minute == 0 and local.second == 0:
            kinds.append("daily")
            if local.day == 1:
                kinds.append("monthly")
        return kinds

    def start_catch_up(self, now: float) -> None:
        """After a start: record every boundary passed while the gateway was down as missing."""
        current = int(now // self.interval * self.interval)
        rows = []
        for m in self.gw.config.meters:
            if not m.enabled or m.id not in self.gw.table.meter_ids:
                continue
            for p in self.energy_points:
                if not self.gw.table.supports(m.id, p.name):
                    continue
                last = self.store.last_boundary(m.id, p.name, "interval")
                if last is None:
                    continue
                b = max(last + self.interval, current - MAX_BACKFILL * self.interval)
                while b <= current:
                    rows += [self._row(m, p, b, kind, None) for kind in self._kinds(b)]
                    b += self.interval
        if rows:
            log.warning("journal: %d boundary readings missed while the gateway was stopped", len(rows))
            self._append(rows)
        self.next_boundary = current + self.interval

    def tick(self, now: float) -> None:
        """Record every boundary that has passed by `now`."""
        if self.next_boundary is None:
            self.start_catch_up(now)
            return
        while now >= self.next_boundary:
            self.record(self.next_boundary, now)
            self.next_boundary += self.interval

    def record(self, boundary: int, now: float) -> None:
        """One boundary: the latest good reading of every energy point, or 'missing'."""
        self._sync_state = self.clock_sync()
        rows = []
        for m in self.gw.config.meters:
            if not m.enabled or m.id not in self.gw.table.meter_ids:
                continue
            max_age = max(2.0 * m.interval("energy"), 2.0 * self.interval)
            for p in self.energy_points:
                if not self.gw.table.supports(m.id, p.name):
                    continue
                v = self.gw.table.get(m.id, p.name)
                fresh = (
                    v.quality is Quality.GOOD
                    and v.read_time is not None
                    and v.value is not None
                    and boundary - max_age <= v.read_time <= now
                )
                rows += [self._row(m, p, boundary, kind, v if fresh else None) for kind in self._kinds(boundary)]
        self._append(rows)
        self._check_alerts(boundary)

    def _row(self, m, p, boundary: int, kind: str, v) -> Reading:
        prof = self.gw.profiles.get(m.profile)
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

    def _append(self, rows: list[Reading]) -> None:
        try:
            self.store.append(rows)
            if self.error:
                log.info("journal: writing again after: %s", self.error)
            self.error = ""
        except JournalError as exc:
            if not self.error:
                log.error("journal: readings NOT recorded: %s", exc)
            self.error = str(exc)

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
                for m in self.gw.config.meters
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
        for (scope, name, period_key), kwh in self.alerts.items():
            period, start = period_key.split(":")
            if int(start) == self._period_start(int(now), period):
                out.append((scope, name, period, kwh))
        return out

    # -- running -----------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Tick at every boundary (and prune once a day) until cancelled."""
        last_prune = 0.0
        while True:
            now = self.clock()
            self.tick(now)
            if now - last_prune > 86400:
                last_prune = now
                try:
                    self.store.prune(int(now - self.cfg.retention_days * 86400))
                except JournalError as exc:
                    log.error("journal: retention pruning failed: %s", exc)
            nb = self.next_boundary or now + 1
            await asyncio.sleep(min(max(0.05, nb - self.clock() + 0.5), 60.0))


def journal_path(gateway) -> Path:
    """The SQLite file, relative paths taken from the state directory (gateway.state_dir)."""
    from ..config import state_path

    return state_path(gateway.config, gateway.config_path, gateway.config.journal.path)


__all__ = ["Recorder", "clock_sync_state", "journal_path"]
