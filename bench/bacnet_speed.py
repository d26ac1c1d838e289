"""BACnet/IP read speed of the gateway against the C reference (bacnet-stack's bacserv), measured by a raw-socket
client in its own process.

Three figures per server: ReadProperty per second with 1 request in flight, with 32 in flight (one socket, 32
invoke IDs), and ReadPropertyMultiple points per second (20 present-values per request, 1 in flight). The gateway
(32 simulated meters, polling as usual, in this process) and bacserv (its own process) are measured alternately,
3 rounds in one run; the ratios are gateway / bacserv per figure (median over the rounds, with the range). bacserv
comes from ../shared/tools/bacnet-stack/bin (or $BACNET_STACK_BIN); when it is absent the gateway's figures are
still measured and the ratios are null, with the reason. The client is plain Python and shares the machine's cores
with the server: its CPU share is recorded, and so is each server's CPU time per request (per point for RPM), measured
around each figure (the gateway's process time, bacserv's from /proc); the CPU ratio (bacserv's CPU per request over
the gateway's) is what the throughput ratio would be with a core per server and an unlimited client.

The gateway's requests read present-value of its analog inputs in turn (RPM: 20 different objects per request);
bacserv serves one analog input (instance 1), which every request reads (RPM: 20 times in one request).
`python bench/bacnet_speed.py` prints the table and one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from bacnet_peer import start_gateway

HERE = Path(__file__).resolve().parent
ROUNDS = 3
SECONDS = 3.0  # per figure, per server, per round
WINDOW = 32
RPM_POINTS = 20
BACSERV_DEVICE = 260001


# -- the client (its own process) ---------------------------------------------------------------------------------
def _oid(t: int, i: int) -> bytes:
    return b"\x0c" + struct.pack(">I", (t << 22) | i)


def _frame(invoke: int, service: int, body: bytes) -> bytes:
    apdu = bytes((0x02, 0x05, invoke, service)) + body  # segmented answer accepted, max-APDU 1476
    npdu = b"\x01\x04" + apdu
    return struct.pack(">BBH", 0x81, 0x0A, 4 + len(npdu)) + npdu


def rp_body(t: int, i: int) -> bytes:
    """ReadProperty present-value service data."""
    return _oid(t, i) + b"\x19\x55"


def rpm_body(objects: list[tuple[int, int]]) -> bytes:
    """ReadPropertyMultiple service data: present-value of each object."""
    return b"".join(_oid(t, i) + b"\x1e\x09\x55\x1f" for t, i in objects)


def _answered(reply: bytes) -> int | None:
    """The invoke ID of a Complex-ACK datagram (no network addresses), None for anything else."""
    if len(reply) < 9 or reply[0] != 0x81 or reply[5] & 0x28:
        return None
    return reply[7] if reply[6] >> 4 == 3 else None


def run_window(
    sock: socket.socket, target: tuple[str, int], bodies: list[tuple[int, bytes]], window: int, seconds: float
) -> dict:
    """Keep `window` requests in flight for `seconds`; completed requests (per second) and errors."""
    frames = [[_frame(inv, svc, body) for svc, body in bodies] for inv in range(window)]
    nxt = [0] * window
    done = errors = lost = 0
    sock.settimeout(0.5)
    for inv in range(window):
        sock.sendto(frames[inv][0], target)
    c0 = time.process_time()
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        try:
            reply = sock.recv(2048)
        except TimeoutError:
            lost += 1  # resend every request in flight
            for inv in range(window):
                sock.sendto(frames[inv][nxt[inv] % len(bodies)], target)
            continue
        inv = _answered(reply)
        if inv is None:
            errors += 1
            if len(reply) < 8:
                continue
            inv = reply[7]
        if inv >= window:
            continue
        done += 1
        if time.perf_counter() >= end:
            break
        nxt[inv] += 1
        sock.sendto(frames[inv][nxt[inv] % len(bodies)], target)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    # drain the answers still in flight so that the next figure starts clean
    sock.settimeout(0.2)
    try:
        while True:
            sock.recv(2048)
    except TimeoutError:
        pass
    return {"per_s": done / elapsed, "done": done, "errors": errors, "timeouts": lost, "client_cpu": cpu / elapsed}


FIGURES = ("rp_1", "rp_32", "rpm_points")


def client_main(port: int, objects: list[tuple[int, int]], figure: str) -> dict:
    """Measure one figure of one server (after a short warm-up)."""
    target = ("127.0.0.1", port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        if figure == "rpm_points":
            bodies = []
            for k in range(0, max(len(objects), RPM_POINTS), RPM_POINTS):
                batch = [objects[(k + j) % len(objects)] for j in range(RPM_POINTS)]
                bodies.append((14, rpm_body(batch)))
        else:
            bodies = [(12, rp_body(t, i)) for t, i in objects]
        warm = run_window(sock, target, bodies, 1, 0.3)
        r = run_window(sock, target, bodies, WINDOW if figure == "rp_32" else 1, SECONDS)
    per = RPM_POINTS if figure == "rpm_points" else 1
    return {
        "value": round(r["per_s"] * per, 1),
        "requests": r["done"] + warm["done"],
        "client_cpu": round(r["client_cpu"], 2),
        "errors": r["errors"],
        "timeouts": r["timeouts"],
    }


async def measure(port: int, objects: list[tuple[int, int]], server_cpu) -> dict:
    """Run a client process per figure against a server; the figures, with the server's CPU per request (less
    what the server uses when nobody asks, measured for a second before: the gateway polls its meters)."""
    t0, c0 = time.perf_counter(), server_cpu()
    await asyncio.sleep(1.0)
    idle = (server_cpu() - c0) / (time.perf_counter() - t0)
    out: dict = {"idle_cpu_share": round(idle, 3)}
    for figure in FIGURES:
        t0, c0 = time.perf_counter(), server_cpu()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--client", str(port), json.dumps(objects), figure, stdout=asyncio.subprocess.PIPE
        )
        text, _ = await asyncio.wait_for(proc.communicate(), 120)
        cpu = server_cpu() - c0 - idle * (time.perf_counter() - t0)
        got = json.loads(text.decode().strip().splitlines()[-1])
        per = RPM_POINTS if figure == "rpm_points" else 1
        got["server_cpu_us_per_item"] = round(1e6 * cpu / (got["requests"] * per), 2)
        out[figure] = got
    return out


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the servers ----------------------------------------------------------------------------------------------------
def bacserv_path() -> Path | None:
    """bacserv from ../shared/tools/bacnet-stack/bin beside the project root (or $BACNET_STACK_BIN)."""
    folder = Path(os.environ.get("BACNET_STACK_BIN") or HERE.parents[1] / "shared" / "tools" / "bacnet-stack" / "bin")
    tool = folder / "bacserv"
    return tool if tool.is_file() and os.access(tool, os.X_OK) else None


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_bacserv(tool: Path) -> tuple[subprocess.Popen, int]:
    """bacserv on a free UDP port (loopback interface); waits until it answers a ReadProperty."""
    port = _free_udp_port()
    env = dict(os.environ, BACNET_IP_PORT=str(port), BACNET_IFACE="lo")
    proc = subprocess.Popen(
        [str(tool), str(BACSERV_DEVICE)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        for _ in range(50):
            s.sendto(_frame(1, 12, rp_body(0, 1)), ("127.0.0.1", port))
            try:
                if _answered(s.recv(2048)) == 1:
                    return proc, port
            except TimeoutError:
                continue
    proc.kill()
    proc.wait(5)
    raise RuntimeError("bacserv did not answer on loopback")


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


async def run(meters: int = 32) -> dict:
    """Alternate gateway and bacserv over ROUNDS rounds; figures, ratios and the machine's load."""
    gw = await start_gateway(meters)
    tool = bacserv_path()
    ref = None
    note = None
    if tool is None:
        note = "bacserv absent (../shared/tools/bacnet-stack/bin): no reference, ratios not computed"
    else:
        try:
            ref = start_bacserv(tool)
        except (OSError, RuntimeError) as exc:
            note = f"bacserv did not start ({exc}): no reference, ratios not computed"
    load_before = os.getloadavg()
    rounds: list[dict] = []
    try:
        server = next(s for s in gw.servers if s.name == "bacnet")
        port = server.address()[1]
        ours = [(0, o.objectIdentifier[1]) for o in server.objects.values() if o._gw_spec.object_type == "analog-input"]
        for r in range(ROUNDS):
            row: dict = {"gateway": await measure(port, ours, time.process_time)}
            if ref is not None:
                row["bacserv"] = await measure(ref[1], [(0, 1)], partial(proc_cpu, ref[0].pid))
            rounds.append(row)
            print(f"bacnet speed    round {r + 1}: {json.dumps(row)}", file=sys.stderr, flush=True)
        fast = getattr(server.app, "fast_reads", None)
        answered = {"fast_path_answered": fast.answered, "normal_path": fast.passed} if fast else {}
    finally:
        if ref is not None:
            ref[0].terminate()
            try:
                ref[0].wait(5)
            except subprocess.TimeoutExpired:
                ref[0].kill()
                ref[0].wait(5)
        await gw.stop()
    out: dict = {
        "meters": meters,
        "rounds": ROUNDS,
        "seconds_per_figure": SECONDS,
        "window": WINDOW,
        "rpm_points_per_request": RPM_POINTS,
        "reference": str(tool) if ref is not None else None,
        "note": note,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "per_round": rounds,
    } | answered
    for key in FIGURES:
        g = [row["gateway"][key]["value"] for row in rounds]
        gc = [row["gateway"][key]["server_cpu_us_per_item"] for row in rounds]
        out[f"gateway_{key}"] = _median(g)
        out[f"gateway_{key}_range"] = [min(g), max(g)]
        out[f"gateway_{key}_cpu_us"] = _median(gc)
        if ref is not None:
            b = [row["bacserv"][key]["value"] for row in rounds]
            bc = [row["bacserv"][key]["server_cpu_us_per_item"] for row in rounds]
            ratios = [x / y for x, y in zip(g, b, strict=True) if y]
            out[f"bacserv_{key}"] = _median(b)
            out[f"bacserv_{key}_range"] = [min(b), max(b)]
            out[f"bacserv_{key}_cpu_us"] = _median(bc)
            out[f"ratio_{key}"] = round(_median(ratios), 4) if ratios else None
            out[f"ratio_{key}_range"] = [round(min(ratios), 4), round(max(ratios), 4)] if ratios else None
            # CPU per request (per point for RPM) of bacserv / of the gateway: what the ratio would be if each
            # server had a core to itself and the client were not the limit
            cpu = [y / x for x, y in zip(gc, bc, strict=True) if x]
            out[f"cpu_ratio_{key}"] = round(_median(cpu), 4) if cpu else None
        else:
            out[f"ratio_{key}"] = None
            out[f"cpu_ratio_{key}"] = None
    return out


