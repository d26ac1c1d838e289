"""The gateway's HTTP server on aiohttp, inside the gateway's event loop: routes with a required role, connection
limits that make room by closing the connection waiting longest for its request, a /health reserve beyond the limit,
request time-outs and size limits, optional TLS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..ratelog import OnceLog
from .base import ServerStartError

log = logging.getLogger(__name__)
MAX_REQUEST = 8192  # request line and each header line
MAX_BODY = 65536  # default request body limit (logins, writes, scans: small JSON or forms)
READ_TIMEOUT = 10.0  # default time a client has to send its whole request
MAX_CONNECTIONS = 64  # default; beyond it, the connection waiting longest for its request is closed
MAX_PER_ADDRESS = 16
HEALTH_RESERVE = 8  # connections beyond the limit that may still ask /health when nobody can be made room for
ROLES = ("viewer", "operator", "admin")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


@dataclass
class Response:
    """An HTTP answer of a simple route."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    stream: AsyncIterator[bytes] | None = None  # a body sent as produced (chunked)
    headers: dict[str, str] | None = None


Handler = Callable[[dict[str, list[str]]], Awaitable[Response] | Response]
RawHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: decides whether a request may use a route needing `role` (None: public): None to go on, else the refusal
Authorizer = Callable[[web.Request, str | None], Awaitable[web.StreamResponse | None]]
_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 16\r\n"
    b"Connection: close\r\n\r\nrequest timeout\n"
)


