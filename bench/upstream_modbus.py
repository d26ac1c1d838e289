"""Modbus TCP throughput: 50-register reads with 1 and 8 connections, the gateway against a bare pymodbus server.

Each server runs in its own process (`serve gateway|bare`, started afresh per round), and the load comes from a
raw-socket client in a third process (`client PORT CONNECTIONS SECONDS`: one request in flight per connection, every
reply checked). The gateway and the reference alternate over ROUNDS rounds in one run; the result gives each round's
figures, the median of each and the ratio gateway / bare with its range over the rounds.

Run alone: `.venv/bin/python bench/upstream_modbus.py` (prints the JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time

ROUNDS = 3
CONNECTIONS = (1, 8)
SECONDS = 3.0
WARMUP = 0.5
COUNT = 50  # registers per read (holding 0-49: float32 measurements of unit 1)

YAML = """
gateway: {name: bench}
buses: [{id: rtu, type: modbus_rtu, simulated: true}]
meters: [{id: m1, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000, modbus_unit: 1}]
upstream:
  bacnet: {enabled: false}
  prometheus: {enabled: false}
  modbus_tcp: {enabled: true, bind: 127.0.0.1, port: 0}
"""


# -- servers (each in its own process) ---------------------------------------------------------------
async def _serve_gateway() -> None:
    from meter_gateway.app import Gateway
    from meter_gateway.config import parse_config
    from meter_gateway.profiles import load_profiles

    profiles = load_profiles()
    gw = Gateway(parse_config(YAML, profiles=profiles), profiles)
    await gw.start()
    try:
        while not gw.table.is_online("m1"):  # first poll done: reads answer values, not 0x0B
            await asyncio.sleep(0.05)
        print(f"PORT {gw.servers[0].address()[1]}", flush=True)
        await _until_stdin_closes()
    finally:
        await gw.stop()


async def _serve_bare() -> None:
    import logging

    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import SimData, SimDevice
    from pymodbus.simulator.simutils import DataType

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # as the gateway does: no per-disconnect dumps
    server = ModbusTcpServer(
        [SimDevice(id=1, simdata=[SimData(0, values=list(range(COUNT)), datatype=DataType.REGISTERS)])],
        address=("127.0.0.1", 0),
    )
    await server.serve_forever(background=True)
    try:
        print(f"PORT {server.transport.sockets[0].getsockname()[1]}", flush=True)
        await _until_stdin_closes()
    finally:
        await server.shutdown()


async def _until_stdin_closes() -> None:
    await asyncio.to_thread(sys.stdin.read)


def start_server(kind: str) -> tuple[subprocess.Popen, int]:
    """Start `serve KIND` in its own process; returns it and its port."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "serve", kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        stop_server(proc)
        raise RuntimeError(f"{kind} server did not start: {line!r}")
    return proc, int(line.split()[1])


def stop_server(proc: subprocess.Popen) -> None:
    """Close its stdin (it stops by itself), kill it after 10 s."""
    with contextlib.suppress(OSError):
        proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- the raw-socket client (own process) --------------------------------------------------------------
def client(port: int, connections: int, seconds: float, warmup: float = WARMUP) -> dict:
    """Read holding 0-49 of unit 1 over `connections` sockets, one request in flight each; replies per second."""
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(connections):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks.append(s)
    pdu = struct.pack(">BHH", 3, 0, COUNT)
    expect = 9 + 2 * COUNT
    state = {s: [0, b""] for s in socks}  # transaction id, bytes received

    def send(s: socket.socket) -> None:
        tid = (state[s][0] + 1) & 0xFFFF
        state[s][0] = tid
        s.send(struct.pack(">HHHB", tid, 0, 1 + len(pdu), 1) + pdu)

    for s in socks:
        sel.register(s, selectors.EVENT_READ)
        send(s)
    count = errors = 0
    t_start = time.monotonic()
    t_count = t_start + warmup
    end = t_count + seconds
    counted = False
    while True:
        now = time.monotonic()
        if not counted and now >= t_count:
            counted, count, errors = True, 0, 0
        if now >= end:
            break
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            buf = state[s][1] + s.recv(4096)
            while len(buf) >= 6:
                length = struct.unpack(">H", buf[4:6])[0]
                if len(buf) < 6 + length:
                    break
                frame, buf = buf[: 6 + length], buf[6 + length :]
                tid = struct.unpack(">H", frame[:2])[0]
                if tid != state[s][0] or len(frame) != expect or frame[7] != 3:
                    errors += 1
                else:
                    count += 1
                send(s)
            state[s][1] = buf
    elapsed = time.monotonic() - max(t_count, t_start)
    for s in socks:
        s.close()
    return {"rps": round(count / elapsed, 1), "errors": errors}


def run_client(port: int, connections: int, seconds: float) -> dict:
    """The client in its own process."""
    out = subprocess.run(
        [sys.executable, __file__, "client", str(port), str(connections), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    return json.loads(out.stdout)


# -- the comparison -------------------------------------------------------------------------------------
def compare(rounds: int = ROUNDS, seconds: float = SECONDS) -> dict:
    """Alternate gateway and bare pymodbus over `rounds` rounds; per-round figures, medians and ratios."""
    load = list(os.getloadavg())
    per: dict[str, list] = {f"{k}_{n}": [] for k in ("gateway", "bare") for n in CONNECTIONS}
    for r in range(rounds):
        order = ("gateway", "bare") if r % 2 == 0 else ("bare", "gateway")  # neither always goes first
        for kind in order:
            proc, port = start_server(kind)
            try:
                for n in CONNECTIONS:
                    res = run_client(port, n, seconds)
                    if res["errors"]:
                        raise RuntimeError(f"{kind}, {n} connections: {res['errors']} bad replies")
                    per[f"{kind}_{n}"].append(res["rps"])
            finally:
                stop_server(proc)
    out: dict = {"rounds": rounds, "seconds_per_measurement": seconds, "registers_per_read": COUNT}
    for n in CONNECTIONS:
        g, b = per[f"gateway_{n}"], per[f"bare_{n}"]
        ratios = [x / y for x, y in zip(g, b, strict=True)]
        out[f"gateway_rps_{n}"] = round(statistics.median(g), 1)
        out[f"bare_pymodbus_rps_{n}"] = round(statistics.median(b), 1)
        out[f"gateway_rps_{n}_rounds"] = g
        out[f"bare_pymodbus_rps_{n}_rounds"] = b
        out[f"ratio_{n}"] = round(statistics.median(ratios), 3)
        out[f"ratio_{n}_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
    out["load_before"], out["load_after"] = load, list(os.getloadavg())
    return out


async def run(rounds: int = ROUNDS, seconds: float = SECONDS) -> dict:
    """For bench/run.py: the comparison, off the event loop."""
    return await asyncio.to_thread(compare, rounds, seconds)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        asyncio.run(_serve_gateway() if sys.argv[2] == "gateway" else _serve_bare())
    elif len(sys.argv) > 1 and sys.argv[1] == "client":
        print(json.dumps(client(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))))
    else:
        print(json.dumps(compare(int(os.environ.get("ROUNDS", ROUNDS)), float(os.environ.get("SECONDS", SECONDS)))))
