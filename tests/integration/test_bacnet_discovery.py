"""Discovery on a real (virtual) LAN (issue 14.5): two network namespaces joined by a veth pair, the gateway in one
bound by interface name, a raw client in the other. Needs root and iproute2: skipped visibly otherwise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bacnet_raw import gateway_processes

CLIENT = Path(__file__).parent / "discovery_client.py"
NET = "10.213.7"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def lan():
    """Namespaces <client, gateway> with veth ends mgwc (NET.1/24) and mgwg (NET.2/24); removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("discovery test needs root and iproute2 (ip netns) for a private virtual LAN")
    tag = str(os.getpid())
    client, gateway = f"mgwc{tag}", f"mgwg{tag}"
    try:
        _ip("netns", "add", client)
        _ip("netns", "add", gateway)
        _ip("link", "add", "mgwc", "netns", client, "type", "veth", "peer", "name", "mgwg", "netns", gateway)
        for ns, dev, host in ((client, "mgwc", 1), (gateway, "mgwg", 2)):
            _ip("-n", ns, "addr", "add", f"{NET}.{host}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", client, "route", "add", "default", "dev", "mgwc")  # so that 255.255.255.255 has a way out
    except subprocess.CalledProcessError as exc:
        for ns in (client, gateway):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        pytest.skip(f"cannot build a network namespace here: {exc.stderr.decode().strip()}")
    try:
        yield client, gateway
    finally:
        for ns in (client, gateway):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def test_i_am_at_start_up_and_who_is_global_local_and_unicast(lan, tmp_path):
    client_ns, gateway_ns = lan
    with gateway_processes(tmp_path) as make:
        port_probe = subprocess.run(  # the device's port is picked at run time, inside the gateway's namespace
            ["ip", "netns", "exec", gateway_ns, sys.executable, "-c",
             "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('', 0));"
             "print(s.getsockname()[1])"],
            capture_output=True, text=True, check=True, timeout=10,
        )  # fmt: skip
        port = int(port_probe.stdout)
        client = subprocess.Popen(
            ["ip", "netns", "exec", client_ns, sys.executable, str(CLIENT), str(port),
             "255.255.255.255", f"{NET}.255", f"{NET}.2"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert client.stdout.readline().strip() == "ready"
            gp = make(bind="mgwg", netns=gateway_ns, bacnet_port=port)
            out, _ = client.communicate(timeout=60)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(5)
        log = gp.log.read_text()
    heard = json.loads(out.strip().splitlines()[-1])
    assert heard == {"start-up": 599, "255.255.255.255": 599, f"{NET}.255": 599, f"{NET}.2": 599}, log
    assert f"BACnet/IP on interface mgwg: {NET}.2/24, broadcast {NET}.255" in log
    assert "loopback" not in log and "Traceback" not in log
