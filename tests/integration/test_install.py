"""An installed copy (pip install of the project, not the source tree) run as an unprivileged user.

The configuration sits in a read-only folder owned by root, as under /etc/meter-gateway; the state directory is
given the way systemd's StateDirectory= gives it ($STATE_DIRECTORY, owned by the service user). The gateway must
pass `check`, start, serve /health and a meter value, keep its journal and audit log in the state directory, and
stop cleanly. Needs root (to add the test user); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
USER = "mgw-test"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to add an unprivileged test user (useradd)"),
    pytest.mark.skipif(not shutil.which("useradd"), reason="useradd missing: cannot add an unprivileged test user"),
]

CONFIG = """
gateway: {{name: installed}}
buses: [{{id: tcp, type: modbus_tcp, simulated: true, port: 0, timeout: 0.5}}]
meters:
  - {{id: m1, bus: tcp, address: 1, profile: generic, bacnet_instance_base: 1000, modbus_unit: 1,
     poll_intervals: {{power: 0.5, energy: 1}}}}
upstream:
  bacnet: {{enabled: false}}
  modbus_tcp: {{enabled: true, bind: 127.0.0.1, port: {modbus}}}
  prometheus: {{enabled: true, bind: 127.0.0.1, port: {http}}}
journal: {{enabled: true, interval: 1}}
"""


@pytest.fixture
def test_user():
    """An unprivileged system user, removed afterwards if this test added it."""
    try:
        pwd.getpwnam(USER)
        created = False
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
            check=True,
            capture_output=True,
        )
        created = True
    yield pwd.getpwnam(USER)
    if created:
        subprocess.run(["userdel", USER], check=False, capture_output=True)


def _as_user(user: pwd.struct_passwd, cmd: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    """Start a command directly as the test user (no intermediate process that would swallow signals)."""
    return subprocess.Popen(cmd, user=user.pw_uid, group=user.pw_gid, extra_groups=[], env=env, cwd="/", **kw)


def _run_as(user: pwd.struct_passwd, cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    p = _as_user(user, cmd, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=60)
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def _python_for_user(user: pwd.struct_passwd, env: dict[str, str]) -> str:
    """A Python of this minor version that the test user may run, able to import the dependencies."""
    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    for py in (os.path.realpath(sys.executable), f"/usr/bin/python{want}", f"/usr/local/bin/python{want}"):
        if not os.path.exists(py):
            continue
        try:
            probe = _run_as(user, [py, "-c", "import sys, pydantic, pymodbus; print(sys.version[:4])"], env)
        except OSError:  # e.g. an interpreter under /root
            continue
        if probe.returncode == 0 and probe.stdout.startswith(want):
            return py
    pytest.skip(f"no Python {want} that the test user can run with the test environment's packages")


def test_installed_copy_runs_as_an_unprivileged_user_with_a_read_only_config(test_user):
    top = Path(tempfile.mkdtemp(prefix="mgw-install-"))
    proc = None
    try:
        top.chmod(0o755)
        site = top / "site"
        r = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(ROOT)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            pytest.skip(f"pip could not build the package here: {r.stderr.strip()[-300:]}")
        etc = top / "etc" / "meter-gateway"
        etc.mkdir(parents=True)
        http, modbus = free_port(), free_port()
        conf = etc / "gateway.yaml"
        conf.write_text(CONFIG.format(http=http, modbus=modbus))
        conf.chmod(0o444)
        etc.chmod(0o555)
        (top / "etc").chmod(0o555)
        state = top / "state"
        state.mkdir(mode=0o750)
        os.chown(state, test_user.pw_uid, test_user.pw_gid)
        # the installed package first; its dependencies from this test environment (read-only for the user)
        env = {
            "PYTHONPATH": f"{site}:{sysconfig.get_paths()['purelib']}",
            "STATE_DIRECTORY": str(state),
            "HOME": str(state),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PATH": "/usr/bin:/bin",
        }
        py = _python_for_user(test_user, env)
        base = [py, "-m", "meter_gateway.cli"]
        where = _run_as(test_user, [py, "-c", "import meter_gateway; print(meter_gateway.__file__)"], env)
        assert where.stdout.startswith(str(site)), where  # the installed copy, not the source tree

        # a state directory the user may not write: `check` says so (file, line, fix), before anything opens
        locked = top / "locked"
        locked.mkdir(mode=0o755)
        check = _run_as(test_user, [*base, "check", "-c", str(conf)], {**env, "STATE_DIRECTORY": str(locked)})
        assert check.returncode == 2, check.stdout + check.stderr
        assert f"state directory: {locked} is not writable by user '{USER}'" in check.stderr, check.stderr
        assert "Traceback" not in check.stderr

        # Modbus TCP on 502 without the capability systemd grants: refused by `check`, not by a traceback at start
        low = top / "low.yaml"
        low.write_text(CONFIG.format(http=http, modbus=502))
        low.chmod(0o444)
        if int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) > 502:
            check = _run_as(test_user, [*base, "check", "-c", str(low)], env)
            assert check.returncode == 2 and "port 502 is privileged" in check.stderr, check.stdout + check.stderr

        check = _run_as(test_user, [*base, "check", "-c", str(conf)], env)
        assert check.returncode == 0, check.stdout + check.stderr

        log = top / "log.txt"
        with open(log, "w") as fh:
            proc = _as_user(test_user, [*base, "run", "-c", str(conf)], env, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/health", timeout=2) as resp:
                    health = json.loads(resp.read())
                if health.get("meters", {}).get("m1") == "ok":
                    break
            except OSError:
                pass
            time.sleep(0.3)
        assert proc.poll() is None, log.read_text()
        assert health is not None and health["meters"]["m1"] == "ok", (health, log.read_text())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (state / "journal.sqlite").exists():
            time.sleep(0.2)
        assert (state / "journal.sqlite").exists(), sorted(os.listdir(state))
        assert (state / "audit.jsonl").exists(), sorted(os.listdir(state))
        assert sorted(os.listdir(etc)) == ["gateway.yaml"]  # nothing written beside the configuration
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for d in (top / "etc", top / "etc" / "meter-gateway"):
            if d.exists():
                d.chmod(0o755)
        shutil.rmtree(top, ignore_errors=True)
