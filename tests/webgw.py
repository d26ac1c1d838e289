"""A gateway process with logins and simulated meters for the browser tests, the screenshots and the web load bench.

Importable as `webgw` (tests/ is on the pytest python path; bench scripts add it themselves).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from helpers import FAST, GatewayRun, free_port

SIM_TCP = Path(__file__).parent / "integration" / "sim_tcp_meter.py"
USERS = ("admin", "operator", "viewer")


def chromium_path() -> tuple[str | None, str]:
    """Debian's chromium (installed with apt-get when root and missing); (path, why not) otherwise (None, reason)."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path, ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "chromium is not installed and this is not root (apt-get install -y chromium)"
    r = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    path = shutil.which("chromium")
    return (path, "") if path else (None, f"apt-get install chromium failed: {r.stderr.strip()[-300:]}")


class WebGateway:
    """`meter-gateway run` with three users (admin, operator, viewer), a metrics token, the journal and writes on.

    Buses: `rtu` (simulated RTU, meters r1 and r2 of tenant T1) and `tcp` (meter t1 of tenant T2, a simulated
    Modbus TCP meter in its own process, `sim`, which a test may kill to cut the meter off).
    """

    def __init__(
        self,
        tmp: Path,
        tcp_units: int = 1,
        sim_log: Path | None = None,
        cheap_hashes: bool = True,
        http_extra: str = "",
    ) -> None:
        from argon2 import PasswordHasher

        self.tmp = tmp
        self.passwords = {u: secrets.token_urlsafe(12) for u in USERS}
        self.metrics_token = secrets.token_hex(16)
        # tests: argon2 at its smallest cost (the gateway verifies with the parameters inside each hash); the load
        # bench keeps the library's defaults, as `meter-gateway hash-password` makes them
        ph = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1) if cheap_hashes else PasswordHasher()
        users = ", ".join(f"{{name: {u}, role: {u}, password_hash: '{ph.hash(self.passwords[u])}'}}" for u in USERS)
        cmd = [sys.executable, str(SIM_TCP), "--units", str(tcp_units)]
        cmd += ["--log", str(sim_log)] if sim_log else []
        self.sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        sim_port = int(self.sim.stdout.readline())
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        common = "timeout: 0.3, retries: 0, fail_after: 2, backoff_max: 2"
        rtu = [("r1", "Shop 1", "T1", 1), ("r2", "Shop 2", "T1", 2)]
        meters = "\n".join(
            f"  - {{id: {m}, name: {n}, tenant: {t}, bus: rtu, address: {a}, profile: generic, poll_intervals: {FAST}}}"
            for m, n, t, a in rtu
        )
        for u in range(1, tcp_units + 1):
            name = "Office" if u == 1 else f"Unit {u}"
            meters += (
                f"\n  - {{id: t{u}, name: {name}, tenant: T2, bus: tcp, address: {u}, profile: generic,"
                f" poll_intervals: {FAST}}}"
            )
        cfg = tmp / "gateway.yaml"
        cfg.write_text(f"""
gateway: {{name: web-demo, state_dir: {tmp / "state"}}}
buses:
  - {{id: rtu, type: modbus_rtu, simulated: true, {common}}}
  - {{id: tcp, type: modbus_tcp, host: 127.0.0.1, port: {sim_port}, {common}}}
meters:
{meters}
upstream:
  bacnet: {{enabled: false}}
  modbus_tcp: {{enabled: false}}
  prometheus: {{enabled: true, bind: 127.0.0.1, port: {self.port}{http_extra}}}
  http: {{users: [{users}], metrics_token: {self.metrics_token}}}
journal: {{enabled: true}}
writes: {{enabled: true}}
""")
        self.run = GatewayRun(cfg, tmp / "gateway.log")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until /health answers and every meter has been read once; raises with the log otherwise."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.run.p.poll() is None:
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    if r.status == 200 and self.run.wait_for("meter t1: communication established", 0.1):
                        return
            except (OSError, urllib.error.HTTPError):
                pass
            time.sleep(0.2)
        raise RuntimeError("the gateway did not get ready:\n" + self.run.log.read_text()[-3000:])

    def kill_sim(self) -> None:
        """Cut meter t1 off: its simulator process ends."""
        if self.sim.poll() is None:
            self.sim.kill()
            self.sim.wait(timeout=10)

    def stop(self) -> int:
        """Stop the gateway and the simulator; the gateway's exit status."""
        self.kill_sim()
        if self.sim.stdout:
            self.sim.stdout.close()
        return self.run.stop()

    def log_text(self) -> str:
        """The gateway's output so far."""
        return self.run.log.read_text()


async def login_async(page, base: str, user: str, password: str) -> None:
    """`login` for Playwright's async API."""
    await page.goto(base + "/ui/login.html")
    await page.fill("#username", user)
    await page.fill("#password", password)
    await page.click("button[type=submit]")
    await page.wait_for_selector("#meters tbody tr")


def login(page, base: str, user: str, password: str) -> None:
    """Sign in through the login page and wait for the overview."""
    page.goto(base + "/ui/login.html")
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_selector("#meters tbody tr")
