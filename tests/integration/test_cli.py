"""The command line as a user runs it: real processes, simulated meters on ptys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from meter_gateway.core.catalogue import load_catalogue

CLI = [sys.executable, "-m", "meter_gateway.cli"]
SDM630_YAML = """
gateway: {name: cli-test}
buses:
  - {id: rs485, type: modbus_rtu, simulated: true, baudrate: 9600, timeout: 0.5}
meters:
  - {id: sdm, bus: rs485, address: 1, profile: eastron_sdm630, mid: true, bacnet_instance_base: 1000, modbus_unit: 1}
upstream: {bacnet: {enabled: false}, modbus_tcp: {enabled: false}, prometheus: {enabled: false}}
"""


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run meter-gateway with arguments; never hangs past `timeout`."""
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout)


def test_read_simulated_sdm630_prints_every_point_with_units(tmp_path: Path, profiles):
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(SDM630_YAML)
    res = run_cli("read", "-c", str(cfg), "sdm")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "answered" in lines[0]
    prof = profiles.get("eastron_sdm630")
    cat = load_catalogue()
    rows = {ln.split()[0]: ln for ln in lines[2:]}
    for name in prof.points:
        assert name in rows, name
        assert rows[name].rstrip().endswith("good"), rows[name]
        unit = cat.get(name).unit
        if unit:
            assert f" {unit} " in rows[name], (name, rows[name])
    res = run_cli("read", "-c", str(cfg), "sdm", "--format", "json")
    doc = json.loads(res.stdout)
    by = {p["point"]: p for p in doc["points"]}
    assert 200 < by["Voltage_L1_N"]["value"] < 260 and by["Voltage_L1_N"]["unit"] == "V"
    assert 49 < by["Frequency"]["value"] < 51 and by["Frequency"]["unit"] == "Hz"
    assert by["Active_Energy_Import"]["unit"] == "kWh" and by["Active_Energy_Import"]["quality"] == "good"


def test_read_unknown_meter_is_a_clear_error(tmp_path: Path):
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(SDM630_YAML)
    res = run_cli("read", "-c", str(cfg), "nope")
    assert res.returncode == 2 and "no meter 'nope'" in res.stderr and "Traceback" not in res.stderr


def test_bad_config_exits_2_naming_file_and_line(tmp_path: Path):
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(SDM630_YAML.replace("profile: eastron_sdm630", "profile: eastron_sdm631"))
    for cmd in ("run", "read"):
        args = [cmd, "-c", str(cfg)] + (["sdm"] if cmd == "read" else [])
        res = run_cli(*args)
        assert res.returncode == 2
        assert f"{cfg}:6:" in res.stderr and "unknown profile 'eastron_sdm631'" in res.stderr
        assert "Traceback" not in res.stderr


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_points_lists_the_53_points(fmt):
    res = run_cli("points", "--format", fmt)
    assert res.returncode == 0
    if fmt == "json":
        rows = json.loads(res.stdout)
        assert len(rows) == 53 and rows[0]["name"] == "Active_Energy_Import"
    else:
        assert len(res.stdout.strip().splitlines()) == 54
        assert "Voltage_Unbalance_Threshold" in res.stdout


def test_registers_lists_the_whole_map():
    res = run_cli("registers", "--format", "csv")
    assert res.returncode == 0
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("table,modicon,address")
    assert any(",30001,0,2,Active_Energy_Import," in ln for ln in lines)
    assert any("HR 1001" in ln and "CT_Primary_Rating" in ln for ln in lines)
    assert any("diag.comm_state" in ln for ln in lines)
    md = run_cli("registers").stdout
    assert md.startswith("| table |") and "| 40001 |" in md


def test_audit_command_shows_recent_attempts(tmp_path: Path):
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(SDM630_YAML + "writes: {enabled: true, audit_log: audit.jsonl}\n")
    res = run_cli("audit", "-c", str(cfg))
    assert res.returncode == 0 and "no write attempts" in res.stdout
    rec = {
        "time": "2026-01-01T00:00:00Z",
        "protocol": "modbus",
        "source": "10.0.0.5",
        "meter": "sdm",
        "point": "Demand_Interval",
        "value": 30,
        "decision": "denied",
        "reason": "writes are disabled",
        "meter_reply": "",
    }
    (tmp_path / "var").mkdir()  # relative state files live in the state directory: var/ beside the demo config
    (tmp_path / "var" / "audit.jsonl").write_text(json.dumps(rec) + "\n" + "not json\n")
    res = run_cli("audit", "-c", str(cfg), "-n", "5")
    assert "sdm.Demand_Interval=30 DENIED: writes are disabled" in res.stdout