class _Guard(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: admission, idle and header time-out."""

    def __init__(self, owner: HttpServer) -> None:
        self.owner = owner
        self.inner: Any = None
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.opened = 0.0
        self.active = 0  # requests being answered
        self.partial = False  # bytes of a request arrived that no handler has taken yet
        self.reserve = False  # admitted beyond the limit: answers /health only
        self._timer: asyncio.TimerHandle | None = None

    @property
    def reading(self) -> bool:
        """Waiting for a request (idle or receiving its head): may be closed to make room."""
        return self.active == 0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        loop = asyncio.get_running_loop()
        self.opened = loop.time()
        admitted = self.owner._admit(self)
        if not admitted and sum(1 for c in self.owner._conns if c.reserve) >= HEALTH_RESERVE:
            transport.close()  # every place busy answering and the /health reserve used: close at once
            return
        self.reserve = not admitted
        self.owner._conns.add(self)
        self.owner._by_transport[transport] = self
        self.inner = self.owner._factory()
        self.inner.connection_made(transport)
        self.arm()

    def arm(self) -> None:
        """(Re)start the time a client has for its next request."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.owner.idle_timeout, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self.active or self.transport is None or self.transport.is_closing():
            return
        if self.partial:  # a request begun and never finished
            with contextlib.suppress(Exception):
                self.transport.write(_TIMEOUT_408)
        self.transport.close()

    def close(self) -> None:
        """Close the connection now (made room for another, or the server stops)."""
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.active == 0:
            self.partial = True
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.owner._conns.discard(self)
        self.owner._by_transport.pop(self.transport, None)
        if self.inner is not None:
            self.inner.connection_lost(exc)


class _ProtocolLog:
    """aiohttp's protocol logger: a bad request is one line once per client (no stack trace), repeats at debug."""

    def __init__(self, once: OnceLog, name: str) -> None:
        self.once, self.name = once, name

    def exception(self, msg: str, *args: Any, exc_info: Any = None, **_kw: Any) -> None:
        """A request aiohttp could not parse or answer."""
        peer = str(args[0]) if args else ""
        what = " ".join(str(exc_info).split())[:200] if exc_info else msg % args
        self.once.event(
            peer, f"bad request {type(exc_info).__name__}", "%s: bad request from %s: %s", self.name, peer, what
        )

    def debug(self, *args: Any, **_kw: Any) -> None:
        """Details, without stack traces."""
        log.debug(*args)

    def warning(self, *args: Any, **_kw: Any) -> None:
        """Warnings aiohttp gives."""
        log.warning(*args)

    error = warning


class HttpServer:
    """Routes requests by method and path; each route names the role it needs (None: public)."""

    def __init__(
        self,
        bind: str,
        port: int,
        name: str,
        *,
        max_connections: int = MAX_CONNECTIONS,
        max_per_address: int = MAX_PER_ADDRESS,
        idle_timeout: float = READ_TIMEOUT,
        max_body: int = MAX_BODY,
        ssl_context: ssl.SSLContext | None = None,
        authorize: Authorizer | None = None,
    ) -> None:
        self.bind, self.port, self.name = bind, port, name
        self.max_connections, self.max_per_address, self.idle_timeout = max_connections, max_per_address, idle_timeout
        self.ssl_context = ssl_context
        self.authorize = authorize
        self.routes: dict[str, str | None] = {}  # path -> role, for the index
        self.app = web.Application(client_max_size=max_body, middlewares=[self._middleware])
        self.app.on_response_prepare.append(_security_headers)
        self.stopping = asyncio.Event()  # long answers (event streams) end when set
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._factory: Any = None
        self._conns: set[_Guard] = set()
        self._by_transport: dict[Any, _Guard] = {}
        self.once = OnceLog(log)

    # -- routes ---------------------------------------------------------------------------------------------
    def route(self, path: str, handler: Handler, role: str | None = None) -> None:
        """Serve `handler(query)` for GET and HEAD at `path`, to clients with `role` (None: everyone)."""

        async def adapter(request: web.Request) -> web.StreamResponse:
            query: dict[str, list[str]] = {}
            for k, v in request.query.items():
                query.setdefault(k, []).append(v)
            resp = handler(query)
            if asyncio.iscoroutine(resp):
                resp = await resp
            return await self.send(request, resp)

        self.add("GET", path, adapter, role)

    def add(self, method: str, path: str, handler: RawHandler, role: str | None = None) -> None:
        """Serve an aiohttp handler at `method path` (GET also answers HEAD) to clients with `role`."""
        self.routes.setdefault(path, role)

        async def guarded(request: web.Request) -> web.StreamResponse:
            if self.authorize is not None:
                refusal = await self.authorize(request, role)
                if refusal is not None:
                    return refusal
            return await handler(request)

        if method == "GET":
            self.app.router.add_get(path, guarded)  # and HEAD
        else:
            self.app.router.add_route(method, path, guarded)

    def add_static(self, prefix: str, directory: Any, role: str | None = None) -> None:
        """Serve the files of a folder under a URL prefix."""
        self.app.router.add_static(prefix, directory, name=None, append_version=False)
        self.routes.setdefault(prefix + "/{path}", role)

    @staticmethod
    async def send(request: web.Request, resp: Response) -> web.StreamResponse:
        """Turn a simple Response into aiohttp's (streamed when it has a stream)."""
        if resp.stream is None:
            out = web.Response(status=resp.status, body=resp.body, headers=resp.headers)
            out.headers["Content-Type"] = resp.content_type
            return out
        sr = web.StreamResponse(status=resp.status, headers=resp.headers)
        sr.headers["Content-Type"] = resp.content_type
        try:
            await sr.prepare(request)
            if request.method != "HEAD":
                await sr.write(resp.body)
                async for chunk in resp.stream:
                    await sr.write(chunk)  # waits for the reader: a slow reader slows the producer
            await sr.write_eof()
        finally:
            with contextlib.suppress(Exception):
                await resp.stream.aclose()  # type: ignore[attr-defined]
        return sr

    # -- request pipeline -----------------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        guard = self._by_transport.get(request.transport)
        if guard is not None:
            guard.active += 1
            guard.partial = False
            if guard._timer is not None:
                guard._timer.cancel()
                guard._timer = None
        try:
            if guard is not None and guard.reserve:  # admitted beyond the limit: one /health answer, then closed
                resp = await handler(request) if request.path == "/health" else _text(503, "too many connections\n")
                resp.force_close()
                return resp
            try:
                return await handler(request)
            except web.HTTPException as exc:
                if exc.status >= 400 and not exc.text:
                    exc.text = f"{exc.reason.lower()}\n"
                if exc.status == 404 and request.path != "/":
                    exc.text = "not found; try /metrics or /health\n"
                raise
            except (asyncio.CancelledError, ConnectionError):
                raise
            except Exception as exc:
                peer = guard.peer if guard is not None else ""
                self.once.event(
                    peer, f"handler {request.path}", "%s: handler for %s failed: %r", self.name, request.path, exc
                )
                return _text(500, "internal error\n")
        finally:
            if guard is not None:
                guard.active -= 1
                if guard.active == 0 and self._server is not None:
                    guard.arm()

    def _admit(self, conn: _Guard) -> bool:
        """Make room for a new connection by closing the one waiting longest for its request; False: none can go."""
        others = [c for c in self._conns if c is not conn]
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
        self._conns.discard(victim)  # gone now: a burst of new connections must not pick it again
        victim.close()
        return True

    # -- lifecycle ------------------------------------------------------------------------------------------
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
        self.stopping.clear()
        self._runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            keepalive_timeout=self.idle_timeout + 5,  # ours (the guard) closes first, with 408 when due
            shutdown_timeout=1.0,
            max_line_size=MAX_REQUEST,
            max_field_size=MAX_REQUEST,
            logger=_ProtocolLog(self.once, self.name),
        )
        await self._runner.setup()
        self._factory = self._runner.server
        loop = asyncio.get_running_loop()
        sock.listen(128)
        self._server = await loop.create_server(lambda: _Guard(self), sock=sock, ssl=self.ssl_context)
        return sock.getsockname()[:2]

    async def stop(self) -> None:
        """Stop accepting, end event streams and open connections; bounded in time and idempotent."""
        self.stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for c in list(self._conns):
            c.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner.cleanup(), 3)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 3)


def _text(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain", charset="utf-8", headers=headers)


async def _security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    """Headers every answer carries: no sniffing, no framing by other sites, no referrer leaks."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.content_type == "text/html":  # the pages run only their own scripts (no inline, nothing remote)
        response.headers.setdefault("Content-Security-Policy", CSP)
