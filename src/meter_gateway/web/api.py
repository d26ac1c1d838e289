"""The JSON / server-sent-events API of the web pages (contract in data/openapi.json, docs/http.md)."""

from __future__ import annotations

import array
import asyncio
import contextlib
import csv
import io
import json
import logging
import math
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .. import __version__
from ..core.quality import Quality
from ..servers.http import HttpServer
from .auth import IDENTITY, Auth, Identity

if TYPE_CHECKING:
    from ..ports import ServerPorts

log = logging.getLogger(__name__)

#: points kept in the recent history (for the power and energy chart), one sample per HISTORY_STEP seconds
HISTORY_POINTS = ("Active_Power_Total", "Active_Energy_Import", "Active_Energy_Export")
HISTORY_STEP = 10.0
HISTORY_HOURS = 6.0
MAX_HISTORY_HOURS = 24 * 31  # from the journal (energies) beyond the recent history
STREAM_INTERVAL = 0.5  # at most two events a second per stream
HEARTBEAT = 15.0  # an SSE comment line this often keeps proxies and browsers connected
OVERVIEW_REFRESH = 5.0  # bus counters move without table changes: the overview is sent at least this often
QUALITY_CODES = {q: i for i, q in enumerate(Quality)}
QUALITY_NAMES = list(Quality)
SECRET = "(hidden)"


_ABSENT = 255  # quality code of a round in which a point was not sampled (a gap: no sample in the answer)
_GOOD = QUALITY_CODES[Quality.GOOD]
_I32 = 2**31  # int32 decimals hold |m| < _I32; -_I32 marks "no value"
_D16_MAX = 2**15 - 1  # int16 steps hold |d| <= _D16_MAX; -2**15 marks "no value"
_D16, _F32, _DEC, _F64 = "h", "f", "i", "d"
#: value encodings from the most compact; a ring only moves down this list (at most len - 1 recodings)
ENCODINGS: tuple[tuple[str, int], ...] = (
    *((_D16, k) for k in range(10)),
    (_F32, 0),
    *((_DEC, k) for k in range(10)),
    (_F64, 0),
)


def _dec(x: float, div: float) -> int | None:
    """x as an int32 m with m / div == x exactly (div a power of ten), else None."""
    if not math.isfinite(x) or (x == 0 and math.copysign(1.0, x) < 0):
        return None
    m = round(x * div)
    return m if -_I32 < m < _I32 and m / div == x else None


def _fits(enc: str, div: float, values: list[float]) -> bool:
    """Whether `values` (oldest first, NaN for none) are held exactly in encoding `enc` (stops at the first not)."""
    if enc == _F64:
        return True
    prev = None
    for x in values:
        if math.isnan(x):
            continue
        if enc == _F32:
            if array.array("f", (x,))[0] != x:
                return False
            continue
        m = _dec(x, div)
        if m is None:
            return False
        if enc == _D16:
            if prev is not None and abs(m - prev) > _D16_MAX:
                return False
            prev = m
    return True


