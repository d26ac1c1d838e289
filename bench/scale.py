"""Scale benchmark: 250 meters x every point, simulated in a separate process, polled over Modbus TCP.

The gateway runs in its own process (`scale.py child`, fed the configuration on stdin) with every upstream on
(BACnet/IP, Modbus TCP, HTTP/Prometheus, all on loopback; SCALE_UPSTREAMS=none or e.g. modbus_tcp,prometheus).
Measures the time from before parsing the configuration to the first full table (every supported point good),
that process's resident memory and its CPU share while polling at the configured rates (the profile's default
intervals), measured once the start-up's profile checks are over (`profile_checks_done_s`); then, with the HTTP side
on, its memory after three /metrics scrapes from another process (`rss_after_scrapes_mib`, a Prometheus's share).

SCALE_PROFILE=FILE records the gateway process with py-spy (start-up and steady state; `make bench` installs it
with the bench extra): FILE ending in .svg gives a flame graph, .json a speedscope file, anything else py-spy's
raw (collapsed stacks) format. py-spy samples by ptrace: root or CAP_SYS_PTRACE is needed. With
SCALE_PROFILE_STEADY=1 it records the steady window only (the polling CPU, without the start-up).
SCALE_TRACEMALLOC=N prints to stderr the top N allocation sites (by source line) of what the gateway allocates
from parsing the configuration on, at full table and after the steady window, plus the growth between the two;
tracing slows the gateway and adds its own memory, so the other figures of such a run are not comparable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time

PER_SIM = 125  # meters per simulator endpoint (unit ids 1-125)
STEADY_MARK = "# steady window starts"  # the child's line before it measures the steady state


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory of a process in MiB."""
    with open(f"/proc/{pid}/status") as fh:
        m = re.search(r"VmRSS:\s+(\d+) kB", fh.read())
    return int(m.group(1)) / 1024 if m else float("nan")


def cpu_seconds() -> float:
    """User + system CPU time of this process."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def start_simulator(units: str) -> tuple[subprocess.Popen, int]:
    """Start `meter-gateway simulate --tcp 0` in its own process; returns it and its port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "meter_gateway.cli", "simulate", "--tcp", "0", "--units", units],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = await asyncio.to_thread(proc.stdout.readline)
    m = re.search(r":(\d+)\s*$", line.strip())
    if not m:
        proc.kill()
        raise RuntimeError(f"simulator did not start: {line!r}")
    return proc, int(m.group(1))


UPSTREAMS = ("bacnet", "modbus_tcp", "prometheus")


def build_config(n: int, ports: list[int], servers: bool | tuple[str, ...]) -> str:
    """A config with n generic meters spread over the simulator endpoints; upstreams on (loopback): all, none or
    the ones named."""
    on = UPSTREAMS if servers is True else () if servers is False else servers
    buses = "\n".join(
        f"  - {{id: tcp{j}, type: modbus_tcp, host: 127.0.0.1, port: {p}, timeout: 2}}" for j, p in enumerate(ports)
    )
    meters = []
    for i in range(n):
        j, unit = divmod(i, PER_SIM)
        meters.append(
            f"  - {{id: m{i + 1}, bus: tcp{j}, address: {unit + 1}, profile: generic, "
            f"bacnet_instance_base: {10000 + 100 * i}" + (f", modbus_unit: {i + 1}}}" if i < 247 else "}")
        )
    lines = {
        "bacnet": "bacnet: {enabled: true, bind: 127.0.0.1, netmask: 8, port: 0, device_instance: 599}",
        "modbus_tcp": "modbus_tcp: {enabled: true, bind: 127.0.0.1, port: 0}",
        "prometheus": "prometheus: {enabled: true, bind: 127.0.0.1, port: 0}",
    }
    up = "".join(f"  {lines[k]}\n" if k in on else f"  {k}: {{enabled: false}}\n" for k in UPSTREAMS)
    return f"gateway: {{name: scale}}\nbuses:\n{buses}\nmeters:\n" + "\n".join(meters) + f"\nupstream:\n{up}"


def _print_top(title: str, stats: list, top: int) -> None:
    """Print the first `top` tracemalloc statistics (or differences) to stderr."""
    total = sum(s.size for s in stats) / 2**20
    print(f"--- tracemalloc {title}: {total:.1f} MiB in total; top {top} sites ---", file=sys.stderr)
    for s in stats[:top]:
        frame = s.traceback[0]
        diff = f" ({s.size_diff / 1024:+.1f} KiB, {s.count_diff:+d} blocks)" if hasattr(s, "size_diff") else ""
        print(f"{s.size / 1024:10.1f} KiB {s.count:8d} blocks  {frame.filename}:{frame.lineno}{diff}", file=sys.stderr)


