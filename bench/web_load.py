"""Web load against the poll rhythm: do 20 live web sessions and a Prometheus scrape every second change the meters'
poll periods?

A real gateway process (tests/webgw.py: users, journal, a simulated RTU bus and WEB_LOAD_UNITS simulated Modbus TCP
meters in another process) is measured from OUTSIDE: the simulated TCP meters log the monotonic time of every
request they receive, and the poll period is the time between two requests for the same registers of the same meter.

Phases (WEB_LOAD_SECONDS each, default 30): baseline (no web client), ramp (20 sessions log in and load their
pages; reported apart, since argon2 makes each login deliberately costly), load (the 20 sessions each hold the
overview stream and one meter's stream, reload a page every 5 s, and /metrics is scraped once a second with the
bearer token). Prints JSON: mean, p50, p99 and max of the poll periods per phase, events received, scrapes made.

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
from webgw import WebGateway

SECONDS = float(os.environ.get("WEB_LOAD_SECONDS", "30"))
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
    return [p for ps in out.values() if len(ps) >= 10 and statistics.median(ps) < 2 * FAST_PERIOD for p in ps]


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


async def session(
    base: str, user: str, password: str, meter: str, ready: asyncio.Event, stop: asyncio.Event, stats: dict, source: str
) -> None:
    """One browser-like session from its own loopback address (a person at their own machine): log in, load the
    pages, hold two SSE streams, reload a page every 5 s."""
    conn = aiohttp.TCPConnector(local_addr=(source, 0))
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    jar = aiohttp.CookieJar(unsafe=True)  # the session cookie of a gateway addressed by IP
    async with aiohttp.ClientSession(base_url=base, timeout=timeout, connector=conn, cookie_jar=jar) as s:
        async with s.post("/login", json={"username": user, "password": password}, allow_redirects=False) as r:
            if r.status not in (200, 303):
                stats["login_failures"] += 1
                return
        for path in (*PAGE, f"/api/meters/{meter}", f"/api/meters/{meter}/history?point=Active_Power_Total&hours=6"):
            async with s.get(path) as r:
                await r.read()
                stats["requests"] += 1
                stats["errors"] += r.status >= 400
        await ready.wait()

        async def stream(topic: str) -> None:
            async with s.get("/api/stream", params={"topic": topic}) as r:
                async for line in r.content:
                    if line.startswith(b"data:"):
                        stats["events"] += 1
                    if stop.is_set():
                        return

        tasks = [asyncio.create_task(stream("overview")), asyncio.create_task(stream(f"meter:{meter}"))]
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 5)
            except TimeoutError:
                for path in PAGE:
                    async with s.get(path) as r:
                        await r.read()
                        stats["requests"] += 1
                        stats["errors"] += r.status >= 400
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def scraper(base: str, token: str, stop: asyncio.Event, stats: dict) -> None:
    """GET /metrics with the bearer token once a second."""
    conn = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(base_url=base, connector=conn) as s:
        while not stop.is_set():
            t = time.monotonic()
            async with s.get("/metrics", headers={"Authorization": f"Bearer {token}"}) as r:
                await r.read()
                stats["scrapes"] += 1
                stats["errors"] += r.status != 200
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t)))


async def run() -> dict:
    """The three phases; the report."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        log = tmp / "sim.log"
        gw = WebGateway(tmp, tcp_units=UNITS, sim_log=log, cheap_hashes=False)
        try:
            await asyncio.to_thread(gw.wait_ready)
            await asyncio.sleep(5)  # the start-up reads (identification, configuration class) are over
            stats = defaultdict(int)
            pid = gw.run.p.pid
            cpu = [cpu_s(pid)]
            t_base = time.monotonic()
            await asyncio.sleep(SECONDS)
            t_ramp = time.monotonic()
            cpu.append(cpu_s(pid))
            ready, stop = asyncio.Event(), asyncio.Event()
            tasks = [
                asyncio.create_task(
                    session(
                        gw.base,
                        "viewer",
                        gw.passwords["viewer"],
                        f"t{1 + i % UNITS}",
                        ready,
                        stop,
                        stats,
                        f"127.0.0.{10 + i}",
                    )
                )
                for i in range(SESSIONS)
            ]
            await asyncio.sleep(SECONDS)
            ready.set()
            tasks.append(asyncio.create_task(scraper(gw.base, gw.metrics_token, stop, stats)))
            t_load = time.monotonic()
            cpu.append(cpu_s(pid))
            await asyncio.sleep(SECONDS)
            t_end = time.monotonic()
            cpu.append(cpu_s(pid))
            stop.set()
            await asyncio.wait(tasks, timeout=10)
            for t in tasks:
                t.cancel()
        finally:
            rc = await asyncio.to_thread(gw.stop)
        return {
            "sessions": SESSIONS,
            "tcp_meters": UNITS,
            "phase_s": SECONDS,
            "poll_period_baseline": summary(periods(log, t_base, t_ramp)),
            "poll_period_logins_and_page_loads": summary(periods(log, t_ramp, t_load)),
            "poll_period_20_sessions_live_plus_scrape": summary(periods(log, t_load, t_end)),
            "gateway_cpu_percent": {
                name: round(100 * (cpu[i + 1] - cpu[i]) / span, 1)
                for i, (name, span) in enumerate(
                    (("baseline", t_ramp - t_base), ("logins", t_load - t_ramp), ("live", t_end - t_load))
                )
            },
            "cores": os.cpu_count(),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
            "sse_events_received": stats["events"],
            "http_requests": stats["requests"],
            "scrapes": stats["scrapes"],
            "http_errors": stats["errors"],
            "login_failures": stats["login_failures"],
            "gateway_exit": rc,
        }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run()), indent=2))