class Ring:
    """One point's samples, one per round of its RecentHistory (which keeps the rounds' times once for all rings).

    Values are kept exactly, in the most compact of: int16 steps between decimals m / 10**k (while every value is
    one and steps are small, e.g. energies of 0.01 kWh registers), float32 (while every value is one), int32
    decimals or float64; a ring moves to a wider encoding when a value needs it and stays there. Qualities take a
    byte a sample only while the window holds a sample that is not good. Grows sample by sample up to `size`,
    then overwrites the oldest.
    """

    __slots__ = ("bad", "base", "div", "first", "last", "level", "prev", "q", "size", "v")

    def __init__(self, size: int, first: int) -> None:
        self.size = size
        self._reset(first)

    def _reset(self, first: int) -> None:
        self.first = first  # round of the ring's slot 0
        self.last = first - 1  # round of the newest sample
        self.level = 0  # index in ENCODINGS
        self.div = 1.0
        self.v = array.array(_D16)
        self.base = 0  # int16 steps: the decimal of the oldest sample (or of the first one with a value after it)
        self.prev: int | None = None  # int16 steps: the decimal of the newest sample with a value
        self.q: bytearray | None = None  # None: every sample in the window is good
        self.bad = first - 1  # newest round whose sample is not good (or absent)

    def __len__(self) -> int:
        return len(self.v)

    @property
    def encoding(self) -> str:
        """The value encoding: h (int16 steps), f (float32), i (int32 decimals) or d (float64)."""
        return self.v.typecode

    def _oldest(self) -> int:
        """The slot of the oldest sample."""
        n = len(self.v)
        return 0 if n < self.size else (self.last + 1 - self.first) % n

    def values(self) -> Iterator[float]:
        """The values, oldest first (NaN for none)."""
        v, n, div = self.v, len(self.v), self.div
        o = self._oldest()
        tc = v.typecode
        m = self.base
        for j in range(n):
            x = v[(o + j) % n]
            if tc == _D16:
                if x == -_D16_MAX - 1:
                    yield math.nan
                    continue
                if j:
                    m += x
                yield m / div
            elif tc == _DEC:
                yield math.nan if x == -_I32 else x / div
            else:
                yield x

    def _recode(self, new: float) -> None:
        """Move to the first encoding, from the current one on, that holds every value and `new` exactly."""
        values = list(self.values())
        newest = next((x for x in reversed(values) if not math.isnan(x)), math.nan)
        level, enc, div = len(ENCODINGS) - 1, _F64, 1.0  # float64 holds every value
        for level in range(self.level + 1, len(ENCODINGS)):
            enc, k = ENCODINGS[level]
            div = 10.0**k
            if _fits(enc, div, [newest, new]) and _fits(enc, div, [*values, new]):  # the cheap test first
                break
        o = self._oldest()
        if self.q is not None:  # oldest first, as the values now
            self.q = self.q[o:] + self.q[:o]
        self.first = self.last - len(values) + 1
        self.level, self.div = level, div
        if enc == _D16:
            self.v, self.prev = array.array(enc), None
            for x in values:
                self.v.append(self._step(x))
        elif enc == _DEC:
            self.v = array.array(enc, [-_I32 if math.isnan(x) else _dec(x, div) for x in values])  # type: ignore[misc]
        else:
            self.v = array.array(enc, values)

    def _step(self, x: float) -> int:
        """x as an int16 step from the newest value (fitting), noting it as the newest."""
        if math.isnan(x):
            return -_D16_MAX - 1
        m = _dec(x, self.div)
        assert m is not None
        if self.prev is None:  # the first value: earlier samples have none
            self.base = self.prev = m
            return 0
        d, self.prev = m - self.prev, m
        return d

    def _fits_next(self, x: float) -> bool:
        tc = self.v.typecode
        if math.isnan(x) or tc == _F64:
            return True
        if tc == _F32:
            return array.array("f", (x,))[0] == x
        m = _dec(x, self.div)
        if m is None:
            return False
        return tc == _DEC or self.prev is None or abs(m - self.prev) <= _D16_MAX

    def add(self, r: int, x: float, q: int) -> None:
        """The sample of round r (rounds between the newest sample and r become gaps)."""
        if r - self.last > self.size:  # everything held is older than the window
            self._reset(r)
        while self.last < r - 1:
            self._put(self.last + 1, math.nan, _ABSENT)
        self._put(r, x, q)

    def _put(self, r: int, x: float, q: int) -> None:
        if not self._fits_next(x):
            self._recode(x)
        slot = (r - self.first) % self.size
        grow = slot == len(self.v)
        tc = self.v.typecode
        if tc == _D16:
            if not grow and self.prev is not None:  # the oldest goes: the next one's value becomes the base
                nxt = self.v[(slot + 1) % self.size]
                if nxt != -_D16_MAX - 1:
                    self.base += nxt
            e: float | int = self._step(x)
        elif tc == _DEC:
            e = -_I32 if math.isnan(x) else _dec(x, self.div)  # type: ignore[assignment]
        else:
            e = x
        if grow:
            self.v.append(e)
        else:
            self.v[slot] = e
        if q != _GOOD:
            self.bad = r
            if self.q is None:
                self.q = bytearray([_GOOD]) * (len(self.v) - grow)
        elif self.q is not None and self.bad <= r - self.size:
            self.q = None  # no sample in the window is bad any more
        if self.q is not None:
            if grow:
                self.q.append(q)
            else:
                self.q[slot] = q
        if grow and len(self.v) == self.size:  # full: drop the room appending kept for growth
            self.v = self.v[:]
            if self.q is not None:
                self.q = self.q[:]
        self.last = r

    def samples(self, times: array.array, rounds: int, t0: float) -> list[list[Any]]:
        """Samples taken at t0 or later, oldest first: [time, value or None, quality].

        `times`: the history's round times (round r at r % size); `rounds`: the rounds taken."""
        out = []
        size, n = self.size, len(self.v)
        r0 = self.last - n + 1
        o = self._oldest()
        for j, v in enumerate(self.values()):
            r = r0 + j
            if r < rounds - size:  # its time is no longer held: older than the window
                continue
            t = times[r % size]
            if t < t0:
                continue
            q = _GOOD if self.q is None else self.q[(o + j) % n]
            if q == _ABSENT:
                continue
            out.append([round(t, 3), None if math.isnan(v) else v, str(QUALITY_NAMES[q])])
        return out


