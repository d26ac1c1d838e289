"""The HTTP side with logins: roles, CSRF, lock-out, cookie flags, tokens, the JSON and SSE API, HTTPS and the CLI.

One gateway with simulated meters serves the module; a real HTTP client (aiohttp) talks to it over loopback. Clients
bound to other loopback addresses (127.0.0.2...) stand for other machines in the per-address lock-out.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import sys
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from argon2 import PasswordHasher

from helpers import FAST, audit_attempts, wait_for
from meter_gateway.app import Gateway
from meter_gateway.config import parse_config
from meter_gateway.profiles import load_profiles

pytestmark = pytest.mark.asyncio(loop_scope="module")
ROOT = Path(__file__).resolve().parents[2]
# cheap hashes for the test (the parameters travel in the hash; the gateway verifies any argon2 hash)
HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORDS = {"vera": "viewer-pass", "otto": "operator-pass", "ada": "admin-pass", "victim": "victim-pass"}
ROLES = {"vera": "viewer", "otto": "operator", "ada": "admin", "victim": "viewer"}
METRICS_TOKEN = "metrics-token-0123456789"


def users_yaml() -> str:
    return "".join(
        f"      - {{name: {n}, role: {ROLES[n]}, password_hash: '{HASHER.hash(p)}'}}\n" for n, p in PASSWORDS.items()
    )


def config_text(tmp: Path, tls: str = "") -> str:
    return f"""
gateway: {{name: web-test, state_dir: {tmp}}}
buses:
  - {{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.3, retries: 0}}
meters:
  - {{id: a, bus: rtu, address: 1, profile: eastron_sdm630, tenant: T1, modbus_unit: 1, poll_intervals: {FAST}}}
  - {{id: c, bus: rtu, address: 2, profile: generic, tenant: T2, modbus_unit: 2, poll_intervals: {FAST}}}
upstream:
  bacnet: {{enabled: false}}
  modbus_tcp: {{enabled: false}}
  prometheus: {{bind: 127.0.0.1, port: 0}}
  http:
    metrics_token: {METRICS_TOKEN}
    lockout_after: 3
    lockout_seconds: 60
{tls}    users:
{users_yaml()}
writes: {{enabled: true}}
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web")
    path = tmp / "gateway.yaml"
    path.write_text(config_text(tmp))
    profiles = load_profiles()
    g = Gateway(parse_config(path.read_text(), str(path), profiles=profiles), profiles, config_path=path)
    await g.start()
    assert await wait_for(lambda: all(g.table.is_online(m) for m in ("a", "c")), 15)
    yield g
    await asyncio.wait_for(g.stop(), 15)


def base(gw) -> str:
    host, port = gw.server("prometheus").address()
    return f"http://{host}:{port}"


def client(source: str = "127.0.0.1") -> aiohttp.ClientSession:
    conn = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    jar = aiohttp.CookieJar(unsafe=True)  # keep cookies of an IP address host
    return aiohttp.ClientSession(connector=conn, cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=30))


async def login(gw, name: str, source: str = "127.0.0.1") -> tuple[aiohttp.ClientSession, str]:
    s = client(source)
    async with s.post(f"{base(gw)}/login", json={"username": name, "password": PASSWORDS[name]}) as r:
        assert r.status == 200, await r.text()
        doc = await r.json()
    assert doc["user"] == name and doc["role"] == ROLES[name] and doc["csrf"]
    return s, doc["csrf"]