def table(res: dict) -> str:
    """The figures as text lines."""
    lines = []
    labels = {"rp_1": "ReadProperty, 1 in flight (/s)", "rp_32": f"ReadProperty, {WINDOW} in flight (/s)",
              "rpm_points": f"ReadPropertyMultiple, {RPM_POINTS} points (points/s)"}  # fmt: skip
    for key, label in labels.items():
        g, gr = res[f"gateway_{key}"], res[f"gateway_{key}_range"]
        line = f"bacnet speed    {label:42} gateway {g:9.0f} ({gr[0]:.0f}-{gr[1]:.0f})"
        if res.get(f"ratio_{key}") is not None:
            b, br, rr = res[f"bacserv_{key}"], res[f"bacserv_{key}_range"], res[f"ratio_{key}_range"]
            line += f"  bacserv {b:9.0f} ({br[0]:.0f}-{br[1]:.0f})"
            line += f"  ratio {res[f'ratio_{key}']:.3f} ({rr[0]:.3f}-{rr[1]:.3f})"
        line += (
            f"  server CPU us/{'point' if key == 'rpm_points' else 'request'}: gateway {res[f'gateway_{key}_cpu_us']}"
        )
        if res.get(f"cpu_ratio_{key}") is not None:
            line += f", bacserv {res[f'bacserv_{key}_cpu_us']} (ratio {res[f'cpu_ratio_{key}']:.3f})"
        lines.append(line)
    if res.get("note"):
        lines.append(f"bacnet speed    {res['note']}")
    lines.append(f"bacnet speed    load {res['load_before']} before, {res['load_after']} after")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        print(json.dumps(client_main(int(sys.argv[2]), [tuple(x) for x in json.loads(sys.argv[3])], sys.argv[4])))
    else:
        import logging

        logging.disable(logging.WARNING)
        res = asyncio.run(run())
        print(table(res))
        print(json.dumps(res))