class RecentHistory:
    """Per meter, HISTORY_POINTS sampled from the table every HISTORY_STEP s for HISTORY_HOURS (bounded RAM).

    Every ring is sampled in the same rounds: the rounds' times are kept once, here."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.rings: dict[tuple[str, str], Ring] = {}
        self.size = int(HISTORY_HOURS * 3600 / HISTORY_STEP)
        self.times = array.array("d")  # time of round r at r % size (grows up to size)
        self.rounds = 0  # rounds taken

    def sample(self) -> None:
        """Take one sample of every meter's history points (meters gone are forgotten)."""
        now = self.table.clock()
        ids = set(self.table.meter_ids)
        for key in [k for k in self.rings if k[0] not in ids]:
            del self.rings[key]
        r = self.rounds
        if len(self.times) < self.size:
            self.times.append(now)
        else:
            self.times[r % self.size] = now
        self.rounds = r + 1
        for mid in ids:
            for p in HISTORY_POINTS:
                if not self.table.supports(mid, p):
                    continue
                v = self.table.get(mid, p)
                ring = self.rings.get((mid, p))
                if ring is None:
                    ring = self.rings[(mid, p)] = Ring(self.size, r)
                good = v.value is not None and v.quality in (Quality.GOOD, Quality.STALE)
                ring.add(r, float(v.value) if good else math.nan, QUALITY_CODES[v.quality])

    def since(self, mid: str, point: str, t0: float) -> list[list[Any]]:
        """The samples of one meter's point taken at t0 or later, oldest first: [time, value or None, quality]."""
        ring = self.rings.get((mid, point))
        return ring.samples(self.times, self.rounds, t0) if ring is not None else []

    async def run(self) -> None:
        """Sample forever, every HISTORY_STEP seconds."""
        while True:
            try:
                self.sample()
            except Exception as exc:  # a meter removed mid-sample, etc.: next time
                log.debug("history sample: %r", exc)
            await asyncio.sleep(HISTORY_STEP)


class ChangeHub:
    """Wakes event streams when the table changes (a listener on the table), per meter and overall."""

    def __init__(self) -> None:
        self.total = 0
        self.versions: dict[str, int] = {}
        self._ev: asyncio.Event | None = None

    def __call__(self, meter_id: str, _point: str, _old: Any, _new: Any) -> None:
        self.total += 1
        self.versions[meter_id] = self.versions.get(meter_id, 0) + 1
        if self._ev is not None:
            self._ev.set()
            self._ev = None

    async def wait(self, timeout: float) -> None:
        """Until the next change or `timeout` seconds."""
        if self._ev is None:
            self._ev = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ev.wait(), timeout)


def _num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.json_response(doc, status=status, dumps=lambda d: json.dumps(d, default=str))


