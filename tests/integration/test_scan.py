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
    found = dict(re.findall(r"address (\d+): already configured as meter '[\w-]+'; scan proposes (\w+)", res.stdout))
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


async def test_scan_through_the_running_gateway_pauses_that_bus_only(gateways, tmp_path: Path):
    import asyncio
    import socket

    from helpers import wait_for

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        http = s.getsockname()[1]
    text = f"""
gateway: {{name: scan-live}}
buses:
  - {{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.15, retries: 0}}
  - {{id: tcp, type: modbus_tcp, simulated: true, port: 0, timeout: 0.5}}
meters:
  - {{id: three, bus: rtu, address: 1, profile: eastron_sdm630, poll_intervals: {{power: 0.5}}}}
  - {{id: one, bus: rtu, address: 2, profile: eastron_sdm120, poll_intervals: {{power: 0.5}}}}
  - {{id: other, bus: tcp, address: 1, profile: generic, poll_intervals: {{power: 0.5}}}}
upstream:
  bacnet: {{enabled: false}}
  modbus_tcp: {{enabled: false}}
  prometheus: {{enabled: true, bind: 127.0.0.1, port: {http}}}
"""
    gw = await gateways(text)
    cfg = tmp_path / "scan.yaml"
    cfg.write_text(text)
    assert await wait_for(lambda: all(gw.table.is_online(m) for m in ("three", "one", "other")), 15)
    other, three = gw.runner_of("other").schedules["other"], gw.runner_of("three").schedules["three"]

    proc = await asyncio.create_subprocess_exec(
        *CLI, "scan", "-c", str(cfg), "rtu", "--first", "1", "--last", "8",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    gate = gw.runner_of("three")._gate  # held around each poll of bus rtu, and for the whole scan
    samples: list[tuple[float, bool, int, int]] = []  # (time, rtu gate held, rtu polls, other polls)

    async def sample() -> None:
        loop = asyncio.get_running_loop()
        while proc.returncode is None:
            samples.append((loop.time(), gate.locked(), three.polls, other.polls))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    await sampler
    # the scan: the longest stretch with the rtu gate held; meanwhile rtu did not poll and the tcp bus did
    runs, cur = [], []
    for smp in samples:
        if smp[1]:
            cur.append(smp)
        elif cur:
            runs.append(cur)
            cur = []
    runs.append(cur)
    scan_window = max(runs, key=lambda r: r[-1][0] - r[0][0] if r else 0)
    assert scan_window[-1][0] - scan_window[0][0] > 0.5, "no scan pause seen"
    assert scan_window[-1][2] - scan_window[0][2] <= 1  # at most the poll in progress when the scan asked
    assert scan_window[-1][3] > scan_window[0][3]  # the other bus kept polling during the scan
    out = out.decode()
    assert proc.returncode == 0, err.decode()
    assert "# scanned by the running gateway" in out, out
    found = dict(re.findall(r"address (\d+): already configured as meter '[\w-]+'; scan proposes (\w+)", out))
    assert found == {"1": "eastron_sdm630", "2": "eastron_sdm120"}, out
    polls_three = three.polls
    assert await wait_for(lambda: three.polls > polls_three, 10)  # and the scanned bus polls again
