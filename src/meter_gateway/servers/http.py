"""A small asyncio HTTP/1.1 server for read-only endpoints (/metrics, /health, exports): GET and HEAD only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from ..ratelog import OnceLog
from .base import ServerStartError

log = logging.getLogger(__name__)
MAX_REQUEST = 8192
READ_TIMEOUT = 10.0  # default time a client has to send its whole request
MAX_CONNECTIONS = 64  # default; beyond it, the connection waiting longest for its request is closed
MAX_PER_ADDRESS = 16
HEALTH_RESERVE = 8  # connections beyond the limit that may still ask /health when nobody can be made room for


@dataclass
class Response:
    """An HTTP answer."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    stream: AsyncIterator[bytes] | None = None  # a body sent as produced (no Content-Length, ends with the close)


Handler = Callable[[dict[str, list[str]]], Awaitable[Response] | Response]
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(eq=False)
class _Conn:
    """One client connection."""

    task: asyncio.Task
    peer: str
    opened: float
    reading: bool = True  # still waiting for the request head: may be closed to make room
    reserve: bool = False  # admitted beyond the limit: answers /health only


class HttpServer:
    """Routes GET requests by path; everything else gets a plain error. Connections close after each answer."""

    def __init__(
        self,
        bind: str,
        port: int,
        name: str,
        *,
        max_connections: int = MAX_CONNECTIONS,
        max_per_address: int = MAX_PER_ADDRESS,
        idle_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.bind, self.port, self.name = bind, port, name
        self.max_connections, self.max_per_address, self.idle_timeout = max_connections, max_per_address, idle_timeout
        self.routes: dict[str, Handler] = {}
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task, _Conn] = {}
        self.once = OnceLog(log)

    def route(self, path: str, handler: Handler) -> None:
        """Serve `handler` at `path`."""
        self.routes[path] = handler

    async def start(self) -> tuple[str, int]:
        """Bind (refusing a port another socket holds) and serve; returns the bound address."""
        fam = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.bind, self.port))
        except OSError as exc:
            sock.close()
            raise ServerStartError(f"{self.name}: cannot bind {self.bind}:{self.port}: {exc.strerror}") from exc
        self._server = await asyncio.start_server(self._client, sock=sock)
        return sock.getsockname()[:2]

    def _admit(self, conn: _Conn) -> bool:
        """Make room for a new connection by closing the one waiting longest for its request; False: none can go."""
        others = [c for c in self._conns.values() if c is not conn]
        same = [c for c in others if c.peer == conn.peer]
        if len(same) >= self.max_per_address:
            pool, why = same, f"more than {self.max_per_address} connections from {conn.peer}"
        elif len(others) >= self.max_connections:
            pool, why = others, f"more than {self.max_connections} connections"
        else:
            return True
        waiting = [c for c in pool if c.reading]
        src = conn.peer if pool is same else "*"  # the total limit is logged once, not once per address
        self.once.event(src, "connection limit", "%s: %s, closing the longest waiting", self.name, why)
        if not waiting:
            return False
        victim = min(waiting, key=lambda c: c.opened)
        self._conns.pop(victim.task, None)  # gone now: a burst of new connections must not pick it again
        victim.task.cancel()
        return True

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        conn = _Conn(task, peer[0] if peer else "", asyncio.get_running_loop().time())
        admitted = self._admit(conn)
        if not admitted and sum(1 for c in self._conns.values() if c.reserve) >= HEALTH_RESERVE:
            writer.close()  # every place busy answering and the /health reserve used: close at once
            return
        conn.reserve = not admitted
        self._conns[task] = conn
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_timeout)
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, ValueError):
                await self._send(writer, Response(400, b"bad request\n"))
                return
            except TimeoutError:
                await self._send(writer, Response(408, b"request timeout\n"))
                return
            conn.reading = False
            if len(head) > MAX_REQUEST:
                await self._send(writer, Response(431, b"request too large\n"))
                return
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                await self._send(writer, Response(400, b"bad request\n"))
                return
            method, target = parts[0], parts[1]
            if method not in ("GET", "HEAD"):
                await self._send(writer, Response(405, b"only GET is served\n"))
                return
            url = urlsplit(target)
            if conn.reserve and url.path != "/health":
                await self._send(writer, Response(503, b"too many connections\n"))
                return
            handler = self.routes.get(url.path)
            if handler is None:
                await self._send(writer, Response(404, b"not found; try /metrics or /health\n"))
                return
            try:
                resp = handler(parse_qs(url.query))
                if asyncio.iscoroutine(resp):
                    resp = await resp
            except Exception as exc:
                self.once.event(
                    conn.peer, f"handler {url.path}", "%s: handler for %s failed: %r", self.name, url.path, exc
                )
                resp = Response(500, b"internal error\n")
            await self._send(writer, resp, head_only=method == "HEAD")
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._conns.pop(task, None)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, resp: Response, head_only: bool = False) -> None:
        length = "" if resp.stream is not None else f"Content-Length: {len(resp.body)}\r\n"
        head = (
            f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'OK')}\r\nContent-Type: {resp.content_type}\r\n"
            f"{length}Connection: close\r\n\r\n"
        ).encode()
        writer.write(head if head_only else head + resp.body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        if resp.stream is not None:
            try:
                if not head_only:
                    async for chunk in resp.stream:
                        writer.write(chunk)
                        await writer.drain()  # a slow reader slows the producer, nothing piles up
            finally:
                with contextlib.suppress(Exception):
                    await resp.stream.aclose()  # type: ignore[attr-defined]

    async def stop(self) -> None:
        """Stop accepting and end open connections."""
        if self._server is not None:
            self._server.close()
            for t in list(self._conns):
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 3)
            self._server = None
