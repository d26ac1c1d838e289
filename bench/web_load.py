"""Web load against the poll rhythm: do 20 live web sessions and a Prometheus scrape every second change the meters'
poll periods?

A real gateway process (tests/webgw.py: users, journal, a simulated RTU bus and WEB_LOAD_UNITS simulated Modbus TCP
meters in another process) is measured from OUTSIDE: the simulated TCP meters log the monotonic time of every
request they receive, and the poll period is the time between two requests for the same registers of the same meter.

First the 20 sessions log in (argon2 with the library's default cost, as `hash-password` makes) and load their
pages: reported apart. Then WEB_LOAD_ROUNDS (4) x an idle window and a load window of WEB_LOAD_WINDOW (20) s each,
alternating so that the drifting load of a shared machine falls on both alike. Idle: the sessions are logged in
but hold nothing. Load: each session holds the overview stream and one meter's stream and reloads a page every
5 s, and /metrics is scraped once a second with the bearer token. Prints JSON: mean, p50, p99 and max of the poll
periods per condition and per round, the gateway's CPU, the machine's load average, events received, scrapes.

Run: .venv/bin/python bench/web_load.py
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from webgw import WebGateway, chromium_path, login_async

WINDOW = float(os.environ.get("WEB_LOAD_WINDOW", "20"))  # seconds of one idle or load window
ROUNDS = int(os.environ.get("WEB_LOAD_ROUNDS", "4"))
# WEB_LOAD_BROWSERS=1: the sessions are real pages in one headless Chromium (Debian's) instead of HTTP clients; one
# address then holds every connection, so the gateway's per-address limit is raised for the run
BROWSERS = os.environ.get("WEB_LOAD_BROWSERS") == "1"
NICE = int(os.environ.get("WEB_LOAD_NICE", "10"))
UNITS = int(os.environ.get("WEB_LOAD_UNITS", "5"))
SESSIONS = int(os.environ.get("WEB_LOAD_SESSIONS", "20"))
FAST_PERIOD = 0.5  # tests/helpers.FAST: every poll class but configuration
PAGE = ("/ui/index.html", "/ui/app.js", "/ui/app.css", "/api/session", "/api/overview")


def periods(log: Path, t0: float, t1: float) -> list[float]:
    """Poll periods (s) of requests received in [t0, t1]: gaps between requests with the same unit and PDU head."""
    seen: dict[tuple[str, str], float] = {}
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for line in log.read_text().splitlines():
        try:
            t_s, unit, head = line.split()
            t = float(t_s)
        except ValueError:
            continue
        if not t0 <= t <= t1:
            continue
        key = (unit, head)
        if key in seen:
            out[key].append(t - seen[key])
        seen[key] = t
    # the fast classes only (polled every 0.5 s): not the configuration class (every 5 s) nor one-off reads
    return [p for ps in out.values() if len(ps) >= 2 and statistics.median(ps) < 2 * FAST_PERIOD for p in ps]


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(ps: list[float]) -> dict:
    """Mean, p50, p99 and max of a list of periods, in milliseconds."""
    if not ps:
        return {"n": 0}
    s = sorted(ps)
    q = lambda f: round(1000 * s[min(len(s) - 1, int(f * len(s)))], 1)  # noqa: E731
    return {
        "n": len(s),
        "mean_ms": round(1000 * statistics.fmean(s), 1),
        "p50_ms": q(0.5),
        "p99_ms": q(0.99),
        "max_ms": round(1000 * s[-1], 1),
    }


class Phase:
    """Which web load runs now: `active` set = live sessions and scrapes, cleared = sessions idle; `done` ends."""

    def __init__(self) -> None:
        self.active = asyncio.Event()
        self.done = asyncio.Event()

    async def until_idle(self) -> None:
        """Return once the load window is over (active cleared) or the run is done."""
        while self.active.is_set() and not self.done.is_set():
            await asyncio.sleep(0.1)


async def session(base: str, user: str, password: str, meter: str, ph: Phase, stats: dict, source: str) -> None:
    """One browser-like session from its own loopback address (a person at their own machine): log in and load the
    pages once; then in every load window hold the overview and meter streams and reload a page every 5 s."""
    conn = aiohttp.TCPConnector(local_addr=(source, 0))
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    jar = aiohttp.CookieJar(unsafe=True)  # the session cookie of a gateway addressed by IP
    async with aiohttp.ClientSession(base_url=base, timeout=timeout, connector=conn, cookie_jar=jar) as s:

        async def get(path: str) -> None:
            async with s.get(path) as r:
                await r.read()
                stats["requests"] += 1
                stats["errors"] += r.status >= 400

        async def stream(topic: str) -> None:
            async with s.get("/api/stream", params={"topic": topic}) as r:
                stats["errors"] += r.status >= 400
                async for line in r.content:
                    stats["events"] += line.startswith(b"data:")

        async with s.post("/login", json={"username": user, "password": password}, allow_redirects=False) as r:
            if r.status not in (200, 303):
                stats["login_failures"] += 1
                return
        for path in (*PAGE, f"/api/meters/{meter}", f"/api/meters/{meter}/history?point=Active_Power_Total&hours=6"):
            await get(path)
        stats["ready"] += 1
        while not ph.done.is_set():
            await ph.active.wait()
            if ph.done.is_set():
                break
            tasks = [asyncio.create_task(stream("overview")), asyncio.create_task(stream(f"meter:{meter}"))]
            t = time.monotonic()
            while ph.active.is_set() and not ph.done.is_set():
                await asyncio.sleep(0.1)
                if time.monotonic() - t >= 5:
                    t = time.monotonic()
                    for path in PAGE:
                        await get(path)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def scraper(base: str, token: str, ph: Phase, stats: dict) -> None:
    """In every load window, GET /metrics with the bearer token once a second."""
    conn = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(base_url=base, connector=conn) as s:
        while not ph.done.is_set():
            await ph.active.wait()
            t = time.monotonic()
            async with s.get("/metrics", headers={"Authorization": f"Bearer {token}"}) as r:
                await r.read()
                stats["scrapes"] += 1
                stats["errors"] += r.status != 200
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t)))


async def browsers(gw: WebGateway, ph: Phase, stats: dict) -> None:
    """SESSIONS real pages in one Chromium: log in; in load windows half show the overview and half a meter page
    (each holding its stream); in idle windows they show the login page (static, no stream)."""
    from playwright.async_api import async_playwright

    exe, why = chromium_path()
    if exe is None:
        sys.exit(f"no Chromium: {why}")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        pages = []
        for _ in range(SESSIONS):
            ctx = await b.new_context(viewport={"width": 1024, "height": 768})
            pg = await ctx.new_page()
            await login_async(pg, gw.base, "viewer", gw.passwords["viewer"])
            pages.append(pg)
            stats["ready"] += 1
        while not ph.done.is_set():
            await ph.active.wait()
            if ph.done.is_set():
                break
            for i, pg in enumerate(pages):
                await pg.goto(gw.base + "/ui/index.html" + ("#/" if i % 2 == 0 else f"#/meter/t{1 + i % UNITS}"))
                stats["requests"] += 1
            await ph.until_idle()
            live = sum([await pg.evaluate("document.getElementById('live')?.dataset.state === 'live'") for pg in pages])
            stats["pages_live_at_window_end"] = min(stats.get("pages_live_at_window_end", SESSIONS), live)
            for pg in pages:
                await pg.goto(gw.base + "/ui/login.html")
        await b.close()


async def run() -> dict:
    """Logins, then ROUNDS x (idle window, load window); the report."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        log = tmp / "sim.log"
        extra = ", max_connections: 256, max_connections_per_address: 128" if BROWSERS else ""
        gw = WebGateway(tmp, tcp_units=UNITS, sim_log=log, cheap_hashes=False, http_extra=extra)
        stats: dict[str, int] = defaultdict(int)
        windows: dict[str, list[tuple[float, float]]] = {"idle": [], "load": [], "logins": []}
        cpu: dict[str, float] = defaultdict(float)
        loads: dict[str, list[float]] = defaultdict(list)
        ph = Phase()
        try:
            await asyncio.to_thread(gw.wait_ready)
            # the clients stand for people at their own machines: on this one they must not take the gateway's CPU,
            # so this process and the browser it starts run at a lower priority (the gateway and the simulated
            # meters were started before and keep theirs); WEB_LOAD_NICE=0 turns this off
            os.nice(NICE)
            await asyncio.sleep(5)  # the start-up reads (identification, configuration class) are over
            pid = gw.run.p.pid

            async def window(name: str, seconds: float) -> None:
                c0, t0 = cpu_s(pid), time.monotonic()
                await asyncio.sleep(seconds)
                t1 = time.monotonic()
                windows[name].append((t0, t1))
                cpu[name] += cpu_s(pid) - c0
                loads[name].append(os.getloadavg()[0])

            tasks = [] if not BROWSERS else [asyncio.create_task(browsers(gw, ph, stats))]
            tasks += [
                asyncio.create_task(
                    session(
                        gw.base, "viewer", gw.passwords["viewer"], f"t{1 + i % UNITS}", ph, stats, f"127.0.0.{10 + i}"
                    )
                )
                for i in range(0 if BROWSERS else SESSIONS)
            ]
            tasks.append(asyncio.create_task(scraper(gw.base, gw.metrics_token, ph, stats)))
            t0, c0 = time.monotonic(), cpu_s(pid)
            while stats["ready"] + stats["login_failures"] < SESSIONS and time.monotonic() - t0 < 180:
                await asyncio.sleep(0.1)
            windows["logins"].append((t0, time.monotonic()))
            cpu["logins"] += cpu_s(pid) - c0
            loads["logins"].append(os.getloadavg()[0])
            await asyncio.sleep(2)
            for _ in range(ROUNDS):
                await window("idle", WINDOW)
                ph.active.set()
                await window("load", WINDOW)
                ph.active.clear()
            ph.done.set()
            ph.active.set()  # wake the waiting ones so that they see `done`
            await asyncio.wait(tasks, timeout=10)
            for t in tasks:
                t.cancel()
        finally:
            rc = await asyncio.to_thread(gw.stop)

        def of(name: str) -> list[float]:
            return [p for t0, t1 in windows[name] for p in periods(log, t0, t1)]

        def cpu_pct(name: str) -> float:
            return round(100 * cpu[name] / sum(t1 - t0 for t0, t1 in windows[name]), 1)

        return {
            "sessions": SESSIONS,
            "clients": "headless Chromium pages" if BROWSERS else "HTTP/SSE clients (aiohttp), one address each",
            "pages_live_at_window_end": stats.get("pages_live_at_window_end"),
            "tcp_meters": UNITS,
            "client_niceness": NICE,
            "windows": f"{ROUNDS} x ({WINDOW:.0f} s idle, {WINDOW:.0f} s load)",
            "logins_took_s": round(windows["logins"][0][1] - windows["logins"][0][0], 1),
            "poll_period_idle_sessions": summary(of("idle")),
            "poll_period_20_live_sessions_plus_1hz_scrape": summary(of("load")),
            "poll_period_during_20_logins_and_page_loads": summary(of("logins")),
            "per_round_mean_ms": {
                name: [round(1000 * statistics.fmean(periods(log, t0, t1) or [0]), 1) for t0, t1 in windows[name]]
                for name in ("idle", "load")
            },
            "per_round_p99_ms": {
                name: [summary(periods(log, t0, t1)).get("p99_ms") for t0, t1 in windows[name]]
                for name in ("idle", "load")
            },
            "gateway_cpu_percent": {name: cpu_pct(name) for name in ("idle", "load", "logins")},
            "machine": {
                "cores": os.cpu_count(),
                "load_average_1min": {k: [round(x, 1) for x in v] for k, v in loads.items()},
            },
            "sse_events_received": stats["events"],
            "http_requests": stats["requests"],
            "scrapes": stats["scrapes"],
            "http_errors": stats["errors"],
            "login_failures": stats["login_failures"],
            "gateway_exit": rc,
        }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run()), indent=2))
