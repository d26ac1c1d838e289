"""Helpers shared by the tests (importable as `helpers`: tests/ is on the pytest python path)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

BACNET_CLIENT = Path(__file__).parent / "integration" / "bacnet_client.py"
FAST = "{power: 0.5, voltage: 0.5, energy: 0.5, alarm: 0.5, status: 0.5, config: 5}"


async def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll a condition until it holds or the timeout passes."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return pred()


async def more_polls(gw, n: int = 2, timeout: float = 30.0) -> bool:
    """Wait until every meter of the gateway has had `n` more good polls (e.g. after freezing the simulators, so that
    a poll in flight before it has ended and the table holds frozen values); an event, not a guessed duration."""
    scheds = [s for runner in gw.buses.values() for s in runner.schedules.values()]
    start = [s.polls for s in scheds]
    return await wait_for(lambda: all(s.polls >= p0 + n for s, p0 in zip(scheds, start, strict=True)), timeout)


#: examples per fuzz target: short in `make test`, long in `make fuzz` (FUZZ_EXAMPLES=100000)
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that is free on 127.0.0.1 right now (TCP by default)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_port() -> int:
    """A UDP port that is free on 127.0.0.1 right now."""
    return free_port(socket.SOCK_DGRAM)


class BacnetClient:
    """A bacpypes3 client in its own process (integration/bacnet_client.py); every call is bounded in time."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, target_port: int) -> BacnetClient:
        """Start the client process against the device at 127.0.0.1:target_port; returns once it is ready."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(BACNET_CLIENT),
            str(free_udp_port()),
            f"127.0.0.1:{target_port}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        c = cls(proc)
        assert json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))["ready"]
        return c

    async def __call__(self, cmd: str, **kw) -> dict:
        """Send one command (see bacnet_client.py) and return its JSON answer."""
        self.proc.stdin.write((json.dumps({"cmd": cmd, **kw}) + "\n").encode())
        await self.proc.stdin.drain()
        return json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 30))

    async def close(self) -> None:
        """Ask the process to quit; kill it if it does not within 5 s."""
        if self.proc.returncode is None:
            self.proc.stdin.write(b'{"cmd": "quit"}\n')
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def audit_attempts(path: Path) -> list[dict]:
    """The write attempts of an audit file: not the intent line before an accepted write, nor journal checkpoints."""
    if not path.exists():
        return []
    records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r for r in records if r.get("decision") != "intent" and "event" not in r]


class GatewayRun:
    """`meter-gateway run -c CFG` in a child process, output in a log file; stop(): SIGTERM, killed after 20 s."""

    def __init__(
        self,
        cfg: Path,
        log: Path,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
        cwd: Path | None = None,
    ) -> None:
        self.log = log
        self.fh = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(
            [*prefix, sys.executable, "-m", "meter_gateway.cli", "run", "-c", str(cfg)],
            stdout=self.fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )

    def wait_for(self, text: str, timeout: float = 60.0) -> bool:
        """Wait until `text` is in the log (False at the timeout or when the process has ended without it).

        The default bound is generous: a process start on a loaded 2-core machine took 16 s once (imports).
        """
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.p.poll() is None:
            if text in self.log.read_text():
                return True
            time.sleep(0.1)
        return text in self.log.read_text()

    def stop(self) -> int:
        """SIGTERM, then kill after 20 s; the exit status (-9 when killed)."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(timeout=5)
            return -9
        finally:
            self.fh.close()