def _snapshot():  # what the gateway allocated (modules imported on start included), tracemalloc's own left out
    import tracemalloc

    current, peak = tracemalloc.get_traced_memory()
    print(f"--- tracemalloc: {current / 2**20:.1f} MiB traced now, peak {peak / 2**20:.1f} MiB ---", file=sys.stderr)
    return tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])


async def measure(text: str, steady_s: float, trace_top: int = 0) -> dict:
    """In the gateway's own process: parse, start, wait for the full table, then watch the steady state.

    `trace_top` > 0: trace allocations from parsing on and print the top sites to stderr (see the module text)."""
    from meter_gateway.app import Gateway
    from meter_gateway.commands.run import freeze_long_lived, keep_heap_compact
    from meter_gateway.config import parse_config
    from meter_gateway.core.quality import Quality
    from meter_gateway.profiles import load_profiles

    if trace_top:
        import tracemalloc

        tracemalloc.start()
    keep_heap_compact()  # as `meter-gateway run` does
    rss0 = rss_mib()
    t0 = time.monotonic()
    profiles = load_profiles()
    gw = Gateway(parse_config(text, profiles=profiles), profiles)
    built = time.monotonic() - t0
    await gw.start()
    freeze_long_lived()  # as `meter-gateway run` does after start
    started = time.monotonic() - t0
    try:
        ids = gw.table.meter_ids
        skip = {"Reset_Demand_Peak", "Sync_Clock", "Communication_Status"}
        wanted = [(mid, p) for mid in ids for p in gw.meter_points(mid) - skip]
        pending = set(wanted)
        done = asyncio.Event()

        def listener(mid: str, point: str, old, new) -> None:  # O(1) per change: the watch costs the gateway little
            if new.quality is Quality.GOOD and (mid, point) in pending:
                pending.discard((mid, point))
                if not pending:
                    done.set()

        gw.table.add_listener(listener)
        try:
            while True:
                pending.intersection_update(
                    [(m, p) for m, p in pending if gw.table.get(m, p).quality is not Quality.GOOD]
                )
                if pending:
                    done.clear()
                    remaining = 300 - (time.monotonic() - t0)
                    try:
                        await asyncio.wait_for(done.wait(), max(remaining, 0.01))
                    except TimeoutError:
                        raise RuntimeError(f"table not full after 300 s ({len(pending)} points missing)") from None
                # every point was good at least once: check they are good at one instant, else wait for the others
                pending.update((m, p) for m, p in wanted if gw.table.get(m, p).quality is not Quality.GOOD)
                if not pending:
                    break
        finally:
            gw.table.remove_listener(listener)
        points = len(wanted)
        full = time.monotonic() - t0
        rss_full = rss_mib()
        snap_full = None
        if trace_top:
            snap_full = _snapshot()
            _print_top("at full table", snap_full.statistics("lineno"), trace_top)
        # the steady state starts once the start-up's profile checks (reads of identification registers after the
        # first poll round of each bus) are over
        checks = [t for t in gw._tasks if t.get_name().startswith("identify-")]
        if checks:
            await asyncio.wait(checks, timeout=120)
        checked = time.monotonic() - t0
        print(STEADY_MARK, flush=True)  # the parent may start profiling now (SCALE_PROFILE_STEADY)
        tx0 = sum(r.driver.stats.transactions for r in gw.buses.values())
        c0, w0 = cpu_seconds(), time.monotonic()
        await asyncio.sleep(steady_s)
        cpu_share = (cpu_seconds() - c0) / (time.monotonic() - w0)
        tx_rate = (sum(r.driver.stats.transactions for r in gw.buses.values()) - tx0) / (time.monotonic() - w0)
        if snap_full is not None:
            snap = _snapshot()
            _print_top(f"after {steady_s:g} s steady", snap.statistics("lineno"), trace_top)
            _print_top("growth over the steady window", snap.compare_to(snap_full, "lineno"), trace_top)
        tx = sum(r.driver.stats.transactions for r in gw.buses.values())
        rss_steady = rss_mib()
        # then what a Prometheus adds: three /metrics scrapes from another process (after the CPU window)
        scraped = None
        http = gw.server("prometheus")
        if http is not None and http.address() is not None:
            host, port = http.address()
            url = f"http://{host}:{port}/metrics"
            code = f"import urllib.request as u\nfor _ in range(3): u.urlopen({url!r}, timeout=30).read()"
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
            if await proc.wait() == 0:
                scraped = round(rss_mib(), 1)
        return {
            "meters": len(ids),
            "points": points,
            "built_s": round(built, 2),
            "started_s": round(started, 2),
            "startup_to_full_table_s": round(full, 2),
            "profile_checks_done_s": round(checked, 2),
            "rss_mib": round(rss_steady, 1),
            "rss_after_scrapes_mib": scraped,
            "rss_at_full_table_mib": round(rss_full, 1),
            "rss_before_start_mib": round(rss0, 1),
            "cpu_share_steady": round(cpu_share, 4),
            "steady_window_s": steady_s,
            "transactions_per_s_steady": round(tx_rate, 1),
            "transactions": tx,
            "upstream_servers": [s.name for s in gw.servers],
            **({"tracemalloc_top": trace_top} if trace_top else {}),
        }
    finally:
        await gw.stop()