async def test_without_login_only_health_and_metrics_with_token(gw):
    async with client() as s:
        async with s.get(f"{base(gw)}/health") as r:
            assert r.status == 200 and (await r.json())["status"] in ("ok", "degraded")
        for path in ("/api/overview", "/values", "/export?from=2026-01-01&to=2026-02-01", "/model/haystack.json"):
            async with s.get(base(gw) + path) as r:
                assert r.status == 401, path
        async with s.get(f"{base(gw)}/", headers={"Accept": "text/html"}, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"].startswith("/login?next=")
        async with s.get(f"{base(gw)}/metrics") as r:
            assert r.status == 401 and "Bearer" in r.headers["WWW-Authenticate"]
        async with s.get(f"{base(gw)}/metrics", headers={"Authorization": "Bearer wrong-token-wrong-token"}) as r:
            assert r.status == 401
        async with s.get(f"{base(gw)}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}) as r:
            assert r.status == 200 and 'meter_gateway_meter_up{bus="rtu",meter="a"' in await r.text()
        async with s.get(f"{base(gw)}/openapi.json") as r:
            assert r.status == 200 and "/api/overview" in (await r.json())["paths"]


async def test_login_cookie_session_and_logout(gw):
    s, csrf = await login(gw, "vera")
    async with s:
        async with s.post(f"{base(gw)}/login", json={"username": "vera", "password": PASSWORDS["vera"]}) as r:
            cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie  # plain HTTP
        async with s.get(f"{base(gw)}/api/session") as r:
            doc = await r.json()
        assert doc["user"] == "vera" and doc["role"] == "viewer"
        csrf = doc["csrf"]
        async with s.post(f"{base(gw)}/logout") as r:
            assert r.status == 403  # no CSRF token: the session stays
        async with s.post(f"{base(gw)}/logout", headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 200
        async with s.get(f"{base(gw)}/api/session") as r:
            assert r.status == 401
    async with client() as s:  # a form login redirects to `next`, a failed one back to the form
        async with s.get(f"{base(gw)}/login") as r:
            assert "<form" in await r.text() and "script-src 'self'" in r.headers["Content-Security-Policy"]
        form = {"username": "vera", "password": PASSWORDS["vera"], "next": "/api/session"}
        async with s.post(f"{base(gw)}/login", data=form, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/api/session"
        form["next"] = "//evil.example/"
        form["password"] = "nope"
        async with s.post(f"{base(gw)}/login", data=form, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"].startswith("/login?failed=1")


async def test_viewer_reads_but_may_not_write_scan_or_see_config(gw):
    s, csrf = await login(gw, "vera")
    async with s:
        async with s.get(f"{base(gw)}/api/overview") as r:
            ov = await r.json()
        assert ov["gateway"]["name"] == "web-test"
        assert [b["id"] for b in ov["buses"]] == ["rtu"] and ov["buses"][0]["transactions"] > 0
        assert 0 < ov["buses"][0]["busy_fraction"] <= 1
        meters = {m["id"]: m for m in ov["meters"]}
        assert meters["a"]["comm"] == "ok" and meters["a"]["profile"] == "eastron_sdm630"
        assert meters["a"]["last_good_read"] is not None
        async with s.get(f"{base(gw)}/api/meters/a") as r:
            doc = await r.json()
        pts = {p["name"]: p for p in doc["points"]}
        power = pts["Active_Power_Total"]
        assert power["unit"] == "kW" and power["quality"] == "good" and power["age_s"] is not None
        assert power["value"] == pytest.approx(gw.table.get("a", "Active_Power_Total").value, rel=0.5)
        assert not power["writable"]
        async with s.get(f"{base(gw)}/api/meters/c") as r:
            assert {p["name"]: p for p in (await r.json())["points"]}["Reset_Demand_Peak"]["writable"]
        async with s.get(f"{base(gw)}/api/meters/nope") as r:
            assert r.status == 404
        url = f"{base(gw)}/api/meters/c/points/Reset_Demand_Peak"
        async with s.post(url, json={"value": True}, headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 403 and "operator" in (await r.json())["error"]
        async with s.get(f"{base(gw)}/api/config") as r:
            assert r.status == 403
        async with s.post(f"{base(gw)}/api/buses/rtu/scan", json={}, headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 403
        async with s.get(f"{base(gw)}/api/audit?user=vera") as r:
            recs = (await r.json())["records"]
    # the viewer's attempt is in the audit log: protocol http, the user, refused
    assert recs and recs[0]["protocol"] == "http" and recs[0]["decision"] == "denied"
    assert recs[0]["point"] == "Reset_Demand_Peak" and recs[0]["source"] == "127.0.0.1"


async def test_operator_writes_with_csrf_only_and_is_audited(gw):
    s, csrf = await login(gw, "otto")
    url = f"{base(gw)}/api/meters/c/points/Reset_Demand_Peak"
    async with s:
        async with s.post(url, json={"value": True}) as r:
            assert r.status == 403 and "CSRF" in (await r.json())["error"]
        async with s.post(url, json={"value": True}, headers={"X-CSRF-Token": "forged"}) as r:
            assert r.status == 403
        async with s.post(url, json={"value": True}, headers={"X-CSRF-Token": csrf}) as r:
            doc = await r.json()
            assert r.status == 200 and doc["decision"] == "accepted", doc
        bad = f"{base(gw)}/api/meters/a/points/Active_Energy_Import"  # an energy register: never
        async with s.post(bad, json={"value": 0}, headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 403 and (await r.json())["decision"] == "denied"
        async with s.get(f"{base(gw)}/api/audit?user=otto&result=accepted") as r:
            recs = (await r.json())["records"]
    assert recs[0]["point"] == "Reset_Demand_Peak" and recs[0]["protocol"] == "http"
    on_disk = [r for r in audit_attempts(gw.write_service.audit.path) if r.get("user") == "otto"]
    assert [r["decision"] for r in on_disk] == ["accepted", "denied"]


async def test_admin_config_hides_secrets_scan_and_trace(gw):
    s, csrf = await login(gw, "ada")
    async with s:
        async with s.get(f"{base(gw)}/api/config") as r:
            doc = await r.json()
        http = doc["config"]["upstream"]["http"]
        assert {u["password_hash"] for u in http["users"]} == {"(hidden)"} and http["metrics_token"] == "(hidden)"
        assert "argon2" not in json.dumps(doc) and METRICS_TOKEN not in json.dumps(doc)
        assert doc["check"]["ok"] is True
        async with s.get(f"{base(gw)}/api/buses/rtu/trace") as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            frame = await _next_event(r, "frame")
        assert frame["dir"] in ("tx", "rx") and frame["hex"] and "unit" in frame["meaning"]
        body = {"first": 1, "last": 3, "secondary": False}
        async with s.post(f"{base(gw)}/api/buses/rtu/scan", json=body, headers={"X-CSRF-Token": csrf}) as r:
            doc = await r.json()
        assert r.status == 200 and sorted(f["address"] for f in doc["found"]) == [1, 2]
        assert "already configured as meter 'a'" in "\n".join(doc["yaml"])
        async with s.get(f"{base(gw)}/api/downloads/registers.csv") as r:
            assert r.status == 200 and (await r.text()).startswith("table,modicon,address")
        async with s.get(f"{base(gw)}/api/downloads/ede.csv") as r:
            assert r.status == 200 and "#Engineering-Data-Exchange" in await r.text()


async def _next_event(resp, name: str, timeout: float = 10) -> dict:
    """The data of the next server-sent event called `name`."""
    event = ""
    async with asyncio.timeout(timeout):
        while True:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == name:
                return json.loads(line[6:])


async def test_stream_sends_a_change_and_history_fills(gw):
    s, _ = await login(gw, "vera")
    async with s, s.get(f"{base(gw)}/api/stream?topic=meter:a") as r:
        first = await _next_event(r, "meter")
        # the simulator changes the power: a later event carries another reading of it
        t0 = {p["name"]: p for p in first["points"]}["Active_Power_Total"]["read_time"]
        for _ in range(20):
            doc = await _next_event(r, "meter")
            if {p["name"]: p for p in doc["points"]}["Active_Power_Total"]["read_time"] != t0:
                break
        else:
            pytest.fail("no change of Active_Power_Total arrived over the stream")
    gw.server("prometheus").web.history.sample()  # the sampler's next tick, now
    async with client() as s2:
        token = {"Authorization": f"Bearer {gw.server('prometheus').auth.control_token}"}
        async with s2.get(f"{base(gw)}/api/meters/a/history?point=Active_Power_Total&hours=1", headers=token) as r:
            hist = await r.json()
    assert hist["unit"] == "kW" and hist["samples"] and hist["samples"][-1][2] == "good"


async def test_lockout_per_user_and_per_address(gw):
    url = f"{base(gw)}/login"
    async with client("127.0.0.2") as s:
        for _ in range(3):
            async with s.post(url, json={"username": "victim", "password": "wrong"}) as r:
                assert r.status == 401
    right = {"username": "victim", "password": PASSWORDS["victim"]}
    async with client("127.0.0.3") as s, s.post(url, json=right) as r:  # locked from everywhere, right password too
        assert r.status == 429 and "Retry-After" in r.headers
    async with client("127.0.0.4") as s:  # an address guessing names is locked, for every user
        for n in ("x1", "x2", "x3"):
            async with s.post(url, json={"username": n, "password": "wrong"}) as r:
                assert r.status == 401
        async with s.post(url, json={"username": "ada", "password": PASSWORDS["ada"]}) as r:
            assert r.status == 429
    s, _ = await login(gw, "ada", "127.0.0.5")  # other addresses and users are not affected
    await s.close()


async def test_no_users_pages_answer_403_with_how_to():
    text = (
        "buses: [{id: rtu, type: modbus_rtu, simulated: true}]\n"
        "upstream: {bacnet: {enabled: false}, modbus_tcp: {enabled: false}, prometheus: {port: 0}}\n"
    )
    profiles = load_profiles()
    g = Gateway(parse_config(text, "gateway.yaml", profiles=profiles), profiles)
    await g.start()
    try:
        async with client() as s:
            for path in ("/", "/login", "/api/overview"):
                async with s.get(base(g) + path) as r:
                    assert r.status == 403 and "upstream.http.users" in await r.text(), path
            async with s.get(f"{base(g)}/metrics") as r:
                assert r.status == 200  # no token configured: open as before
    finally:
        await asyncio.wait_for(g.stop(), 15)


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    c, k = tmp / "cert.pem", tmp / "key.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return c, k


async def test_https_secure_cookie_and_cli_read_with_the_control_token(tmp_path):
    import ssl

    cert, key = _self_signed(tmp_path)
    path = tmp_path / "gateway.yaml"
    text = config_text(tmp_path, f"    tls: {{cert: {cert.name}, key: {key.name}}}\n")
    # a fixed free port: the CLI finds the gateway from the configuration
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path.write_text(text.replace("port: 0", f"port: {port}"))
    profiles = load_profiles()
    g = Gateway(parse_config(path.read_text(), str(path), profiles=profiles), profiles, config_path=path)
    await g.start()
    try:
        token_file = tmp_path / "control.token"
        assert token_file.exists() and (token_file.stat().st_mode & 0o777) == 0o600
        ctx = ssl.create_default_context(cafile=str(cert))
        url = f"https://127.0.0.1:{port}"
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), cookie_jar=jar) as s:
            async with s.post(f"{url}/login", json={"username": "vera", "password": PASSWORDS["vera"]}) as r:
                assert r.status == 200 and "Secure" in r.headers["Set-Cookie"]
            async with s.get(f"{url}/api/session") as r:
                assert (await r.json())["user"] == "vera"
        async with aiohttp.ClientSession() as s:  # plain HTTP is not served on an HTTPS port
            with pytest.raises(aiohttp.ClientError):
                async with s.get(f"http://127.0.0.1:{port}/health") as r:
                    await r.read()
        assert await wait_for(lambda: g.table.is_online("a"), 15)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        cli = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "meter_gateway.cli", "read", "-c", str(path), "a", "--live", "--format", "json"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await asyncio.wait_for(cli.communicate(), 60)
        assert cli.returncode == 0, err.decode()
        assert "Active_Power_Total" in out.decode()
    finally:
        await asyncio.wait_for(g.stop(), 15)
    assert not (tmp_path / "control.token").exists()  # removed at stop


async def test_overview_streams_share_one_document(gw):
    """Pages opened together get the overview built once per table version and STREAM_INTERVAL, not once each."""
    from meter_gateway.web.api import STREAM_INTERVAL

    web = gw.server("prometheus").web
    first = web._event_data(None, 7, 100.0)
    assert json.loads(first)["meters"]
    assert web._event_data(None, 7, 100.0 + STREAM_INTERVAL / 2) is first  # another page, same version: shared
    changed = web._event_data(None, 8, 100.0 + STREAM_INTERVAL / 2)
    assert changed is not first  # the table changed: built again
    later = web._event_data(None, 8, 100.0 + 2 * STREAM_INTERVAL)
    assert later is not changed  # older than STREAM_INTERVAL: built again (a page never gets an old one)
