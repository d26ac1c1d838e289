"""A small asyncio HTTP/1.1 server for read-only endpoints (/metrics, /health, exports): GET and HEAD only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from .base import ServerStartError

log = logging.getLogger(__name__)
MAX_REQUEST = 8192
READ_TIMEOUT = 10.0
MAX_CONNECTIONS = 64  # beyond this, a new connection is answered 503 at once and closed


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


class HttpServer:
    """Routes GET requests by path; everything else gets a plain error. Connections close after each answer."""

    def __init__(self, bind: str, port: int, name: str) -> None:
        self.bind, self.port, self.name = bind, port, name
        self.routes: dict[str, Handler] = {}
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task] = set()

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

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._conns) >= MAX_CONNECTIONS:
            log.debug("%s: %d connections open, refusing one more", self.name, len(self._conns))
            await self._send(writer, Response(503, b"too many connections\n"))
            writer.close()
            return
        if task is not None:
            self._conns.add(task)
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, ValueError):
                await self._send(writer, Response(400, b"bad request\n"))
                return
            except TimeoutError:
                await self._send(writer, Response(408, b"request timeout\n"))
                return
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
            handler = self.routes.get(url.path)
            if handler is None:
                await self._send(writer, Response(404, b"not found; try /metrics or /health\n"))
                return
            try:
                resp = handler(parse_qs(url.query))
                if asyncio.iscoroutine(resp):
                    resp = await resp
            except Exception:
                log.exception("%s: handler for %s failed", self.name, url.path)
                resp = Response(500, b"internal error\n")
            await self._send(writer, resp, head_only=method == "HEAD")
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._conns.discard(task)

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
