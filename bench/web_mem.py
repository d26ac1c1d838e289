"""Memory of the HTTP side (web pages, API, /metrics) at 250 meters, measured with tracemalloc.

`python bench/web_mem.py history`: a RecentHistory over a real point table of SCALE_METERS meters (250), filled
with HISTORY_HOURS (+ 10 %) of rounds, so every ring is full: the bytes it holds (steady state after hours). Values
as the simulator's generic profile sends them (0.01 kWh uint32 energies, float32 powers), and with
WEB_MEM_VALUES=float64 values that need float64 and a bad sample in every window (the worst case).

WEB_MEM_TRACE=0: without tracemalloc, for the sampler's CPU time per round
(sample_cpu_ms_per_round: 750 points walked, every HISTORY_STEP s).

`python bench/web_mem.py imports`: the RSS each module of the HTTP side adds on import (a fixed cost).

`python bench/web_mem.py gateway`: the gateway at SCALE_METERS simulated meters with SCALE_UPSTREAMS (prometheus
by default; none for the base) in its own process with tracemalloc on from before the imports; once the table is
full, the bytes allocated per package / gateway module (allocation site), the top ones first. With
WEB_MEM_TRACE=0 (no tracemalloc: honest RSS and CPU): the CPU time of building one /metrics body and one event of
the pages' streams, and the RSS before and after 5 scrapes of /metrics (from another process), the pages' API, and
HISTORY_HOURS of history rounds sampled at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def f32(x: float) -> float:
    """x rounded to a float32."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def history(n: int, kind: str) -> dict:
    """Fill a RecentHistory of n meters for HISTORY_HOURS + 10 %; the bytes it holds."""
    from meter_gateway.core.catalogue import DEFAULT_INTERVALS, load_catalogue
    from meter_gateway.core.codec import to_engineering
    from meter_gateway.core.table import PointTable
    from meter_gateway.web.api import HISTORY_POINTS, HISTORY_STEP, RecentHistory

    power, imp, exp = HISTORY_POINTS
    clock = [1_800_000_000.0]
    table = PointTable(load_catalogue(), lambda: clock[0])
    ids = [f"m{i}" for i in range(n)]
    for mid in ids:
        table.add_meter(mid, HISTORY_POINTS, dict(DEFAULT_INTERVALS), max_power_kw=1000)
    trace = os.environ.get("WEB_MEM_TRACE", "1") != "0"  # 0: no tracemalloc (CPU figures without its overhead)
    if trace:
        tracemalloc.start()
        base = tracemalloc.take_snapshot()
    hist = RecentHistory(table)
    rounds = int(hist.size * 1.1)
    t0 = time.process_time()
    sample_s = 0.0
    for r in range(rounds):
        clock[0] += HISTORY_STEP
        for i, mid in enumerate(ids):
            if kind == "float64":  # binary noise everywhere, one bad sample per window
                table.update(mid, imp, 1000.0 + r * 0.1 + i)
                table.update(mid, exp, r / 3)
                table.update(mid, power, (r * 7 + i) / 3)
                if r % (hist.size - 1) == 5:
                    table.mark_bad(mid, power, "sentinel", log_it=False)
            else:
                table.update(mid, imp, to_engineering(100_000 + r * 3 + i, 0.01))
                table.update(mid, exp, to_engineering(i, 0.01))
                table.update(mid, power, f32(((r * 7919 + i * 104729) % 20000) / 1000 - 10))
        s0 = time.process_time()
        hist.sample()
        sample_s += time.process_time() - s0
    fill_s = time.process_time() - t0
    held = 0
    if trace:
        only = [tracemalloc.Filter(True, "*/web/api.py")]  # what the history allocated (not the table's churn)
        snap = tracemalloc.take_snapshot().filter_traces(only)
        held = sum(s.size_diff for s in snap.compare_to(base.filter_traces(only), "filename"))
        tracemalloc.stop()
    full = sum(1 for r in hist.rings.values() if len(getattr(r, "v", getattr(r, "t", ()))) >= hist.size)
    return {
        "meters": n,
        "rings": len(hist.rings),
        "rings_full": full,
        "rounds": rounds,
        "values": kind,
        "traced": trace,
        "history_bytes": held,
        "history_mib": round(held / 2**20, 2),
        "bytes_per_sample": round(held / (len(hist.rings) * hist.size), 2),
        "sample_cpu_ms_per_round": round(1000 * sample_s / rounds, 3),
        "fill_cpu_s": round(fill_s, 1),
    }


