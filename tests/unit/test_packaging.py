"""Deployment files: the Dockerfile's required instructions, the systemd unit, the Grafana dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_small_non_root_with_healthcheck():
    ins = instructions((ROOT / "Dockerfile").read_text())
    words = [w for w, _ in ins]
    assert [r for w, r in ins if w == "FROM"][-1].startswith("python:3.11-slim")
    users = [r for w, r in ins if w == "USER"]
    assert users and users[-1] not in ("root", "0")
    expose = " ".join(r for w, r in ins if w == "EXPOSE").split()
    health = next(r for w, r in ins if w == "HEALTHCHECK")
    assert "/health" in health
    # the configuration baked into the image serves on the exposed ports, bound to every interface (a server bound
    # to loopback inside a container cannot be reached through a published port)
    copied = next(r.split() for w, r in ins if w == "COPY" and r.endswith("/etc/meter-gateway/gateway.yaml"))
    from meter_gateway.config import load_config

    up = load_config(ROOT / copied[0]).upstream
    for server, proto in ((up.modbus_tcp, "tcp"), (up.bacnet, "udp"), (up.prometheus, "tcp")):
        assert server.enabled and server.bind == "0.0.0.0", server
        assert f"{server.port}/{proto}" in expose, (server.port, expose)
    assert f"127.0.0.1:{up.prometheus.port}/health" in health
    for path in (load_config(ROOT / copied[0]).writes.audit_log, load_config(ROOT / copied[0]).journal.path):
        assert path.startswith("/var/lib/meter-gateway/"), path  # the volume: /etc/meter-gateway is read-only
    assert "ENTRYPOINT" in words and "VOLUME" in words
    cmd = next(r for w, r in ins if w == "CMD")
    assert "/etc/meter-gateway/gateway.yaml" in cmd
    assert "dialout" in " ".join(r for w, r in ins if w == "RUN")  # serial devices passed through


def test_dockerignore_keeps_the_image_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored and "tests" in ignored


def test_systemd_unit_is_hardened():
    unit = (ROOT / "systemd" / "meter-gateway.service").read_text()
    for directive in (
        "User=meter-gateway",
        "SupplementaryGroups=dialout",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RestartPreventExitStatus=2",
    ):
        assert directive in unit, directive


def test_systemd_analyze_verify(tmp_path: Path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    exe = Path(sys.executable).parent / "meter-gateway"
    unit = (
        (ROOT / "systemd" / "meter-gateway.service")
        .read_text()
        .replace("/opt/meter-gateway/bin/meter-gateway", str(exe))
    )
    path = tmp_path / "meter-gateway.service"
    path.write_text(unit)
    res = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "meter-gateway.service" not in res.stderr, res.stderr  # no warning about our unit


def test_grafana_dashboard_uses_existing_metrics():
    from meter_gateway.servers import prometheus

    dash = json.loads((ROOT / "grafana" / "meter-gateway-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    used = set(re.findall(r"meter_gateway_[a-z_]+", exprs))
    documented = (ROOT / "docs" / "metrics.md").read_text()
    known = {prometheus.P + m for m, _, _ in prometheus.MEASURES.values()}
    for name in used:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert base in documented or base in known, name


def test_systemd_unit_reaches_common_serial_devices_and_does_not_loop():
    unit = (ROOT / "systemd" / "meter-gateway.service").read_text()
    allowed = {line.split("=", 1)[1].split()[0] for line in unit.splitlines() if line.startswith("DeviceAllow=")}
    for group in ("char-ttyUSB", "char-ttyACM", "char-ttyS", "char-ttyAMA"):
        assert group in allowed, group
    # RestartPreventExitStatus= only looks at the main process: a failing ExecStartPre would restart forever
    assert "ExecStartPre=" not in unit
    assert "StartLimitBurst=" in unit and "StartLimitIntervalSec=" in unit
    assert "StateDirectory=meter-gateway" in unit


def test_dockerfile_keeps_state_in_its_volume():
    ins = instructions((ROOT / "Dockerfile").read_text())
    volume = next(r for w, r in ins if w == "VOLUME")
    env = " ".join(r for w, r in ins if w == "ENV")
    assert "/var/lib/meter-gateway" in volume and "STATE_DIRECTORY=/var/lib/meter-gateway" in env


def test_run_refuses_a_bad_configuration_with_exit_2(tmp_path: Path):
    """What systemd's RestartPreventExitStatus=2 relies on: `run` checks first and exits 2, no traceback."""
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        "gateway: {timezone: Europe/Pariss}\n"
        "buses: [{id: b, type: modbus_tcp, simulated: true, port: 0}]\n"
        "meters: [{id: m, bus: b, address: 1, profile: generic, bacnet_instance_base: 1000}]\n"
    )
    res = subprocess.run(
        [sys.executable, "-m", "meter_gateway.cli", "run", "-c", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2, res.stderr
    assert f"{cfg}:1: gateway.timezone: unknown time zone 'Europe/Pariss'" in res.stderr
    assert "Traceback" not in res.stderr
