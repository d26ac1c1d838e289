"""No write path bypasses the policy: every call that can reach a meter is enumerated from the source code.

The chain is: upstream server -> WriteService.write (policy + audit) -> Gateway.perform_write (handed to the
write service as its `perform` callable, nowhere else) -> BusRunner.write -> Driver.write. Each link may be called
only by the link before it; the servers are driven by tests/integration/test_write_matrix.py (Modbus TCP),
tests/integration/test_bacnet.py (BACnet) and tests/integration/test_web_api.py (HTTP)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "meter_gateway"

# attribute called -> the only modules allowed to call it
ALLOWED = {
    "perform_write": {"app.py"},  # only where the gateway hands it to the write service
    "perform": {"writes.py"},
    "write_service": {"app.py"},  # servers get the write service through their ports, never from the gateway
    "_writes": {"servers/base.py", "servers/modbus_tcp.py", "servers/bacnet.py", "web/api.py"},
    "_command": {"drivers/modbus.py"},
}


def calls() -> list[tuple[str, str, int]]:
    out = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                out.append((str(path.relative_to(SRC)), node.attr, node.lineno))
    return out


def test_each_link_is_used_only_by_the_one_before_it():
    found = calls()
    for attr, allowed in ALLOWED.items():
        users = {f for f, a, _ in found if a == attr}
        assert users <= allowed, (attr, users - allowed)
    # Driver.write is reached only from BusRunner.write; BusRunner.write only from Gateway.perform_write
    runner_writes = [(f, n) for f, a, n in found if a == "write" and f == "polling.py"]
    assert runner_writes, "BusRunner.write passes writes to the driver"
    app_src = (SRC / "app.py").read_text()
    wiring = [line for line in app_src.splitlines() if "self.perform_write" in line]
    assert len(wiring) == 1 and "WriteService(" in wiring[0], wiring
    assert app_src.count("runner.write(") == 2  # commands and configuration/energy, both inside perform_write
    perform = app_src[app_src.index("async def perform_write") :]
    assert perform.count("runner.write(") == 2


def test_the_servers_write_only_through_the_write_service():
    for server in ("servers/modbus_tcp.py", "servers/bacnet.py", "web/api.py"):
        text = (SRC / server).read_text()
        assert "_writes().write(" in text or "ws.write(req)" in text
        for bypass in ("perform_write", "driver.write", "runner.write", ".write(meter"):
            assert bypass not in text, (server, bypass)


def test_writes_are_off_by_default():
    from meter_gateway.config import WritesSection

    w = WritesSection()
    assert w.enabled is False and w.allow_bacnet == [] and w.allow_modbus == []


def test_metrics_bind_to_loopback_by_default():
    from meter_gateway.config import PrometheusSection

    assert PrometheusSection().bind == "127.0.0.1"


def test_every_server_binds_to_loopback_when_the_key_is_absent():
    from meter_gateway.config import UpstreamSection

    up = UpstreamSection()
    assert (up.bacnet.bind, up.modbus_tcp.bind, up.prometheus.bind) == ("127.0.0.1",) * 3


def test_an_empty_allowlist_allows_no_source_when_writes_are_enabled():
    from meter_gateway.core.catalogue import load_catalogue
    from meter_gateway.core.write_policy import MeterRights, Verdict, decide

    point = load_catalogue().get("Demand_Interval")
    rights = MeterRights("m", False, True, False, frozenset({point.name}), frozenset(), frozenset({point.name}), False)
    for source in ("127.0.0.1", "10.0.0.5", "::1"):
        d = decide(point, 30, rights, writes_enabled=True, source=source, allowlist=[])
        assert d.verdict is Verdict.DENIED and "allowlist" in d.reason
    assert decide(point, 30, rights, writes_enabled=True, source="10.0.0.5", allowlist=["0.0.0.0/0"]).accepted
    assert not decide(point, 30, rights, writes_enabled=True, source="10.0.0.5", allowlist=["10.0.1.0/24"]).accepted