def _group(filename: str) -> str:
    """The package (or gateway module) of an allocation site."""
    parts = filename.replace("\\", "/").split("/")
    for i, p in enumerate(parts):
        if p == "meter_gateway" and i + 1 < len(parts):
            rest = parts[i + 1 :]
            return "meter_gateway/" + "/".join(rest[:2] if len(rest) > 1 and not rest[0].endswith(".py") else rest[:1])
        if p in ("site-packages", "dist-packages") and i + 1 < len(parts):
            return parts[i + 1].removesuffix(".py")
    if "python3" in filename and "/lib/" in filename:
        return "stdlib/" + parts[-1]
    return filename


async def gateway_child(text: str) -> dict:
    """In the gateway's own process (tracemalloc on since before the imports): start, full table, snapshot."""
    from meter_gateway.app import Gateway
    from meter_gateway.config import parse_config
    from meter_gateway.core.quality import Quality
    from meter_gateway.profiles import load_profiles

    imported = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
    profiles = load_profiles()
    gw = Gateway(parse_config(text, profiles=profiles), profiles)
    await gw.start()
    try:
        skip = {"Reset_Demand_Peak", "Sync_Clock", "Communication_Status"}
        wanted = [(m, p) for m in gw.table.meter_ids for p in gw.meter_points(m) - skip]
        deadline = time.monotonic() + 120
        while any(gw.table.get(m, p).quality is not Quality.GOOD for m, p in wanted):
            if time.monotonic() > deadline:
                raise RuntimeError("table not full after 120 s")
            await asyncio.sleep(0.5)
        changes = [0]

        def count(*_args) -> None:
            changes[0] += 1

        gw.table.add_listener(count)  # table changes a second: what the web side's listener (ChangeHub) is called for
        await asyncio.sleep(5)
        gw.table.remove_listener(count)
        traced = tracemalloc.is_tracing()
        snap = tracemalloc.take_snapshot() if traced else None
        scrapes = await _scrapes(gw) if "prometheus" in [s.name for s in gw.servers] else {}
    finally:
        await gw.stop()
    rate = round(changes[0] / 5)
    if snap is None:
        return {"scrapes": scrapes, "table_changes_per_s": rate}
    groups: dict[str, int] = {}
    for st in snap.statistics("filename"):
        g = _group(st.traceback[0].filename)
        groups[g] = groups.get(g, 0) + st.size
    at_import: dict[str, int] = {}
    for st in imported.statistics("filename"):
        g = _group(st.traceback[0].filename)
        at_import[g] = at_import.get(g, 0) + st.size
    top = sorted(groups.items(), key=lambda kv: -kv[1])[:40]
    return {
        "scrapes": scrapes,
        "table_changes_per_s": rate,
        "traced_mib": round(sum(groups.values()) / 2**20, 2),
        "traced_after_imports_mib": round(sum(at_import.values()) / 2**20, 2),
        "by_site_kib": {g: [round(b / 1024), round(at_import.get(g, 0) / 1024)] for g, b in top},
        "note": "by_site_kib: [KiB held with the table full, KiB of them held right after the imports]",
    }


_CLIENT = """
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]})
with urllib.request.urlopen(req, timeout=60) as r:
    print(len(r.read()))
"""


