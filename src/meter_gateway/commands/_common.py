"""Helpers shared by subcommands: load the configuration or exit 2 with its error."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from ..config import EXIT_CONFIG, ConfigError, GatewayConfig, load_config
from ..profiles import ProfileError, ProfileRegistry, load_profiles


def add_config_arg(p) -> None:
    """Add the -c/--config option."""
    p.add_argument("-c", "--config", default="gateway.yaml", help="configuration file (default: gateway.yaml)")


def load_checked(path: str | Path, preflight: bool = True) -> tuple[GatewayConfig, ProfileRegistry]:
    """Load config and profiles; with `preflight`, every check `run` depends on; raise ConfigError / ProfileError."""
    cfg = load_config(path, preflight=preflight)
    profiles = load_profiles([Path(path).parent / d for d in cfg.gateway.profile_dirs])
    return cfg, profiles


def load_or_exit(path: str, preflight: bool = False) -> tuple[GatewayConfig, ProfileRegistry]:
    """Load config and profiles (with `preflight`: as `run` would); on error print it and exit with status 2."""
    try:
        cfg, profiles = load_checked(path, preflight)
    except (ConfigError, ProfileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    return cfg, profiles


#: display resolution by unit, for points whose catalogue entry gives none
UNIT_RESOLUTION = {
    "kWh": 0.01,
    "kVArh": 0.01,
    "kW": 0.001,
    "kVAr": 0.001,
    "kVA": 0.001,
    "V": 0.1,
    "A": 0.001,
    "Hz": 0.01,
    "%": 0.1,
    "": 0.001,
}


def show_value(point, value) -> str:
    """A value as a person reads it: state names, and numbers at the point's resolution (no float noise)."""
    if value is None:
        return ""
    if (point.states and not isinstance(value, float)) or isinstance(value, bool):
        states = point.states or ("inactive", "active")
        i = int(value)
        return states[i] if 0 <= i < len(states) else str(value)
    if isinstance(value, int) or point.unit in ("unix_s", "bps", "min", "s", "Wh/imp"):
        return f"{value:.0f}" if float(value).is_integer() else f"{value:g}"
    res = point.resolution or UNIT_RESOLUTION.get(point.unit, 0.001)
    decimals = max(0, -math.floor(math.log10(res) + 1e-9))
    return f"{value:.{decimals}f}"


def _ancestors() -> set[int]:
    """This process and the processes that started it (a wrapper or test harness holding a line open for us)."""
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
                pid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def port_holders(device: str) -> list[tuple[int, str]]:
    """Other processes that have a device open (pid, command line), as far as /proc lets this user see; this
    process and its ancestors are not counted (they started us and do not compete for the line)."""
    try:
        target = os.path.realpath(device)
        mine = _ancestors()
        pids = [d for d in os.listdir("/proc") if d.isdigit() and int(d) not in mine]
    except OSError:
        return []
    out = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.path.realpath(f"/proc/{pid}/fd/{fd}") == target for fd in fds):
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
                out.append((int(pid), cmd[:120]))
        except OSError:
            continue
    return out


def serial_port_problem(bus, what: str) -> str:
    """Why a command cannot use a bus's serial port now ('' when it can): missing, or held by another process."""
    port = getattr(bus, "port", "")
    if bus.simulated or not isinstance(port, str) or getattr(bus, "type", "") == "modbus_tcp":
        return ""
    if not os.path.exists(port):
        return (
            f"bus {bus.id}: serial port {port} does not exist (adapter unplugged? `ls /dev/serial/by-id/` lists them)"
        )
    holders = port_holders(port)
    if holders:
        who = ", ".join(f"process {pid} ({cmd})" for pid, cmd in holders[:3])
        return (
            f"bus {bus.id}: serial port {port} is in use by {who}; a running gateway owns its lines: "
            f"stop it (systemctl stop meter-gateway) to {what}"
        )
    return ""


def local_host(bind: str) -> str:
    """Where this machine reaches a server bound to `bind` (0.0.0.0 and :: through loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(bind, f"[{bind}]" if ":" in bind else bind)
