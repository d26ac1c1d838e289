"""`meter-gateway run`: run until SIGTERM/SIGINT; SIGHUP reloads gateway.yaml."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import signal
from pathlib import Path

from ..config import EXIT_CONFIG, ConfigError
from ..logsetup import setup_logging
from ..profiles import ProfileError
from ..sdnotify import notify, watchdog_interval
from ._common import add_config_arg, load_checked, load_or_exit

log = logging.getLogger("meter_gateway.run")
STOP_TIMEOUT = 10.0


def add_parser(sub) -> None:
    """Register the subcommand."""
    p = sub.add_parser("run", help="run the gateway until SIGTERM/SIGINT (SIGHUP reloads the configuration)")
    add_config_arg(p)
    p.add_argument(
        "--status-every",
        type=float,
        default=0,
        metavar="SECONDS",
        help="print a one-line summary of every meter this often (0: never)",
    )
    p.set_defaults(func=_main)


def _main(args) -> int:
    cfg, _profiles = load_or_exit(args.config, preflight=True)
    setup_logging(cfg.gateway.log_level, cfg.gateway.log_format)
    return asyncio.run(run(Path(args.config), args.status_every))


def status_line(gw) -> str:
    """One line per meter: communication, active power and imported energy with their quality."""
    parts = []
    for mid in gw.table.meter_ids:
        vals = gw.table.meter_values(mid)
        if not vals["Communication_Status"].value:
            parts.append(f"{mid}: NO COMMUNICATION")
            continue
        p, e = vals["Active_Power_Total"], vals["Active_Energy_Import"]
        pw = f"{p.value:.3f} kW" if p.value is not None else "-"
        en = f"{e.value:.2f} kWh" if e.value is not None else "-"
        flag = "" if p.is_good and e.is_good else f" [{p.quality}/{e.quality}]"
        parts.append(f"{mid}: {pw}, {en}{flag}")
    return " | ".join(parts)


async def _status_loop(get_gw, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        log.info("status: %s", status_line(get_gw()))


async def _watchdog(get_gw, every: float) -> None:
    """Pet the systemd watchdog while the event loop runs and the gateway is started."""
    while True:
        if get_gw().started:
            notify("WATCHDOG=1")
        await asyncio.sleep(every)


async def run(path: Path, status_every: float = 0) -> int:
    """Run the gateway from a config file; returns the exit status."""
    from ..app import Gateway, SimulatedLines
    from ..servers.base import ServerStartError

    try:
        cfg, profiles = load_checked(path)
    except (ConfigError, ProfileError) as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    keep_heap_compact()
    sims = SimulatedLines(profiles)  # simulated buses (demo) live beside the gateway, not inside it
    gw = Gateway(cfg, profiles, config_path=path, sims=sims)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload_req = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_req.set)
    try:
        await gw.start()
    except (ServerStartError, OSError) as exc:
        log.error("start-up failed: %s", exc)
        await sims.close()
        return 1
    freeze_long_lived()
    print(f"meter-gateway {cfg.gateway.name} running ({len(gw.table.meter_ids)} meters); Ctrl-C to stop", flush=True)
    status_task = asyncio.create_task(_status_loop(lambda: gw, status_every)) if status_every > 0 else None
    notify("READY=1")
    wd = watchdog_interval()
    watchdog_task = asyncio.create_task(_watchdog(lambda: gw, wd)) if wd else None
    while not stop.is_set():
        waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(reload_req.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        if reload_req.is_set() and not stop.is_set():
            reload_req.clear()
            await reload(gw, path)
    log.info("stopping")
    notify("STOPPING=1")
    for task in (status_task, watchdog_task):
        if task is not None:
            task.cancel()
    try:
        await asyncio.wait_for(gw.stop(), STOP_TIMEOUT)
        await asyncio.wait_for(sims.close(), STOP_TIMEOUT)
    except TimeoutError:
        log.error("stop did not finish within %.0f s", STOP_TIMEOUT)
        return 1
    log.info("stopped")
    return 0


async def reload(gw, path: Path) -> bool:
    """SIGHUP: read and check the whole new file first; if good, apply it as a diff, else keep running as is.

    Never raises: whatever is wrong with the file or with starting a changed part is logged, the process lives.
    """
    try:
        cfg, profiles = load_checked(path)
    except (ConfigError, ProfileError) as exc:
        log.error("reload refused, keeping the running configuration: %s", str(exc).replace("\n", "; "))
        return False
    except Exception as exc:  # a bug in a check must not kill a running gateway either
        log.error("reload refused, keeping the running configuration: %s: %s", type(exc).__name__, exc)
        return False
    log.info("reloading configuration from %s", path)
    notify("RELOADING=1")
    ok = True
    gc.unfreeze()  # what the reload replaces can be collected
    try:
        plan = await gw.apply(cfg, profiles)
    except Exception as exc:
        ok = False
        log.error("configuration reloaded, but some parts did not start: %s", exc)
    else:
        summary = plan.summary()
        if summary == "nothing changed":
            log.info("configuration reloaded: nothing changed, everything kept running")
        else:
            log.info("configuration reloaded (replaced %s)", summary)
    setup_logging(cfg.gateway.log_level, cfg.gateway.log_format)
    freeze_long_lived(collect=True)
    notify("READY=1")
    return ok


def keep_heap_compact() -> bool:
    """glibc: give allocations of 128 KiB and more their own mapping, returned to the system when freed (mallopt
    M_MMAP_THRESHOLD). asyncio reads every socket into a 256 KiB buffer and shrinks it to what arrived; on the shared
    heap those holes kept the resident memory growing by about 1 MiB a minute under the soak's clients, flat with
    this (`make soak`). False where the C library has no mallopt (then nothing changes)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 128 * 1024))


#: mallopt parameter number of the mmap threshold (glibc malloc.h)
M_MMAP_THRESHOLD = -3


def freeze_long_lived(collect: bool = False) -> None:
    """Put every object alive now (the point table, the servers' objects: 13,500 BACnet objects for 250 meters)
    out of the cyclic garbage collector's reach, after start and after each reload (`collect`: what the reload
    dropped is collected first). Without it each full collection walks them all: about 2 % of a core and pauses of
    a quarter of a second at 250 meters. Objects made later are collected as usual."""
    if collect:
        gc.collect()
    gc.freeze()