async def _get(port: int, path: str, token: str) -> int:
    """GET path from another process (the client's memory is not the gateway's); the body's length."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CLIENT, f"http://127.0.0.1:{port}{path}", token, stdout=subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"GET {path} failed")
    return int(out)


async def _scrapes(gw) -> dict:
    """RSS before and after scrapes of /metrics and reads of the pages' API; the traced peak of one scrape."""
    from scale import rss_mib

    srv = gw.server("prometheus")
    port, token = srv.address()[1], srv.auth.control_token
    out: dict = {"rss_before_mib": round(rss_mib(), 1)}
    if not tracemalloc.is_tracing():  # the CPU time of building one /metrics body, best of 3
        from meter_gateway.servers import prometheus

        if hasattr(prometheus, "Fam"):
            build = lambda: b"".join(prometheus.exposition(srv.collector.families()))  # noqa: E731
        else:  # the gateway before the body was built part by part
            build = lambda: prometheus.generate_latest(srv.registry)  # noqa: E731
        cpu = []
        for _ in range(3):
            c0 = time.process_time()
            build()
            cpu.append(time.process_time() - c0)
        out["scrape_build_cpu_ms"] = round(1000 * min(cpu), 1)
        out["rss_after_3_builds_mib"] = round(rss_mib(), 1)
        for name, doc in (("overview", srv.web.overview_doc), ("meter", lambda: srv.web.meter_doc("m1"))):
            cpu = []
            for _ in range(5):  # one event of a page's stream (sent at most twice a second while the table changes)
                c0 = time.process_time()
                json.dumps(doc(), default=str, separators=(",", ":"))
                cpu.append(time.process_time() - c0)
            out[f"{name}_event_cpu_ms"] = round(1000 * min(cpu), 2)
    if tracemalloc.is_tracing():
        tracemalloc.reset_peak()
        now = tracemalloc.get_traced_memory()[0]
        out["metrics_bytes"] = await _get(port, "/metrics", token)
        out["scrape_peak_extra_mib"] = round((tracemalloc.get_traced_memory()[1] - now) / 2**20, 1)
    for _ in range(5):
        out["metrics_bytes"] = await _get(port, "/metrics", token)
        await asyncio.sleep(0.2)
    out["rss_after_5_scrapes_mib"] = round(rss_mib(), 1)
    srv.web.history.sample()
    for mid in ("m1", "m2", "m250"):
        await _get(port, f"/api/meters/{mid}", token)
        await _get(port, f"/api/meters/{mid}/history?point=Active_Energy_Import&hours=6", token)
    await _get(port, "/api/overview", token)
    out["rss_after_pages_mib"] = round(rss_mib(), 1)
    hist = srv.web.history
    for _ in range(hist.size):  # HISTORY_HOURS of sampling rounds, at once (the table's values as they are now)
        hist.sample()
    await _get(port, "/metrics", token)
    out["rss_after_6h_of_history_and_a_scrape_mib"] = round(rss_mib(), 1)
    return out


def gateway(n: int, ups: str) -> dict:
    """Simulators and the gateway child; the child's figures."""
    import scale

    async def go() -> dict:
        sims = []
        try:
            for k in range((n + scale.PER_SIM - 1) // scale.PER_SIM):
                sims.append(await scale.start_simulator(f"1-{min(scale.PER_SIM, n - k * scale.PER_SIM)}"))
            on = True if ups == "all" else False if ups == "none" else tuple(ups.split(","))
            text = scale.build_config(n, [p for _, p in sims], on)
            proc = subprocess.run(
                [sys.executable, __file__, "child"], input=text, capture_output=True, text=True, timeout=600
            )
            if proc.returncode != 0:
                raise RuntimeError(f"child failed: {proc.stderr[-2000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res["upstreams"] = ups
            return res
        finally:
            for p, _ in sims:
                p.terminate()
                p.wait(timeout=10)

    return asyncio.run(go())


def imports() -> dict:
    """RSS added by importing the HTTP side's modules one after the other (after the gateway's own imports)."""
    import importlib

    from scale import rss_mib

    import meter_gateway.app
    import meter_gateway.config
    import meter_gateway.profiles  # noqa: F401

    out: dict = {"rss_after_gateway_imports_mib": round(rss_mib(), 1)}
    prev = rss_mib()
    for name in (
        "aiohttp",
        "aiohttp.web",
        "prometheus_client",
        "argon2",
        "meter_gateway.web.auth",
        "meter_gateway.servers.http",
        "meter_gateway.servers.prometheus",
        "meter_gateway.web.api",
    ):
        importlib.import_module(name)
        now = rss_mib()
        out[name] = round(now - prev, 1)
        prev = now
    out["total_mib"] = round(prev - out["rss_after_gateway_imports_mib"], 1)
    return out


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "history"
    meters = int(os.environ.get("SCALE_METERS", "250"))
    if what == "child":
        if os.environ.get("WEB_MEM_TRACE", "1") != "0":
            tracemalloc.start()
        import logging

        logging.basicConfig(level=logging.ERROR)
        print(json.dumps(asyncio.run(gateway_child(sys.stdin.read()))))
    elif what == "imports":
        print(json.dumps(imports()))
    elif what == "gateway":
        print(json.dumps(gateway(meters, os.environ.get("SCALE_UPSTREAMS", "prometheus")), indent=1))
    else:
        print(json.dumps(history(meters, os.environ.get("WEB_MEM_VALUES", "simulator"))))
