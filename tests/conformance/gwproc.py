"""Helpers of the conformance suite: a real gateway process (simulated meters), its BACnet traffic captured with
tshark, the bacnet-stack command-line tools."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from helpers import free_udp_port

ROOT = Path(__file__).resolve().parents[2]
#: ../shared/tools/bacnet-stack/bin from the project root; BACNET_STACK_BIN overrides it (e.g. from a git worktree)
BACNET_STACK = Path(os.environ.get("BACNET_STACK_BIN") or ROOT.parent / "shared" / "tools" / "bacnet-stack" / "bin")

CONFIG = """
gateway: {{name: conformance, location: Test bench, timezone: {tz}}}
buses:
  - {{id: rtu, type: modbus_rtu, simulated: true, timeout: 1.0, retries: 1}}  # a slow first reply is no loss
meters:
  - {{id: gen, bus: rtu, address: 1, profile: generic, mid: false, allow_config_writes: true,
     bacnet_instance_base: 1000, modbus_unit: 1,
     poll_intervals: {{power: 0.5, voltage: 0.5, energy: 0.5, alarm: 0.5, status: 0.5, config: 5}}}}
  - {{id: mid, bus: rtu, address: 2, profile: eastron_sdm630, mid: true, bacnet_instance_base: 2000, modbus_unit: 2}}
upstream:
  bacnet: {{enabled: true, bind: 127.0.0.1, netmask: 8, port: 0, device_instance: 4711}}
  modbus_tcp: {{enabled: false}}
  prometheus: {{enabled: false}}
writes: {{enabled: true, allow_bacnet: [127.0.0.1]}}
journal: {{enabled: true}}  # the device then has the journal alarm Binary Input (gateway.Journal_Alarm)
"""
DEVICE = 4711
#: a zone far from UTC, so local-time cannot pass by accident
TIMEZONE = "Pacific/Kiritimati"


def ensure_tshark() -> str | None:
    """tshark's path; installed with apt-get when missing and running as root; None when unavailable."""
    path = shutil.which("tshark")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", "tshark"], env=env, capture_output=True, timeout=600)
        path = shutil.which("tshark")
    return path


@dataclass
class GatewayProcess:
    """A running `meter-gateway run` and what the suite needs to know about it."""

    proc: subprocess.Popen
    dir: Path
    log: Path
    port: int
    capture: Path | None = None
    tshark: subprocess.Popen | None = None
    tshark_path: str | None = None
    tshark_why: str = ""

    @property
    def address(self) -> tuple[str, int]:
        """The device's UDP address."""
        return ("127.0.0.1", self.port)

    @property
    def audit(self) -> Path:
        """The gateway's audit log."""
        return self.dir / "var" / "audit.jsonl"

    def log_text(self) -> str:
        """Everything the gateway logged so far."""
        return self.log.read_text(errors="replace")


def _wait_for(pred, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def start_gateway(tmp: Path, config: str) -> GatewayProcess:
    """Start a gateway process on loopback (port chosen by the gateway) and wait until its device answers."""
    cfg = tmp / "gateway.yaml"
    cfg.write_text(config)
    log = tmp / "gateway.log"
    fh = open(log, "w")  # noqa: SIM115 - the process writes to it until stop_gateway
    proc = subprocess.Popen(
        [sys.executable, "-m", "meter_gateway.cli", "run", "-c", str(cfg)],
        stdout=fh,
        stderr=subprocess.STDOUT,
        cwd=tmp,
    )
    fh.close()
    pattern = re.compile(r"BACnet/IP device \d+ \(.*?\) on 127\.0\.0\.1:(\d+)")

    def started() -> bool:
        return bool(pattern.search(log.read_text())) or proc.poll() is not None

    if not _wait_for(started, 60) or proc.poll() is not None:  # generous: a loaded machine starts slowly
        proc.kill()
        raise RuntimeError(f"gateway did not start:\n{log.read_text()}")
    port = int(pattern.search(log.read_text()).group(1))
    gp = GatewayProcess(proc, tmp, log, port)
    assert _wait_for(lambda: "meter gen: communication established" in gp.log_text(), 60), gp.log_text()
    return gp


def stop_gateway(gp: GatewayProcess) -> None:
    """SIGTERM, then kill after 20 s."""
    if gp.proc.poll() is None:
        gp.proc.send_signal(signal.SIGTERM)
    try:
        gp.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        gp.proc.kill()
        gp.proc.wait(timeout=5)


def start_capture(gp: GatewayProcess) -> None:
    """tshark on lo with a capture filter on the device's port; records why when it cannot run."""
    gp.tshark_path = ensure_tshark()
    if gp.tshark_path is None:
        gp.tshark_why = "tshark is not installed (Debian package tshark; the suite installs it when run as root)"
        return
    gp.capture = gp.dir / "bacnet.pcapng"
    err = gp.dir / "tshark.err"
    with open(err, "w") as eh:
        gp.tshark = subprocess.Popen(
            [gp.tshark_path, "-i", "lo", "-f", f"udp port {gp.port}", "-w", str(gp.capture), "-q"],
            stdout=subprocess.DEVNULL,
            stderr=eh,
        )
    # tshark says "Capturing on 'Loopback: lo'" once its capture runs
    _wait_for(lambda: gp.tshark.poll() is not None or "Capturing on" in err.read_text(errors="replace"), 10)
    time.sleep(0.2)
    if gp.tshark.poll() is not None:
        gp.tshark_why = f"tshark cannot capture on lo: {err.read_text(errors='replace').strip()[-300:]}"
        gp.tshark = None
        gp.capture = None


def stop_capture(gp: GatewayProcess) -> None:
    """Stop tshark (SIGINT flushes the file)."""
    if gp.tshark is not None and gp.tshark.poll() is None:
        gp.tshark.send_signal(signal.SIGINT)
        try:
            gp.tshark.wait(timeout=10)
        except subprocess.TimeoutExpired:
            gp.tshark.kill()
            gp.tshark.wait(timeout=5)


def run_tool(
    bin_dir: Path, tool: str, *args: str, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run one bacnet-stack tool on loopback from its own free UDP port."""
    env = {**os.environ, "BACNET_IFACE": "lo", "BACNET_IP_PORT": str(free_udp_port()), **(env or {})}
    return subprocess.run(
        [str(bin_dir / tool), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