def _err(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


class WebApi:
    """Registers /login, /logout, /api/*, downloads, / and /ui on the gateway's HTTP server."""

    def __init__(self, ports: ServerPorts, http: HttpServer, auth: Auth) -> None:
        self.ports = ports  # the gateway's narrow interfaces: configuration, table, write service, status, lines
        self.facts = ports.facts
        self.table = ports.table
        self.http = http
        self.auth = auth
        self.history = RecentHistory(ports.table)
        self.hub = ChangeHub()
        self._tasks: list[asyncio.Task] = []
        self._overview: tuple[int, float, str] | None = None  # (table version, loop time, JSON) of the last one

    def add_routes(self) -> None:
        """Register every route with the role it needs."""
        h, a = self.http, self.auth
        h.add("POST", "/login", a.login)
        h.add("GET", "/login", self.login_page)
        h.add("POST", "/logout", a.logout, "viewer")
        h.add("GET", "/api/session", a.session_info, "viewer")
        h.add("GET", "/api/overview", self.overview, "viewer")
        h.add("GET", "/api/meters/{id}", self.meter, "viewer")
        h.add("GET", "/api/meters/{id}/history", self.meter_history, "viewer")
        h.add("POST", "/api/meters/{id}/points/{point}", self.write, "viewer")  # role checked inside: audited
        h.add("GET", "/api/stream", self.stream, "viewer")
        h.add("GET", "/api/buses/{id}/trace", self.trace, "admin")
        h.add("POST", "/api/buses/{id}/scan", self.scan, "admin")
        h.add("GET", "/api/audit", self.audit, "viewer")
        h.add("GET", "/api/config", self.config, "admin")
        h.add("GET", "/api/downloads/ede.csv", self.ede, "viewer")
        h.add("GET", "/api/downloads/ede-state-texts.csv", self.ede_states, "viewer")
        h.add("GET", "/api/downloads/registers.csv", self.registers, "viewer")
        h.add("GET", "/", self.index, None)
        static = resources.files("meter_gateway").joinpath("web/static")
        if static.is_dir():
            h.add_static("/ui", Path(str(static)))

    async def start(self) -> None:
        """Start the history sampler and listen to table changes."""
        self.table.add_listener(self.hub)
        self._tasks.append(asyncio.create_task(self.history.run(), name="web-history"))

    async def stop(self) -> None:
        """Stop the sampler and the listener."""
        self.table.remove_listener(self.hub)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()

    # -- pages -------------------------------------------------------------------------------------------------
    def _static(self, name: str) -> bytes | None:
        f = resources.files("meter_gateway").joinpath(f"web/static/{name}")
        return f.read_bytes() if f.is_file() else None

    async def index(self, request: web.Request) -> web.StreamResponse:
        """GET /: the pages when logged in, else the login page."""
        ident = self.auth.identify(request)
        if ident is None:
            if not self.auth.users:
                return web.Response(status=403, text=_no_users_text(), content_type="text/plain")
            return web.Response(status=303, headers={"Location": "/login?next=/"})
        page = self._static("index.html")
        if page is not None:
            return web.Response(body=page, content_type="text/html", charset="utf-8")
        paths = "\n".join(sorted(self.http.routes))
        return web.Response(text=f"meter-gateway {__version__}\n{paths}\n", content_type="text/plain")

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        """GET /login: the login form (the shipped page, else a minimal one)."""
        if not self.auth.users:
            return web.Response(status=403, text=_no_users_text(), content_type="text/plain")
        page = self._static("login.html")
        if page is None:
            nxt = request.query.get("next", "/")
            failed = "<p role='alert'>Wrong user name or password.</p>" if request.query.get("failed") else ""
            page = (
                "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>meter-gateway login</title></head>"
                f"<body><h1>meter-gateway</h1>{failed}<form method='post' action='/login'>"
                "<label>User <input name='username' autocomplete='username' required></label> "
                "<label>Password <input name='password' type='password' autocomplete='current-password' required>"
                f"</label><input type='hidden' name='next' value='{_attr(nxt)}'> <button>Log in</button></form>"
                "</body></html>"
            ).encode()
        return web.Response(body=page, content_type="text/html", charset="utf-8")

    # -- documents ---------------------------------------------------------------------------------------------
    def overview_doc(self) -> dict[str, Any]:
        """Gateway state, buses with counters and load, meters with communication state and alarms."""
        from ..servers.prometheus import health

        _code, h = health(self.ports)
        now_m = time.monotonic()
        buses = []
        for bus_id, runner in self.ports.status.buses.items():
            st = runner.driver.stats
            up_for = now_m - st.started if st.started else 0.0
            buses.append(
                {
                    "id": bus_id,
                    "protocol": self.facts.config.bus(bus_id).type,
                    "state": h["buses"].get(bus_id, "ok"),
                    "transactions": st.transactions,
                    "errors": st.failed_transactions,
                    "timeouts": st.timeouts,
                    "crc_errors": st.crc_errors,
                    "busy_fraction": round(min(1.0, st.busy_time / up_for), 4) if up_for > 0 else 0.0,
                    "meters": [m.id for m in runner.meters],
                }
            )
        meters = []
        for m in self.facts.config.meters:
            if m.id not in self.table.meter_ids:
                continue
            st = self.table.meter(m.id)
            alarms = list(st.alarms[-10:])
            if st.profile_warning:
                alarms.append(st.profile_warning)
            meters.append(
                {
                    "id": m.id,
                    "name": m.name,
                    "tenant": m.tenant,
                    "bus": m.bus,
                    "profile": m.profile,
                    "comm": h["meters"].get(m.id, "starting"),
                    "comm_reason": st.comm_reason,
                    "last_good_read": max(st.last_good.values(), default=None),
                    "alarms": alarms,
                }
            )
        return {
            "gateway": {"name": self.facts.config.gateway.name, "state": h["status"], "version": __version__},
            "time": self.table.clock(),
            "buses": buses,
            "meters": meters,
        }

    def _writable(self, mid: str) -> set[str]:
        ws = self.ports.writes()
        if ws is None or not self.facts.config.writes.enabled:
            return set()
        try:
            r = ws.rights(mid)
        except Exception:
            return set()
        out = set(r.declared_commands) & set(r.supported_points)
        if r.allow_config_writes and not r.mid:
            out |= set(r.writable_config)
        return out

    def meter_doc(self, mid: str) -> dict[str, Any]:
        """One meter's supported points with value, unit, quality, reason, age and whether a write may be tried."""
        m = next((x for x in self.facts.config.meters if x.id == mid), None)  # None for a moment during a reload
        now = self.table.clock()
        values = self.table.meter_values(mid)
        writable = self._writable(mid)
        points = []
        for p in self.facts.catalogue:
            if not self.table.supports(mid, p.name):
                continue
            v = values[p.name]
            points.append(
                {
                    "name": p.name,
                    "index": p.index,
                    "kind": str(p.kind),
                    "value": _num(v.value),
                    "unit": p.unit,
                    "quality": str(v.quality),
                    "reason": v.reason,
                    "read_time": v.read_time,
                    "age_s": None if v.read_time is None else round(max(0.0, now - v.read_time), 3),
                    "writable": p.name in writable,
                    "states": list(p.states) if p.states else None,
                    "description": p.description,
                }
            )
        st = self.table.meter(mid)
        online = st.online
        return {
            "id": mid,
            "name": m.name if m else "",
            "tenant": m.tenant if m else "",
            "bus": m.bus if m else "",
            "profile": m.profile if m else "",
            "comm": "ok" if online else ("starting" if online is None else "failed"),
            "time": now,
            "points": points,
        }

    def _meter_id(self, request: web.Request) -> str | None:
        mid = request.match_info["id"]
        return mid if mid in self.table.meter_ids else None

    async def overview(self, _request: web.Request) -> web.StreamResponse:
        """GET /api/overview."""
        return _json(self.overview_doc())

    async def meter(self, request: web.Request) -> web.StreamResponse:
        """GET /api/meters/{id}."""
        mid = self._meter_id(request)
        if mid is None:
            return _err(404, f"no meter {request.match_info['id']!r}")
        return _json(self.meter_doc(mid))

    async def meter_history(self, request: web.Request) -> web.StreamResponse:
        """GET /api/meters/{id}/history?point=&hours=: recent samples, energies also from the journal."""
        mid = self._meter_id(request)
        if mid is None:
            return _err(404, f"no meter {request.match_info['id']!r}")
        point = request.query.get("point", "Active_Power_Total")
        if point not in HISTORY_POINTS:
            return _err(400, f"point: one of {', '.join(HISTORY_POINTS)}")
        try:
            hours = float(request.query.get("hours", "6"))
            if not 0 < hours <= MAX_HISTORY_HOURS:
                raise ValueError
        except ValueError:
            return _err(400, f"hours: a number of hours, more than 0 and at most {MAX_HISTORY_HOURS}")
        now = self.table.clock()
        t0 = now - hours * 3600
        samples = self.history.since(mid, point, t0)
        source = ["recent"]
        pdef = self.facts.catalogue.get(point)
        rec = self.ports.status.journal
        if rec is not None and pdef.is_energy:
            first = samples[0][0] if samples else now
            older = await asyncio.to_thread(self._journal_samples, mid, point, int(t0), int(first) - 1)
            if older:
                samples = older + samples
                source.insert(0, "journal")
        return _json({"meter": mid, "point": point, "unit": pdef.unit, "source": source, "samples": samples})

    def _journal_samples(self, mid: str, point: str, since: int, until: int) -> list[list[Any]]:
        from ..journal.recorder import journal_path
        from ..journal.store import iter_rows
        from ..journal.verify import open_readonly

        out: list[list[Any]] = []
        if until <= since:
            return out
        try:
            with open_readonly(journal_path(self.facts)) as db:
                for r in iter_rows(db, meter=mid, since=since, until=until, kind="interval", point=point):
                    try:
                        value = float(r["value"]) if r["value"] not in (None, "") else None
                    except ValueError:
                        value = None
                    out.append([r["boundary"], value, r.get("quality") or ("good" if value is not None else "")])
                    if len(out) >= 20000:
                        break
        except Exception as exc:
            log.debug("history from the journal: %r", exc)
        return out

    # -- event streams -----------------------------------------------------------------------------------------
    async def _sse(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await resp.prepare(request)
        await resp.write(b"retry: 3000\n\n")
        return resp

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """GET /api/stream?topic=overview|meter:{id}: one event per change batch (<= 2/s), heartbeats."""
        topic = request.query.get("topic", "overview")
        mid = None
        if topic.startswith("meter:"):
            mid = topic[6:]
            if mid not in self.table.meter_ids:
                return _err(404, f"no meter {mid!r}")
        elif topic != "overview":
            return _err(400, "topic: overview or meter:{id}")
        resp = await self._sse(request)
        if request.method == "HEAD":
            return resp
        with contextlib.suppress(ConnectionError):  # the browser went away
            await self._stream_loop(resp, mid)
        return resp

    async def _stream_loop(self, resp: web.StreamResponse, mid: str | None) -> None:
        loop = asyncio.get_running_loop()
        seen = -1
        last_sent = last_beat = 0.0
        n = 0
        stopping = self.http.stopping
        while not stopping.is_set():
            version = self.hub.total if mid is None else self.hub.versions.get(mid, 0)
            now = loop.time()
            due = version != seen or (mid is None and now - last_sent >= OVERVIEW_REFRESH)
            if due:
                if mid is not None and mid not in self.table.meter_ids:
                    await resp.write(b'event: gone\ndata: {"error": "meter removed"}\n\n')
                    break
                n += 1
                data = self._event_data(mid, version, now)
                await resp.write(f"id: {n}\nevent: {'overview' if mid is None else 'meter'}\ndata: {data}\n\n".encode())
                seen, last_sent = version, now
            elif now - last_beat >= HEARTBEAT:
                await resp.write(b": heartbeat\n\n")
                last_beat = now
            await asyncio.sleep(max(0.0, STREAM_INTERVAL - (loop.time() - now)))  # coalesce: <= 2 events/s
            await self._wait_change(min(HEARTBEAT, OVERVIEW_REFRESH), stopping)

    def _event_data(self, mid: str | None, version: int, now: float) -> str:
        """A stream event's JSON; the overview's is shared by the streams due within STREAM_INTERVAL of the
        same table version (it is the same document: a page more does not cost the gateway another one)."""
        if mid is not None:
            return json.dumps(self.meter_doc(mid), default=str, separators=(",", ":"))
        cached = self._overview
        if cached is not None and cached[0] == version and 0 <= now - cached[1] < STREAM_INTERVAL:
            return cached[2]
        data = json.dumps(self.overview_doc(), default=str, separators=(",", ":"))
        self._overview = (version, now, data)
        return data

    async def _wait_change(self, timeout: float, stopping: asyncio.Event) -> None:
        stop = asyncio.ensure_future(stopping.wait())
        change = asyncio.ensure_future(self.hub.wait(timeout))
        try:
            await asyncio.wait({stop, change}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (stop, change):
                f.cancel()

    async def trace(self, request: web.Request) -> web.StreamResponse:
        """GET /api/buses/{id}/trace: SSE of the bus's frames {seq, t, dir, hex, meaning} (admin)."""

        bus_id = request.match_info["id"]
        runner = self.ports.status.buses.get(bus_id)
        if runner is None:
            return _err(404, f"no polled bus {bus_id!r}; buses: {', '.join(self.ports.status.buses)}")
        kind = self.facts.config.bus(bus_id).type
        try:
            after = int(request.query.get("after", "-1"))
        except ValueError:
            return _err(400, "after: a frame sequence number")
        if after < 0:  # start with the newest frame held, then follow
            frames = list(runner.driver.frames)
            after = frames[-1][0] - 1 if frames else 0
        resp = await self._sse(request)
        if request.method == "HEAD":
            return resp
        with contextlib.suppress(ConnectionError):  # the browser went away
            await self._trace_loop(resp, bus_id, kind, after)
        return resp

    async def _trace_loop(self, resp: web.StreamResponse, bus_id: str, kind: str, after: int) -> None:
        from ..live import trace_document

        loop = asyncio.get_running_loop()
        last_beat = loop.time()
        stopping = self.http.stopping
        while not stopping.is_set():
            runner = self.ports.status.buses.get(bus_id)
            if runner is None:
                await resp.write(b'event: gone\ndata: {"error": "bus removed"}\n\n')
                break
            doc = trace_document(bus_id, runner.driver, kind, after)
            for f in doc["frames"]:
                ev = {"seq": f["seq"], "t": f["time"], "dir": f["dir"], "hex": f["hex"], "meaning": f["meaning"]}
                await resp.write(f"id: {f['seq']}\nevent: frame\ndata: {json.dumps(ev)}\n\n".encode())
                after = f["seq"]
            if loop.time() - last_beat >= HEARTBEAT:
                await resp.write(b": heartbeat\n\n")
                last_beat = loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.3)

    # -- actions -----------------------------------------------------------------------------------------------
    async def _body(self, request: web.Request) -> dict[str, Any]:
        if request.content_type.startswith("application/json"):
            data = await asyncio.wait_for(request.json(), self.auth.body_timeout)
        else:
            data = dict(await asyncio.wait_for(request.post(), self.auth.body_timeout))
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        return data

    async def write(self, request: web.Request) -> web.StreamResponse:
        """POST /api/meters/{id}/points/{point} {value}: through the write policy, audited (operator)."""
        from ..writes import Decision, WriteRequest

        ident: Identity = request[IDENTITY]
        mid, point = request.match_info["id"], request.match_info["point"]
        try:
            data = await self._body(request)
        except TimeoutError:
            return _err(408, "request timeout")
        except (ValueError, json.JSONDecodeError) as exc:
            return _err(400, f'send JSON {{"value": ...}}: {exc}')
        raw = data.get("value")
        value: float | int | bool | str
        if isinstance(raw, bool | int | float):
            value = raw
        elif isinstance(raw, str) and raw.strip().lower() in ("true", "false", "active", "inactive"):
            value = raw.strip().lower() in ("true", "active")
        else:
            try:
                value = float(str(raw))
                if value.is_integer():
                    value = int(value)
            except ValueError:
                value = str(raw)[:64]
        ws = self.ports.writes()
        if ws is None:
            return _err(503, "the write service is not running")
        req = WriteRequest("http", request.remote or "", mid, point, value, user=ident.user)
        if not ident.may("operator"):
            ws.refuse(req, f"user {ident.user} has role {ident.role}: writes need operator")
            return _err(403, f"writes need the operator role; {ident.user} is {ident.role}")
        if isinstance(value, str):
            res = ws.refuse(req, f"value {value!r} is not a number or a boolean", Decision.OUT_OF_RANGE)
        else:
            res = await ws.write(req)  # policy, meter, audit: the one write path
        status = {"accepted": 200, "denied": 403, "out-of-range": 422, "failed": 502}[res.decision.value]
        doc = {"meter": mid, "point": point, "value": value, "decision": res.decision.value, "reason": res.reason}
        doc["meter_reply"] = res.meter_reply
        return _json(doc, status)

    async def scan(self, request: web.Request) -> web.StreamResponse:
        """POST /api/buses/{id}/scan {first, last, secondary}: the meters found and proposed `meters:` lines."""
        from ..commands.scan import proposal
        from ..live import scan_document

        bus_id = request.match_info["id"]
        if bus_id not in self.ports.status.buses:
            return _err(404, f"no polled bus {bus_id!r}; buses: {', '.join(self.ports.status.buses)}")
        try:
            data = await self._body(request) if request.can_read_body else {}
            first = int(data["first"]) if data.get("first") not in (None, "") else None
            last = int(data["last"]) if data.get("last") not in (None, "") else None
            secondary = str(data.get("secondary", "true")).lower() not in ("0", "false", "no")
        except TimeoutError:
            return _err(408, "request timeout")
        except (ValueError, TypeError, json.JSONDecodeError):
            return _err(400, "send JSON {first, last, secondary} (all optional; first and last are addresses)")
        found = await self.ports.lines.scan(bus_id, first, last, secondary)
        doc = scan_document(bus_id, found)
        cfg = self.facts.config
        doc["yaml"] = proposal(cfg, cfg.bus(bus_id), found)
        return _json(doc)

    async def audit(self, request: web.Request) -> web.StreamResponse:
        """GET /api/audit?meter=&point=&protocol=&result=&user=&limit=: the newest write attempts first.

        A write that reached the meter has an "intent" record (written before the meter was touched) and its result.
        """
        from ..writes import audit_path, read_audit

        q = request.query
        try:
            limit = max(1, min(1000, int(q.get("limit", "200"))))
        except ValueError:
            return _err(400, "limit: a number 1-1000")
        filters = {
            k: q[f]
            for k, f in (
                ("meter", "meter"),
                ("point", "point"),
                ("protocol", "protocol"),
                ("decision", "result"),
                ("user", "user"),
            )
            if q.get(f)
        }
        records = await asyncio.to_thread(read_audit, audit_path(self.facts), 100000)
        out = [
            r for r in reversed(records) if "event" not in r and all(str(r.get(k, "")) == v for k, v in filters.items())
        ]  # journal checkpoints copied into the audit file are not write attempts
        return _json({"records": out[:limit], "total": len(out)})

    async def config(self, _request: web.Request) -> web.StreamResponse:
        """GET /api/config: the running configuration with secrets hidden, and `check` of the file on disk."""
        cfg = self.facts.config
        doc = cfg.model_dump(mode="json")
        http = doc.get("upstream", {}).get("http", {})
        for u in http.get("users", []):
            u["password_hash"] = SECRET
        for k in ("metrics_token", "metrics_token_sha256"):
            if http.get(k):
                http[k] = SECRET
        check = await asyncio.to_thread(self._check)
        return _json({"config": doc, "path": str(self.facts.config_path or ""), "check": check})

    def _check(self) -> dict[str, Any]:
        from ..config import ConfigError, load_config

        path = self.facts.config_path
        if not path:
            return {"ok": None, "errors": [], "note": "the gateway runs without a configuration file"}
        try:
            load_config(path, preflight=True)
        except ConfigError as exc:
            return {"ok": False, "errors": str(exc).splitlines()}
        except Exception as exc:
            return {"ok": False, "errors": [str(exc)]}
        return {"ok": True, "errors": []}

    # -- downloads ---------------------------------------------------------------------------------------------
    def _csv(self, rows: list[list[str]], name: str, delimiter: str = ",") -> web.Response:
        buf = io.StringIO()
        csv.writer(buf, delimiter=delimiter).writerows(rows)
        return web.Response(
            body=buf.getvalue().encode(),
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    async def ede(self, _request: web.Request) -> web.StreamResponse:
        """GET /api/downloads/ede.csv: the BACnet EDE file of the running configuration."""
        from ..commands.ede import ede_header, ede_rows

        cfg = self.facts.config
        rows, _states = await asyncio.to_thread(ede_rows, cfg, self.facts.profiles)
        return self._csv(ede_header(cfg.gateway.name) + rows, f"{cfg.gateway.name}_EDE.csv", ";")

    async def ede_states(self, _request: web.Request) -> web.StreamResponse:
        """GET /api/downloads/ede-state-texts.csv: the EDE state texts."""
        from ..commands.ede import ede_rows

        cfg = self.facts.config
        _rows, states = await asyncio.to_thread(ede_rows, cfg, self.facts.profiles)
        head = [["#State-Text-File"], ["# Reference number", "Text 1", "Text 2", "Text 3"]]
        return self._csv(head + states, f"{cfg.gateway.name}_StateTexts.csv", ";")

    async def registers(self, _request: web.Request) -> web.StreamResponse:
        """GET /api/downloads/registers.csv: the upstream Modbus TCP register map."""
        from ..commands.registers import COLUMNS, UpstreamMap, WordOrder, load_catalogue

        rows = list(UpstreamMap(load_catalogue(), WordOrder.BIG).rows())
        return self._csv([COLUMNS] + [[r[c] for c in COLUMNS] for r in rows], "modbus-registers.csv")


def _attr(s: str) -> str:
    return s.replace("&", "&amp;").replace("'", "&#39;").replace('"', "&quot;").replace("<", "&lt;")


def _no_users_text() -> str:
    from .auth import NO_USERS

    return NO_USERS
