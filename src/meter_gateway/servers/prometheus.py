"""Prometheus exporter and health endpoint: a custom collector over one snapshot of the table per scrape."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from .. import __version__
from ..core.catalogue import PointKind
from ..core.quality import Quality
from ..core.table import COMM_STATUS
from ..drivers.base import CYCLE_BUCKETS
from .base import Server
from .http import HttpServer, Response
from .model_routes import ModelRoutes

if TYPE_CHECKING:
    from ..ports import ConfigFacts, ServerPorts

P = "meter_gateway_"
log = logging.getLogger(__name__)

#: largest share of the event loop that building /metrics may take: a client scraping without pause (or many at
#: once) is slowed down instead of starving the poll tasks; every answer is still built from a fresh snapshot
SCRAPE_DUTY = 0.1

#: catalogue point -> (metric, extra labels, factor from the canonical unit to the metric's base unit)
MEASURES: dict[str, tuple[str, dict[str, str], float]] = {
    "Active_Energy_Import": ("active_energy_joules_total", {"direction": "import"}, 3.6e6),
    "Active_Energy_Export": ("active_energy_joules_total", {"direction": "export"}, 3.6e6),
    "Reactive_Energy_Import": ("reactive_energy_varh_total", {"direction": "import"}, 1000.0),
    "Reactive_Energy_Export": ("reactive_energy_varh_total", {"direction": "export"}, 1000.0),
    "Active_Power_Total": ("active_power_watts", {"phase": "total"}, 1000.0),
    "Active_Power_L1": ("active_power_watts", {"phase": "L1"}, 1000.0),
    "Active_Power_L2": ("active_power_watts", {"phase": "L2"}, 1000.0),
    "Active_Power_L3": ("active_power_watts", {"phase": "L3"}, 1000.0),
    "Reactive_Power_Total": ("reactive_power_var", {"phase": "total"}, 1000.0),
    "Apparent_Power_Total": ("apparent_power_va", {"phase": "total"}, 1000.0),
    "Voltage_L1_N": ("voltage_volts", {"phase": "L1-N"}, 1.0),
    "Voltage_L2_N": ("voltage_volts", {"phase": "L2-N"}, 1.0),
    "Voltage_L3_N": ("voltage_volts", {"phase": "L3-N"}, 1.0),
    "Voltage_L1_L2": ("voltage_volts", {"phase": "L1-L2"}, 1.0),
    "Voltage_L2_L3": ("voltage_volts", {"phase": "L2-L3"}, 1.0),
    "Voltage_L3_L1": ("voltage_volts", {"phase": "L3-L1"}, 1.0),
    "Current_L1": ("current_amperes", {"phase": "L1"}, 1.0),
    "Current_L2": ("current_amperes", {"phase": "L2"}, 1.0),
    "Current_L3": ("current_amperes", {"phase": "L3"}, 1.0),
    "Current_Neutral": ("current_amperes", {"phase": "N"}, 1.0),
    "Power_Factor_Total": ("power_factor_ratio", {"phase": "total"}, 1.0),
    "Power_Factor_L1": ("power_factor_ratio", {"phase": "L1"}, 1.0),
    "Power_Factor_L2": ("power_factor_ratio", {"phase": "L2"}, 1.0),
    "Power_Factor_L3": ("power_factor_ratio", {"phase": "L3"}, 1.0),
    "Frequency": ("frequency_hertz", {}, 1.0),
    "Demand_Peak_Current": ("demand_peak_watts", {}, 1000.0),
    "Demand_Peak_Timestamp": ("demand_peak_timestamp_seconds", {}, 1.0),
    "THD_Voltage_L1": ("thd_ratio", {"quantity": "voltage", "phase": "L1"}, 0.01),
    "THD_Current_L1": ("thd_ratio", {"quantity": "current", "phase": "L1"}, 0.01),
}
HELP = {
    "active_energy_joules_total": "Cumulative active energy (1 kWh = 3.6e6 J)",
    "reactive_energy_varh_total": "Cumulative reactive energy in var-hours",
    "active_power_watts": "Active power",
    "reactive_power_var": "Reactive power",
    "apparent_power_va": "Apparent power",
    "voltage_volts": "Voltage (phase to neutral or phase to phase)",
    "current_amperes": "Current",
    "power_factor_ratio": "Power factor (-1..1)",
    "frequency_hertz": "Grid frequency",
    "demand_peak_watts": "Maximum demand over the demand window",
    "demand_peak_timestamp_seconds": "Unix time of the maximum demand",
    "thd_ratio": "Total harmonic distortion (0..1)",
}


#: metric -> its points (in MEASURES' order)
BY_METRIC: dict[str, list[str]] = {}
for _point, (_metric, _extra, _factor) in MEASURES.items():
    BY_METRIC.setdefault(_metric, []).append(_point)

#: lines per chunk of the /metrics body: it is written family by family without sample objects, so a scrape of 250
#: meters holds a bounded number of objects at once (prometheus_client's families of all samples at once left the
#: process ~20 MiB larger after a scrape, and took 1.5-3x the CPU time)
PART = 1000

Row = tuple[list[str], float]


@dataclass
class Fam:
    """A counter or gauge family whose samples are produced on demand: rows of (label values, value)."""

    name: str  # without the prefix and, for a counter, without _total
    doc: str
    counter: bool
    labels: list[str]
    rows: Iterable[Row]

    def metric(self) -> Metric:
        """As a prometheus_client family (for collectors and registries)."""
        cls = CounterMetricFamily if self.counter else GaugeMetricFamily
        fam = cls(P + self.name, self.doc, labels=self.labels)
        for labels, value in self.rows:
            fam.add_metric(labels, value)
        return fam

    def text(self) -> Iterator[bytes]:
        """The family in the text format, exactly as prometheus_client's generate_latest writes it, in chunks."""
        name = P + self.name + ("_total" if self.counter else "")
        doc = self.doc.replace("\\", r"\\").replace("\n", r"\n")
        lines = [f"# HELP {name} {doc}\n# TYPE {name} {'counter' if self.counter else 'gauge'}\n"]
        order = sorted(range(len(self.labels)), key=self.labels.__getitem__)  # label names sorted, as there
        keys = [(self.labels[i], i) for i in order]
        for values, value in self.rows:
            if keys:
                labels = ",".join([f'{k}="{_escape(values[i])}"' for k, i in keys])
                lines.append(f"{name}{{{labels}}} {floatToGoString(value)}\n")
            else:
                lines.append(f"{name} {floatToGoString(value)}\n")
            if len(lines) >= PART:
                yield "".join(lines).encode()
                lines.clear()
        if lines:
            yield "".join(lines).encode()


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _counter_or_gauge(name: str, doc: str, labels: list[str], rows: Iterable[Row]) -> Fam:
    if name.endswith("_total"):
        return Fam(name[: -len("_total")], doc, True, labels, rows)
    return Fam(name, doc, False, labels, rows)


