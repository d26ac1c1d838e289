"""Mutation fuzzing of the BACnet/IP device from captured real datagrams (tests/data/bacnet-seeds): radamsa when
installed, else our byte-level mutator. Each case comes from a fresh UDP socket; the gateway must never crash nor
hang (a ReadProperty over BACnet and a Modbus TCP read are checked every 100 cases and at the end). The figures are
printed: cases, answers, crashes, hangs, log lines and tracebacks per case (BACnet's own log volume is issue 21's
BACnet part: reported here, bounded by its own tests).

Cases: MUTATION_CASES (default FUZZ_EXAMPLES: 150 in `make test`; `make fuzz` runs 20,000)."""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from pathlib import Path

from mutation import load_seeds, mutate, radamsa_cases
from test_mutation_modbus_tcp import Records, healthy

from helpers import FUZZ_EXAMPLES

SEEDS = Path(__file__).resolve().parents[1] / "data" / "bacnet-seeds" / "requests.hex"
CASES = int(os.environ.get("MUTATION_CASES", str(FUZZ_EXAMPLES)))
SEED = int(os.environ.get("MUTATION_SEED", "21"))
READ_PV = bytes.fromhex("810a001101040244020c0c000003f31955")  # ReadProperty analog-input 1011 present-value


def send_case(port: int, data: bytes, wait: float = 0.02) -> bool:
    """True when anything came back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.sendto(data, ("127.0.0.1", port))
        s.settimeout(wait)
        try:
            return bool(s.recv(2048))
        except (TimeoutError, ConnectionError):
            return False


def bacnet_alive(port: int) -> bool:
    """A ReadProperty answered within 1 s (a Complex-ACK with the same invoke id)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(1.0)
        s.sendto(READ_PV, ("127.0.0.1", port))
        try:
            reply = s.recv(2048)
        except (TimeoutError, ConnectionError):
            return False
        return len(reply) > 8 and reply[6] >> 4 == 3 and reply[7] == READ_PV[8]


def test_mutated_real_bacnet_datagrams(running, capsys):
    port = running.server("bacnet").address()[1]
    mb = running.server("modbus_tcp").address()[1]
    seeds = load_seeds(SEEDS)
    assert bacnet_alive(port)
    cases = radamsa_cases(seeds, CASES, SEED)
    tool = "radamsa" if cases is not None else "byte mutator"
    if cases is None:
        rng = random.Random(SEED)
        cases = [mutate(rng, seeds, length_at=2) for _ in range(CASES)]
    loop_errors: list[dict] = []
    running.loop.call_soon_threadsafe(running.loop.set_exception_handler, lambda _loop, ctx: loop_errors.append(ctx))
    handler = Records()
    root = logging.getLogger()
    root.addHandler(handler)
    answered = hangs = 0
    t0 = time.monotonic()
    try:
        for i, data in enumerate(cases, start=1):
            answered += send_case(port, data)
            if i % 100 == 0 and not (bacnet_alive(port) and healthy(mb)):
                hangs += 1
        if not (bacnet_alive(port) and healthy(mb)):
            hangs += 1
    finally:
        root.removeHandler(handler)
    elapsed = time.monotonic() - t0
    crashes = 0 if running.thread.is_alive() else 1  # the gateway died; hangs: it stopped answering
    unhandled = [c for c in loop_errors if "exception" in c]  # exceptions escaping to the event loop
    lines = handler.records
    tracebacks = [r for r in lines if r.exc_info or "Traceback" in r.getMessage()]
    with capsys.disabled():
        print(
            f"\nmutation fuzz, BACnet/IP ({tool}, seed {SEED}, {len(seeds)} captured seeds): {len(cases)} cases in"
            f" {elapsed:.0f} s; answered {answered}; crashes {crashes}, hangs {hangs}, log lines {len(lines)}"
            f" ({len(lines) / max(1, len(cases)):.4f} per case), tracebacks {len(tracebacks)}, exceptions escaping"
            f" to the event loop {len(unhandled)}"
        )
        for c in unhandled[:3]:
            print(f"  escaped: {c.get('message')}: {c.get('exception')!r}")
    assert crashes == 0
    assert hangs == 0
