"""A whole gateway running in a background thread, so Hypothesis (synchronous) can hammer it with real sockets."""

from __future__ import annotations

import asyncio
import threading

import pytest

from meter_gateway.app import Gateway
from meter_gateway.config import parse_config
from meter_gateway.profiles import load_profiles

YAML = """
gateway: {name: fuzz}
buses: [{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.2}]
meters:
  - {id: a, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000, modbus_unit: 1,
     allow_config_writes: true}
upstream:
  bacnet: {enabled: true, bind: 127.0.0.1, netmask: 8, port: 0}
  modbus_tcp: {enabled: true, bind: 127.0.0.1, port: 0}
  prometheus: {enabled: true, bind: 127.0.0.1, port: 0}
writes: {enabled: true, allow_modbus: [127.0.0.0/8], allow_bacnet: [127.0.0.0/8], audit_log: AUDIT}
"""


class ThreadedGateway:
    """Runs a Gateway on its own event loop thread; `call` runs a coroutine there."""

    def __init__(self, text: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        profiles = load_profiles()
        self.gw = Gateway(parse_config(text, profiles=profiles), profiles)
        self.call(self.gw.start())

    def call(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def server(self, name: str):
        return next(s for s in self.gw.servers if s.name == name)

    def tasks(self) -> int:
        async def count() -> int:
            return len(asyncio.all_tasks())

        return self.call(count())

    def stop(self) -> None:
        try:
            self.call(self.gw.stop(), 20)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """One gateway for a fuzz module (restarting it per example would hide leaks)."""
    audit = tmp_path_factory.mktemp("fuzz") / "audit.jsonl"
    tg = ThreadedGateway(YAML.replace("AUDIT", str(audit)))
    try:
        import time

        end = time.monotonic() + 15
        while time.monotonic() < end and not tg.gw.table.get("a", "Voltage_L1_N").is_good:
            time.sleep(0.05)
        yield tg
    finally:
        tg.stop()