class _One:
    """A collector of one metric (to encode it with prometheus_client)."""

    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> list[Metric]:
        """The metric."""
        return [self.metric]


def exposition(items: Iterable[Fam | Metric]) -> Iterator[bytes]:
    """The text format of `items` as prometheus_client's generate_latest writes it, in chunks."""
    for item in items:
        if isinstance(item, Fam):
            yield from item.text()
        else:
            yield generate_latest(_One(item))  # type: ignore[arg-type]


class GatewayCollector:
    """Builds every metric from one consistent snapshot of the table and the bus statistics."""

    def __init__(self, ports: ServerPorts) -> None:
        self.ports = ports

    def describe(self) -> list[Metric]:
        """No fixed description: collect() is cheap and called per scrape only."""
        return []

    def collect(self) -> Iterator[Metric]:
        """All metrics for one scrape, as prometheus_client families."""
        for item in self.families():
            yield item.metric() if isinstance(item, Fam) else item

    def families(self) -> Iterator[Fam | Metric]:
        """All metrics for one scrape: the ones of a sample per point or meter as Fam (samples made when written)."""
        ports, table, facts = self.ports, self.ports.table, self.ports.facts
        snap = table.snapshot()
        now = time.time()
        meters = {m.id: m for m in facts.config.meters if m.id in snap}
        base = ["meter", "tenant"]
        good = Quality.GOOD
        order: dict[str, None] = {}  # value families in the order of their first good sample
        for vals in snap.values():
            for pname, (metric, _extra, _factor) in MEASURES.items():
                v = vals[pname]
                if v.quality is good and v.value is not None:
                    order.setdefault(metric)

        def values(metric: str) -> Iterator[Row]:
            for mid, vals in snap.items():
                tenant = meters[mid].tenant
                for pname in BY_METRIC[metric]:
                    v = vals[pname]
                    if v.quality is not good or v.value is None:
                        continue  # never exported as if fresh: stale, comm-failure and bad-data samples are omitted
                    _metric, extra, factor = MEASURES[pname]
                    # round away the binary noise of the unit conversion (e.g. 4.9107 kW -> 4910.7 W)
                    yield [mid, tenant, *extra.values()], round(float(v.value) * factor, 6)

        for metric in order:
            labels = base + list(MEASURES[BY_METRIC[metric][0]][1])
            yield _counter_or_gauge(metric, HELP[metric], labels, values(metric))

        def points(kind: PointKind | None, need_good: bool) -> Iterator[tuple[str, Any, Any]]:
            for mid, vals in snap.items():
                for p in facts.catalogue:
                    v = vals[p.name]
                    if v.quality is Quality.UNSUPPORTED or p.kind is PointKind.COMMAND or p.name == COMM_STATUS:
                        continue
                    if kind is not None and p.kind is not kind:
                        continue
                    if need_good and (v.quality is not good or v.value is None):
                        continue
                    yield mid, p, v

        yield Fam(
            "meter_up",
            "1 when the meter answers its polls, 0 in communication failure",
            False,
            ["meter", "tenant", "bus"],
            (
                ([mid, meters[mid].tenant, meters[mid].bus], 1.0 if vals[COMM_STATUS].value else 0.0)
                for mid, vals in snap.items()
            ),
        )
        yield Fam(
            "meter_profile_mismatch",
            "1 when the meter identifies as another model than its configured profile (its values may be wrong)",
            False,
            ["meter", "tenant", "profile"],
            (
                ([mid, meters[mid].tenant, meters[mid].profile], 1.0 if table.meter(mid).profile_warning else 0.0)
                for mid in snap
            ),
        )
        yield Fam(
            "point_age_seconds",
            "Seconds since the last good read of the point",
            False,
            ["meter", "point"],
            (
                ([mid, p.name], max(0.0, now - v.read_time))
                for mid, p, v in points(None, False)
                if v.read_time is not None
            ),
        )
        yield Fam(
            "point_quality",
            "1 for the current quality of each supported point",
            False,
            ["meter", "point", "quality"],
            (([mid, p.name, str(v.quality)], 1.0) for mid, p, v in points(None, False)),
        )
        yield Fam(
            "state",
            "Status and alarm points (0/1; Energy_Direction 0 import 1 export)",
            False,
            ["meter", "tenant", "point"],
            (([mid, meters[mid].tenant, p.name], float(v.value)) for mid, p, v in points(PointKind.STATUS, True)),
        )
        yield Fam(
            "config_value",
            "Configuration read from the meter, in the catalogue's unit",
            False,
            ["meter", "point", "unit"],
            (([mid, p.name, p.unit], float(v.value)) for mid, p, v in points(PointKind.CONFIG, True)),
        )

        alarms = CounterMetricFamily(P + "bad_data", "Readings rejected as bad data (not published)", labels=["meter"])
        losses = CounterMetricFamily(
            P + "comm_losses", "Times the meter went into communication failure", labels=["meter"]
        )
        for mid in snap:
            st = table.meter(mid)
            alarms.add_metric([mid], st.bad_data)
            losses.add_metric([mid], st.errors)
        yield from (alarms, losses)
        yield from self._bus_metrics()
        writes = CounterMetricFamily(P + "write_attempts", "Upstream write attempts by decision", labels=["decision"])
        ws = ports.writes()
        for decision in ("accepted", "denied", "out-of-range", "failed"):
            writes.add_metric([decision], ws.counts.get(decision, 0) if ws is not None else 0)
        yield writes
        rec = ports.status.journal
        if rec is not None:
            jok = GaugeMetricFamily(
                P + "journal_ok", "1 while the billing journal is written, 0 when it cannot be (or was damaged)"
            )
            jok.add_metric([], 1.0 if rec.state == "ok" else 0.0)
            yield jok
            full = GaugeMetricFamily(P + "journal_disk_full", "1 while the journal cannot be written for lack of space")
            full.add_metric([], 1.0 if rec.disk_full else 0.0)
            yield full
            if rec.last_checkpoint is not None:
                cps = GaugeMetricFamily(P + "journal_checkpoint_seq", "Sequence number of the last journal checkpoint")
                cps.add_metric([], float(rec.last_checkpoint["seq"]))
                yield cps
            alerts = GaugeMetricFamily(
                P + "consumption_alert",
                "1 while a consumption threshold is exceeded",
                labels=["scope", "name", "period"],
            )
            for scope, name, period, _kwh in rec.active_alerts(time.time()):
                alerts.add_metric([scope, name, period], 1.0)
            yield alerts
        fd = ports.status.foreign_registration()
        if fd is not None:
            reg = GaugeMetricFamily(
                P + "bacnet_foreign_registered",
                "1 while the BACnet device is registered as a foreign device with its BBMD",
                labels=["state"],
            )
            reg.add_metric([fd], 1.0 if fd == "registered" else 0.0)
            yield reg
        events = ports.status.bacnet_events()
        if events is not None:
            from .bacnet_events import event_metrics

            yield from event_metrics(events, P)
        discovery = ports.status.bacnet_discovery()
        if discovery is not None:
            from .bacnet_discovery import discovery_metrics

            yield from discovery_metrics(discovery, P)
        info = GaugeMetricFamily(P + "build_info", "Gateway version and name", labels=["version", "gateway"])
        info.add_metric([__version__, facts.config.gateway.name], 1.0)
        yield info

    def _bus_metrics(self) -> Iterator[Metric]:
        counters = {
            "transactions": ("bus_transactions", "Bus transactions (requests sent)"),
            "failed_transactions": ("bus_failed_transactions", "Transactions that failed after retries"),
            "timeouts": ("bus_timeouts", "Transactions without a reply in time"),
            "crc_errors": ("bus_crc_errors", "Replies with a bad CRC or corrupted frame"),
            "exceptions": ("bus_exceptions", "Protocol exception replies from meters"),
            "loop_stalls": ("bus_loop_stalls", "Transactions repeated because the gateway was busy past the timeout"),
            "link_resets": ("bus_link_resets", "M-Bus link resets (SND_NKE) before a readout"),
            "repeated_replies": ("bus_repeated_replies", "M-Bus telegrams sent again in place of the next one"),
            "incomplete_reads": ("bus_incomplete_reads", "M-Bus readouts stopped by max_telegrams"),
        }
        fams = {k: CounterMetricFamily(P + name, doc, labels=["bus"]) for k, (name, doc) in counters.items()}
        sent = CounterMetricFamily(P + "bus_bytes", "Bytes on the bus", labels=["bus", "direction"])
        busy = GaugeMetricFamily(P + "bus_busy_ratio", "Fraction of time the bus spent in transactions", labels=["bus"])
        hist = HistogramMetricFamily(
            P + "bus_poll_cycle_seconds",
            "Duration of a full poll cycle (every meter of the bus polled once)",
            labels=["bus"],
        )
        now = time.monotonic()
        for bus_id, runner in self.ports.status.buses.items():
            st = runner.driver.stats
            for k, fam in fams.items():
                fam.add_metric([bus_id], getattr(st, k))
            sent.add_metric([bus_id, "sent"], st.bytes_sent)
            sent.add_metric([bus_id, "received"], st.bytes_received)
            up_for = now - st.started if st.started else 0.0
            busy.add_metric([bus_id], min(1.0, st.busy_time / up_for) if up_for > 0 else 0.0)
            buckets = [(f"{b:g}", c) for b, c in zip(CYCLE_BUCKETS, st.cycle_bucket_counts, strict=True)]
            buckets.append(("+Inf", st.cycles))
            hist.add_metric([bus_id], buckets, st.cycle_sum)
        yield from fams.values()
        yield from (sent, busy, hist)