def py_spy() -> str:
    """The py-spy executable: the one next to this Python (the venv's), else on PATH; a clear error if neither."""
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    found = here if os.access(here, os.X_OK) else shutil.which("py-spy")
    if not found:
        raise SystemExit("SCALE_PROFILE needs py-spy: pip install py-spy (make bench installs it, bench extra)")
    return found


def spy_format(path: str) -> str:
    """py-spy's output format for a file name: flamegraph (.svg), speedscope (.json), else raw."""
    return {".svg": "flamegraph", ".json": "speedscope"}.get(os.path.splitext(path)[1].lower(), "raw")


async def run(
    n: int = 250,
    steady_s: float = 30.0,
    servers: bool | tuple[str, ...] = True,
    profile: str | None = None,
    trace_top: int = 0,
    profile_steady: bool = False,
) -> dict:
    """Start n simulated meters (other processes) and the gateway in its own process; its figures.

    `profile`: a py-spy output file to record the gateway's process into (start-up and steady state, or only the
    steady window with `profile_steady`); `trace_top`: print the child's top allocation sites to stderr."""
    spy_exe = py_spy() if profile else None
    sims = []
    try:
        for k in range((n + PER_SIM - 1) // PER_SIM):
            count = min(PER_SIM, n - k * PER_SIM)
            sims.append(await start_simulator(f"1-{count}"))
        text = build_config(n, [p for _, p in sims], servers)
        load = list(os.getloadavg())
        proc = subprocess.Popen(
            [sys.executable, __file__, "child", str(steady_s), str(trace_top)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        spy = None

        async def start_spy() -> subprocess.Popen:
            spy = subprocess.Popen(
                [spy_exe, "record", "-p", str(proc.pid), "-o", profile, "-f", spy_format(profile), "-r", "100"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            await asyncio.sleep(0.5)  # py-spy attaches (it fails fast without ptrace rights)
            if spy.poll() is not None:
                raise RuntimeError(f"py-spy did not attach: {spy.stderr.read().strip()[-500:]}")
            return spy

        try:
            if spy_exe and not profile_steady:
                spy = await start_spy()  # the child waits for its configuration: sampling starts before parsing
            proc.stdin.write(text)
            proc.stdin.close()
            lines: list[str] = []
            while line := await asyncio.to_thread(proc.stdout.readline):
                lines.append(line)
                if line.strip() == STEADY_MARK and spy_exe and profile_steady:
                    spy = await start_spy()
            await asyncio.to_thread(proc.wait, 60)
            out = "".join(lines)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if spy is not None:
                try:
                    _, err = await asyncio.to_thread(spy.communicate, None, 60)  # writes the file when the child ends
                except subprocess.TimeoutExpired:
                    spy.kill()
                    err = "timed out writing its output"
                if spy.returncode != 0 or not os.path.exists(profile):
                    print(f"py-spy failed (exit {spy.returncode}): {err.strip()[-500:]}", file=sys.stderr)
                else:
                    print(f"py-spy profile written to {profile}", file=sys.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"scale run failed (exit {proc.returncode})")
        res = json.loads(out.strip().splitlines()[-1])
        res["load_before"] = load
        if profile:
            res["profile"] = profile
        return res
    finally:
        for proc, _ in sims:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.poll() is None:
                proc.kill()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        import logging

        logging.basicConfig(level=logging.ERROR)  # the gateway's errors only (a bench run must have none)
        top = int(sys.argv[3]) if len(sys.argv) > 3 else 0
        print(json.dumps(asyncio.run(measure(sys.stdin.read(), float(sys.argv[2]), top))))
    else:
        n = int(os.environ.get("SCALE_METERS", "250"))
        ups = os.environ.get("SCALE_UPSTREAMS", "all")  # all, none, or e.g. modbus_tcp,prometheus
        on = True if ups == "all" else False if ups == "none" else tuple(ups.split(","))
        steady = float(os.environ.get("SCALE_STEADY_S", "30"))
        profile = os.environ.get("SCALE_PROFILE") or None
        top = int(os.environ.get("SCALE_TRACEMALLOC", "0"))
        steady_only = os.environ.get("SCALE_PROFILE_STEADY", "") not in ("", "0")
        print(json.dumps(asyncio.run(run(n, steady, on, profile, top, steady_only))))
