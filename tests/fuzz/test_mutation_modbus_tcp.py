"""Mutation fuzzing of the Modbus TCP server from captured real requests (tests/data/modbus-tcp-seeds): radamsa when
installed, else our byte-level mutator. Each case goes on a fresh connection; the gateway must answer, close or wait,
never crash, never hang (a valid read is checked every 100 cases and at the end), never log a traceback, and log
at most one line per client and kind. The figures are printed: cases, outcomes, crashes, hangs, log lines per case.

Cases: MUTATION_CASES (default FUZZ_EXAMPLES: 150 in `make test`; `make fuzz` runs 20,000)."""

from __future__ import annotations

import logging
import os
import random
import socket
import struct
import time
from pathlib import Path

from mutation import load_seeds, mutate, radamsa_cases
from pymodbus.client import ModbusTcpClient

from helpers import FUZZ_EXAMPLES

SEEDS = Path(__file__).resolve().parents[1] / "data" / "modbus-tcp-seeds" / "requests.hex"
CASES = int(os.environ.get("MUTATION_CASES", str(FUZZ_EXAMPLES)))
SEED = int(os.environ.get("MUTATION_SEED", "21"))


class Records(logging.Handler):
    """Every record of the gateway's loggers at WARNING and above."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def send_case(port: int, data: bytes, wait: float = 0.05) -> str:
    """'answered' (a whole MBAP reply), 'closed' by the gateway, or 'waiting' (for the rest of a frame)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        try:
            s.sendall(data)
        except ConnectionError:
            return "closed"
        s.settimeout(wait)
        got = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    return "answered" if got else "closed"
                got += chunk
                if len(got) >= 6 and len(got) >= 6 + struct.unpack(">H", got[4:6])[0]:
                    return "answered"
        except TimeoutError:
            return "answered" if got else "waiting"
        except ConnectionError:
            return "closed"


def healthy(port: int) -> bool:
    """A valid read answered within 1 s."""
    c = ModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
    try:
        if not c.connect():
            return False
        r = c.read_holding_registers(20, count=2, device_id=1)
        return not r.isError()
    except Exception:
        return False
    finally:
        c.close()


def test_mutated_real_traffic(running, capsys):
    port = running.server("modbus_tcp").address()[1]
    seeds = load_seeds(SEEDS)
    cases = radamsa_cases(seeds, CASES, SEED)
    tool = "radamsa" if cases is not None else "byte mutator"
    if cases is None:
        rng = random.Random(SEED)
        cases = [mutate(rng, seeds) for _ in range(CASES)]
    loop_errors: list[dict] = []
    running.loop.call_soon_threadsafe(running.loop.set_exception_handler, lambda _loop, ctx: loop_errors.append(ctx))
    handler = Records()
    logger = logging.getLogger("meter_gateway")
    logger.addHandler(handler)
    outcomes = {"answered": 0, "closed": 0, "waiting": 0}
    hangs = 0
    t0 = time.monotonic()
    try:
        for i, data in enumerate(cases, start=1):
            outcomes[send_case(port, data)] += 1
            if i % 100 == 0 and not healthy(port):
                hangs += 1
        if not healthy(port):
            hangs += 1
    finally:
        logger.removeHandler(handler)
    elapsed = time.monotonic() - t0
    crashes = len(loop_errors) + (0 if running.thread.is_alive() else 1)
    lines = handler.records
    tracebacks = [r for r in lines if r.exc_info or "Traceback" in r.getMessage()]
    kinds = len(running.server("modbus_tcp").once.counts) + len(running.gw.write_service._refusals_logged.counts)
    with capsys.disabled():
        print(
            f"\nmutation fuzz, Modbus TCP ({tool}, seed {SEED}, {len(seeds)} captured seeds): {len(cases)} cases in"
            f" {elapsed:.0f} s; answered {outcomes['answered']}, closed {outcomes['closed']}, waiting for more"
            f" {outcomes['waiting']}; crashes {crashes}, hangs {hangs}, log lines {len(lines)}"
            f" ({len(lines) / max(1, len(cases)):.4f} per case, {kinds} kinds), tracebacks {len(tracebacks)}"
        )
    assert crashes == 0, loop_errors[:3]
    assert hangs == 0
    assert not tracebacks, [r.getMessage() for r in tracebacks[:3]]
    assert len(lines) <= kinds + 2, [r.getMessage() for r in lines[:20]]  # one line per client and kind
