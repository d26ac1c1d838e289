"""The small HTTP server on real loopback sockets: connection limits make room, /health has a reserve."""

from __future__ import annotations

import asyncio
import logging

from meter_gateway.servers.http import HEALTH_RESERVE, HttpServer, Response


async def get(addr, path: str) -> bytes:
    reader, writer = await asyncio.open_connection(*addr)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    try:
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


async def test_health_is_answered_when_every_place_is_busy():
    release = asyncio.Event()

    async def slow(_q) -> Response:
        await release.wait()
        return Response(200, b"slow\n")

    srv = HttpServer("127.0.0.1", 0, "test", max_connections=4, max_per_address=4, idle_timeout=5)
    srv.route("/slow", slow)
    srv.route("/health", lambda _q: Response(200, b"ok\n"))
    addr = await srv.start()
    try:
        busy = [asyncio.create_task(get(addr, "/slow")) for _ in range(4)]
        await asyncio.sleep(0.3)  # the four are being answered: nobody can be made room for
        assert (await get(addr, "/health")).startswith(b"HTTP/1.1 200")
        assert (await get(addr, "/slow")).startswith(b"HTTP/1.1 503")
        # idle connections in the reserve make room in turn
        held = [await asyncio.open_connection(*addr) for _ in range(HEALTH_RESERVE + 4)]
        await asyncio.sleep(0.2)
        assert (await get(addr, "/health")).startswith(b"HTTP/1.1 200")
        for _r, w in held:
            w.close()
        release.set()
        assert all(r.startswith(b"HTTP/1.1 200") for r in await asyncio.gather(*busy))
    finally:
        await srv.stop()


async def test_clients_waiting_for_their_request_make_room():
    srv = HttpServer("127.0.0.1", 0, "test", max_connections=8, max_per_address=4, idle_timeout=30)
    srv.route("/health", lambda _q: Response(200, b"ok\n"))
    addr = await srv.start()
    try:
        held = [await asyncio.open_connection(*addr) for _ in range(20)]
        await asyncio.sleep(0.2)
        for _ in range(3):
            assert (await get(addr, "/health")).startswith(b"HTTP/1.1 200")
        closed = 0
        for r, w in held:
            try:
                async with asyncio.timeout(0.5):
                    closed += await r.read() == b""
            except TimeoutError:
                pass
            w.close()
        assert closed >= 16  # only the four most recent idle ones may still be open
    finally:
        await srv.stop()


async def test_bad_requests_get_400_and_one_log_line_without_traceback(caplog):
    srv = HttpServer("127.0.0.1", 0, "test", idle_timeout=5)
    srv.route("/health", lambda _q: Response(200, b"ok\n"))
    addr = await srv.start()
    try:
        for raw in (b"GARBAGE\r\n\r\n", b"GET /health HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n") * 3:
            reader, writer = await asyncio.open_connection(*addr)
            writer.write(raw)
            async with asyncio.timeout(5):
                assert (await reader.read()).startswith(b"HTTP/1.0 400")
            writer.close()
        assert (await get(addr, "/health")).startswith(b"HTTP/1.1 200")  # still serving
    finally:
        await srv.stop()
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(lines) <= 2 and all("bad request from 127.0.0.1" in r.getMessage() for r in lines), lines
    assert not any(r.exc_info or r.exc_text for r in caplog.records)
