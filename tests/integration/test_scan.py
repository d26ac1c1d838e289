"""`meter-gateway scan` as a user runs it: simulated buses, no meters configured, models told apart, clean errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "meter_gateway.cli"]


def scan(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "scan", "-c", str(cfg), *args], capture_output=True, text=True, timeout=120)


RTU = """
gateway: {name: scan-test}
buses: [{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.15, retries: 0}]
meters:
  - {id: three-a, bus: rtu, address: 1, profile: eastron_sdm630, bacnet_instance_base: 1000}
  - {id: one, bus: rtu, address: 2, profile: eastron_sdm120, bacnet_instance_base: 1100}
  - {id: three-b, bus: rtu, address: 3, profile: eastron_sdm630, bacnet_instance_base: 1200}
upstream: {modbus_tcp: {enabled: false}, prometheus: {enabled: false}}
"""


def test_scan_tells_sdm630_from_sdm120_and_lists_each_meter_once(tmp_path: Path):
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(RTU)
    res = scan(cfg, "rtu", "--first", "1", "--last", "5")
    assert res.returncode == 0, res.stderr
    assert "# 3 meter(s) on bus rtu" in res.stdout
    found = dict(re.findall(r"address (\d+): already configured as meter '[\w-]+' \((\w+)\)", res.stdout))
    assert found == {"1": "eastron_sdm630", "2": "eastron_sdm120", "3": "eastron_sdm630"}, res.stdout


def test_scan_runs_with_no_meters_configured(tmp_path: Path):
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        "buses: [{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.1, retries: 0}]\nmeters: []\n"
        "upstream: {bacnet: {enabled: false}, modbus_tcp: {enabled: false}, prometheus: {enabled: false}}\n"
    )
    check = subprocess.run([*CLI, "check", "-c", str(cfg)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "no meters yet" in check.stdout, check.stdout + check.stderr
    res = scan(cfg, "rtu", "--first", "1", "--last", "3")
    assert res.returncode == 1 and "no meter answered on rtu" in res.stdout, res.stdout + res.stderr


def test_scan_mbus_lists_a_meter_with_a_primary_address_once(tmp_path: Path):
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        "buses: [{id: mb, type: mbus, simulated: true, timeout: 0.15, retries: 0}]\n"
        "meters:\n"
        "  - {id: ale3, bus: mb, address: 5, profile: mbus_saia_burgess_ale3, bacnet_instance_base: 1000}\n"
        '  - {id: sec, bus: mb, address: "12345678", profile: mbus_generic, bacnet_instance_base: 1100}\n'
    )
    res = scan(cfg, "mb", "--first", "0", "--last", "8")
    assert res.returncode == 0, res.stderr
    entries = [ln for ln in res.stdout.splitlines() if ln.startswith("  ")]
    assert len(entries) == 2, res.stdout  # the primary-addressed meter answers the wildcard search too: once
    assert any("address 5 secondary id" in ln and "'ale3'" in ln for ln in entries), res.stdout
    assert any("address 12345678" in ln and "'sec'" in ln for ln in entries), res.stdout


def test_scan_fails_cleanly_on_a_missing_port(tmp_path: Path):
    for kind in ("modbus_rtu", "mbus"):
        cfg = tmp_path / f"{kind}.yaml"
        cfg.write_text(f"buses: [{{id: line, type: {kind}, port: /dev/ttyNOPE9}}]\nmeters: []\n")
        res = scan(cfg, "line")
        assert res.returncode == 2, (kind, res.stdout, res.stderr)
        assert "serial port /dev/ttyNOPE9 does not exist" in res.stderr and "Traceback" not in res.stderr


def test_scan_names_the_process_holding_the_port(tmp_path: Path):
    master, slave = os.openpty()
    path = os.ttyname(slave)
    holder = subprocess.Popen(["sleep", "60"], stdin=slave)
    os.close(slave)  # only the other process holds the line now
    try:
        cfg = tmp_path / "gateway.yaml"
        cfg.write_text(f"buses: [{{id: line, type: modbus_rtu, port: {path}}}]\nmeters: []\n")
        res = scan(cfg, "line")
        assert res.returncode == 2, res.stdout + res.stderr
        assert f"is in use by process {holder.pid} (sleep 60)" in res.stderr
    finally:
        holder.kill()
        holder.wait(timeout=10)
        os.close(master)