def _tls_context(facts: ConfigFacts):
    """The HTTPS context of upstream.http.tls (paths relative to the configuration's folder), or None."""
    import ssl

    from ..config import config_dir

    tls = facts.config.upstream.http.tls
    if tls is None:
        return None
    base = config_dir(facts.config_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(base / tls.cert, base / tls.key)
    except (OSError, ssl.SSLError) as exc:
        from .base import ServerStartError

        raise ServerStartError(f"prometheus: cannot use upstream.http.tls: {exc}") from exc
    return ctx


def health(ports: ServerPorts) -> tuple[int, dict]:
    """Health of buses and meters: 200 when ok or degraded, 503 when failed (see docs/metrics.md)."""
    table, parts = ports.table, ports.status
    meters = {}
    for mid in table.meter_ids:
        online = table.meter(mid).online
        meters[mid] = "ok" if online else ("starting" if online is None else "failed")
    buses = {}
    for bus_id, runner in parts.buses.items():
        states = [meters[m.id] for m in runner.meters]
        if all(s == "failed" for s in states):
            buses[bus_id] = "failed"
        elif any(s == "failed" for s in states):
            buses[bus_id] = "degraded"
        else:
            buses[bus_id] = "ok"
    if not parts.started or (buses and all(s == "failed" for s in buses.values())):
        status = "failed"
    elif any(s != "ok" for s in buses.values()):
        status = "degraded"
    else:
        status = "ok"
    doc = {"status": status, "buses": buses, "meters": meters}
    mismatches = {mid: table.meter(mid).profile_warning for mid in table.meter_ids}
    if any(mismatches.values()):  # a meter read with the wrong profile gives wrong values: not a healthy gateway
        doc["profile_mismatch"] = {mid: msg for mid, msg in mismatches.items() if msg}
        if doc["status"] == "ok":
            doc["status"] = "degraded"
    rec = parts.journal
    if rec is not None:
        doc["journal"] = {"state": rec.state, "problem": rec.problem, "error": rec.error, "disk_full": rec.disk_full}
        if rec.last_checkpoint is not None:
            doc["journal"]["checkpoint"] = rec.last_checkpoint
        if rec.state != "ok" and status == "ok":
            doc["status"] = "degraded"
    fd = parts.foreign_registration()
    if fd is not None:
        doc["bacnet_foreign_device"] = fd
        if fd in ("no-answer", "refused", "expired") and status == "ok":
            doc["status"] = "degraded"  # BACnet broadcasts do not reach other subnets
    return (503 if status == "failed" else 200), doc


class PrometheusServer(Server):
    """/metrics and /health over HTTP, answered inside the event loop (no scrape thread)."""

    name = "prometheus"

    def __init__(self, ports: ServerPorts) -> None:
        super().__init__(ports)
        from ..web.api import WebApi
        from ..web.auth import METRICS, Auth

        cfg = self.facts.config.upstream.prometheus
        http_cfg = self.facts.config.upstream.http
        self.collector = GatewayCollector(ports)
        self.auth = Auth.from_config(http_cfg, tls=http_cfg.tls is not None, body_timeout=cfg.idle_timeout)
        self.http = HttpServer(
            cfg.bind,
            cfg.port,
            "prometheus",
            max_connections=cfg.max_connections,
            max_per_address=cfg.max_connections_per_address,
            idle_timeout=cfg.idle_timeout,
            max_body=http_cfg.max_body,
            ssl_context=_tls_context(self.facts),
            authorize=self.auth.authorize,
        )
        self.http.route("/metrics", self._metrics, METRICS)
        self.http.route("/health", self._health)
        self.http.route("/export", self._export, "viewer")
        self.http.route("/values", self._values, "viewer")
        self.http.route("/trace", self._trace, "admin")
        self.http.route("/scan", self._scan, "admin")
        ModelRoutes(self.facts).add_to(self.http)  # /model/brick.ttl, /model/haystack.json|zinc, /openapi.json
        self.web = WebApi(ports, self.http, self.auth)  # /, /login, /logout, /api/*, /ui/
        self.web.add_routes()
        self._bound: tuple[str, int] | None = None
        self._scrape_lock = asyncio.Lock()
        self._exports = 0  # exports running
        self._next_scrape = 0.0  # loop time before which the next collection waits

    async def _metrics(self, _query) -> Response:
        loop = asyncio.get_running_loop()
        async with self._scrape_lock:  # one collection at a time, spaced to keep within SCRAPE_DUTY
            wait = self._next_scrape - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            t0 = loop.time()
            body = b"".join(exposition(self.collector.families()))
            t1 = loop.time()
            self._next_scrape = t1 + (t1 - t0) * (1.0 / SCRAPE_DUTY - 1.0)
        return Response(200, body, CONTENT_TYPE_LATEST)

    def _health(self, _query) -> Response:
        code, doc = health(self.ports)
        return Response(code, (json.dumps(doc, indent=2) + "\n").encode(), "application/json")

    def _values(self, query) -> Response:
        """Live values with quality and age: ?meter=ID (repeatable; all meters without it)."""
        from ..live import values_document

        doc = values_document(self.table, self.facts.config.gateway.name, query.get("meter"))
        return Response(200, (json.dumps(doc, indent=1) + "\n").encode(), "application/json")

    def _trace(self, query) -> Response:
        """Frames of one bus for commissioning: ?bus=ID[&after=SEQ] (see `meter-gateway trace`)."""
        from ..live import trace_document

        lines = self.ports.lines
        bus_id = query.get("bus", [""])[0]
        if bus_id not in lines.bus_ids():
            return Response(404, f"no polled bus {bus_id!r}; buses: {', '.join(lines.bus_ids())}\n".encode())
        try:
            after = int(query.get("after", ["0"])[0])
        except ValueError:
            return Response(400, b"after must be a number\n")
        doc = trace_document(bus_id, lines.driver(bus_id), lines.bus_type(bus_id), after)
        return Response(200, (json.dumps(doc) + "\n").encode(), "application/json")

    async def _scan(self, query) -> Response:
        """Scan a bus between polls: ?bus=ID[&first=N&last=N&secondary=0] (admin)."""
        from ..live import scan_document

        lines = self.ports.lines
        bus_id = query.get("bus", [""])[0]
        if bus_id not in lines.bus_ids():
            return Response(404, f"no polled bus {bus_id!r}; buses: {', '.join(lines.bus_ids())}\n".encode())
        try:
            first = int(query["first"][0]) if "first" in query else None
            last = int(query["last"][0]) if "last" in query else None
        except ValueError:
            return Response(400, b"first and last must be numbers\n")
        found = await lines.scan(bus_id, first, last, query.get("secondary", ["1"])[0] != "0")
        return Response(200, (json.dumps(scan_document(bus_id, found)) + "\n").encode(), "application/json")

    async def _export(self, query) -> Response:
        """Billing export from the journal: ?from=2026-11-01&to=2026-12-01[&tenant=T][&format=csv|json|xml].

        Computed in a worker thread on its own read-only connection and streamed; at most MAX_CONCURRENT at once.
        """
        rec = self.ports.status.journal
        if rec is None:
            return Response(404, b"the journal is not enabled (journal.enabled: true)\n")
        from ..journal.dates import parse_local
        from ..journal.export import MAX_CONCURRENT, ExportRequestError, check_request

        cfg = self.facts.config
        try:
            start = parse_local(query.get("from", [""])[0], cfg.gateway.timezone)
            end = parse_local(query.get("to", [""])[0], cfg.gateway.timezone)
            check_request(cfg, start, end, query.get("tenant", [None])[0])
        except ExportRequestError as exc:
            return Response(exc.status, f"{exc}\n".encode())
        except ValueError as exc:
            return Response(400, f"{exc}; use ?from=2026-11-01&to=2026-12-01\n".encode())
        fmt = query.get("format", ["json"])[0]
        if fmt not in ("json", "csv", "xml"):
            return Response(400, b"format: json, csv or xml\n")
        if self._exports >= MAX_CONCURRENT:
            return Response(429, f"{MAX_CONCURRENT} exports are running; try again when one is done\n".encode())
        self._exports += 1
        stream = self._export_stream(start, end, query.get("tenant", [None])[0], fmt)
        try:
            first = await anext(stream)
        except BaseException as exc:
            self._exports -= 1
            await stream.aclose()
            if isinstance(exc, StopAsyncIteration):
                return Response(500, b"export produced nothing\n")
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.error("export: the journal cannot be read: %s", exc)
            return Response(503, f"the journal cannot be read: {exc}\n".encode())
        ctype = {"csv": "text/csv; charset=utf-8", "xml": "application/xml"}.get(fmt, "application/json")
        return Response(200, first, ctype, stream=self._release(stream))

    async def _release(self, stream):
        try:
            async for chunk in stream:
                yield chunk
        finally:
            self._exports -= 1
            await stream.aclose()

    async def _export_stream(self, start: int, end: int, tenant: str | None, fmt: str):
        """Chunks produced by a worker thread through a small queue (back-pressure: the thread waits)."""
        from ..journal.export import csv_chunks, iter_export, json_chunks
        from ..journal.recorder import journal_path
        from ..journal.verify import open_readonly
        from ..journal.xml import to_xml

        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue(maxsize=4)
        stop = threading.Event()
        path = journal_path(self.facts)
        cfg = self.facts.config
        done = object()

        def put(item) -> None:
            while not stop.is_set():
                try:
                    asyncio.run_coroutine_threadsafe(q.put(item), loop).result(timeout=5)
                    return
                except TimeoutError:
                    continue

        def work() -> None:
            try:
                with open_readonly(path) as db:
                    if fmt == "xml":  # one document (validated against data/billing-export.xsd), built whole
                        put(to_xml(db, cfg, start, end, tenant, journal_path=path))
                        return
                    chunks = csv_chunks if fmt == "csv" else json_chunks
                    for chunk in chunks(iter_export(db, cfg, start, end, tenant, path)):
                        if stop.is_set():
                            return
                        put(chunk.encode())
            except Exception as exc:  # reported to the consumer, logged there once
                put(exc)
            finally:
                put(done)

        worker = loop.run_in_executor(None, work)
        try:
            while True:
                item = await q.get()
                if item is done:
                    break
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stop.set()
            while not q.empty():
                q.get_nowait()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(worker), 10)

    async def start(self) -> None:
        """Bind and serve; write the control token for the local CLI."""
        self._bound = await self.http.start()
        if self.facts.config.upstream.http.control_token and self.facts.config_path is not None:
            self.auth.write_control_token(self.facts.state_dir)
        else:  # a gateway built in a program (tests, `read`): the token stays in memory (self.auth.control_token)
            self.auth.new_control_token()
        await self.web.start()

    async def stop(self) -> None:
        """Stop serving; remove the control token."""
        await self.web.stop()
        self.auth.remove_control_token()
        await self.http.stop()

    def address(self) -> tuple[str, int] | None:
        """The bound address."""
        return self._bound

    def meters_changed(self, meter_ids: set[str]) -> bool:
        """Reload: every scrape reads the gateway's current meters, nothing to rebuild."""
        return True
