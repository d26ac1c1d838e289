"""A real gateway process: SIGHUP reloads (good and broken configs), SIGTERM stops cleanly in bounded time."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from helpers import GatewayRun

BASE = """
gateway: {{name: life, log_level: info}}
buses:
  - {{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.3}}
meters:
{meters}
upstream: {{bacnet: {{enabled: false}}, modbus_tcp: {{enabled: false}}, prometheus: {{enabled: false}}}}
"""
METER = "  - {{id: {id}, bus: rtu, address: {a}, profile: generic, bacnet_instance_base: {b}, modbus_unit: {a}}}"


def config(n: int) -> str:
    """A config with n simulated generic meters."""
    return BASE.format(meters="\n".join(METER.format(id=f"m{i}", a=i, b=1000 + 100 * i) for i in range(1, n + 1)))


def test_sighup_good_and_broken_config_then_sigterm(tmp_path: Path):
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(config(1))
    proc = GatewayRun(cfg, tmp_path / "log.txt")
    try:
        assert proc.wait_for("meter m1: communication established"), proc.log.read_text()
        # a broken file is refused and the running gateway keeps going
        cfg.write_text(config(1).replace("profile: generic", "profile: nosuch"))
        os.kill(proc.p.pid, signal.SIGHUP)
        assert proc.wait_for("reload refused, keeping the running configuration"), proc.log.read_text()
        assert "unknown profile 'nosuch'" in proc.log.read_text()
        assert proc.p.poll() is None
        # a good file is applied: the new meter is polled
        cfg.write_text(config(2))
        os.kill(proc.p.pid, signal.SIGHUP)
        assert proc.wait_for("configuration reloaded"), proc.log.read_text()
        assert proc.wait_for("meter m2: communication established"), proc.log.read_text()
    finally:
        rc = proc.stop()
    text = proc.log.read_text()
    assert rc == 0, text
    assert "stopped" in text and "Traceback" not in text


def test_sigint_stops_too(tmp_path: Path):
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(config(1))
    proc = GatewayRun(cfg, tmp_path / "log.txt")
    try:
        assert proc.wait_for("running (1 meters)")
        proc.p.send_signal(signal.SIGINT)
        assert proc.p.wait(timeout=20) == 0
    finally:
        proc.stop()


def test_systemd_notify_ready_watchdog_stopping(tmp_path: Path):
    import socket

    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(20)
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(config(1))
    proc = GatewayRun(cfg, tmp_path / "log.txt", env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"})
    got: list[str] = []
    try:
        while "WATCHDOG=1" not in got:
            got.append(sock.recv(256).decode())
        assert got[0] == "READY=1"
    finally:
        assert proc.stop() == 0
    sock.settimeout(2)
    try:
        while True:
            got.append(sock.recv(256).decode())
    except TimeoutError:
        pass
    sock.close()
    assert "STOPPING=1" in got
