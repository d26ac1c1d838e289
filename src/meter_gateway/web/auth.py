"""Logins, sessions, roles, CSRF, lock-out and tokens of the HTTP side (upstream.http)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web
from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..ratelog import OnceLog

log = logging.getLogger(__name__)

ROLE_RANK = {"viewer": 1, "operator": 2, "admin": 3}
METRICS = "metrics"  # the role of /metrics: open, or the metrics token when one is configured
SESSION_COOKIE = "mg_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
CONTROL_TOKEN_FILE = "control.token"
CONTROL_USER = "control-token"  # the identity of the local CLI in the audit log
MAX_SESSIONS = 1000
MAX_FAILURE_KEYS = 10000
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
NO_USERS = (
    "no user is configured for the web pages: add one under upstream.http.users "
    "(name, role: viewer|operator|admin, password_hash from `meter-gateway hash-password`) and reload the gateway\n"
)


#: where a request's Identity is kept once authorized (request[IDENTITY])
IDENTITY: Any = "identity"


def hash_password(password: str) -> str:
    """An argon2id hash of a password, for upstream.http.users[].password_hash."""
    return PasswordHasher().hash(password)


@dataclass
class Session:
    """A logged-in browser."""

    id: str
    user: str
    role: str
    csrf: str
    last_seen: float


@dataclass(frozen=True)
class Identity:
    """Who sends a request: a session's user, or the local CLI with the control token."""

    user: str
    role: str
    session: Session | None = None

    def may(self, role: str) -> bool:
        """Whether this identity has at least `role`."""
        return ROLE_RANK.get(self.role, 0) >= ROLE_RANK.get(role, 99)


if hasattr(web, "RequestKey"):  # aiohttp >= 3.14 wants typed keys
    IDENTITY = web.RequestKey("identity", Identity)


@dataclass
class _Failures:
    count: int = 0
    locked_until: float = 0.0
    logged: bool = False


@dataclass
class Auth:
    """Decides who may use which route; keeps sessions and failed-login counts in memory."""

    users: dict[str, Any]  # name -> HttpUser
    session_timeout: float = 1800.0
    lockout_after: int = 5
    lockout_seconds: float = 300.0
    secure_cookie: bool = False
    metrics_token: str = ""
    metrics_token_sha256: str = ""
    body_timeout: float = 10.0
    clock: Callable[[], float] = time.monotonic
    control_token: str = ""
    sessions: dict[str, Session] = field(default_factory=dict)
    failures: dict[str, _Failures] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hasher = PasswordHasher()
        self._dummy = ""  # made at the first login, with the users' parameters: unknown names cost the same
        self.once = OnceLog(log)
        self._control_path: Path | None = None
        self._verifying: asyncio.Semaphore | None = None  # argon2 costs memory and CPU: two checks at a time

    @classmethod
    def from_config(cls, http_cfg: Any, tls: bool, body_timeout: float) -> Auth:
        """Build from upstream.http."""
        return cls(
            users={u.name: u for u in http_cfg.users},
            session_timeout=http_cfg.session_timeout,
            lockout_after=http_cfg.lockout_after,
            lockout_seconds=http_cfg.lockout_seconds,
            secure_cookie=tls,
            metrics_token=http_cfg.metrics_token,
            metrics_token_sha256=http_cfg.metrics_token_sha256.lower(),
            body_timeout=body_timeout,
        )

    # -- control token (local CLI) -------------------------------------------------------------------------
    def new_control_token(self) -> str:
        """A fresh random control token (admin rights for whoever holds it)."""
        self.control_token = secrets.token_urlsafe(32)
        return self.control_token

    def write_control_token(self, state_dir: Path) -> None:
        """Write a fresh control token to <state_dir>/control.token, mode 0600 (owner only)."""
        token = self.new_control_token()
        path = state_dir / CONTROL_TOKEN_FILE
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{CONTROL_TOKEN_FILE}.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                os.fchmod(fh.fileno(), 0o600)
                fh.write(token + "\n")
            os.replace(tmp, path)
        except OSError as exc:
            log.warning(
                "cannot write the control token %s (%s): `meter-gateway read/scan/trace` cannot reach this gateway",
                path,
                exc.strerror,
            )
            return
        self._control_path = path

    def remove_control_token(self) -> None:
        """Delete the control token file if it is still this process's."""
        path, self._control_path = self._control_path, None
        if path is None:
            return
        with contextlib.suppress(OSError):
            if path.read_text().strip() == self.control_token:
                path.unlink()
        self.control_token = ""

    # -- identity ------------------------------------------------------------------------------------------
    def _bearer(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return None

    def _session(self, request: web.Request) -> Session | None:
        sid = request.cookies.get(SESSION_COOKIE)
        if not sid:
            return None
        s = self.sessions.get(sid)
        if s is None:
            return None
        now = self.clock()
        if now - s.last_seen > self.session_timeout:
            del self.sessions[sid]
            return None
        s.last_seen = now
        return s

    def identify(self, request: web.Request) -> Identity | None:
        """The sender of a request, or None."""
        token = self._bearer(request)
        if token is not None:
            if self.control_token and hmac.compare_digest(token.encode(), self.control_token.encode()):
                return Identity(CONTROL_USER, "admin")
            return None
        s = self._session(request)
        return Identity(s.user, s.role, s) if s is not None else None

    def _metrics_ok(self, request: web.Request) -> bool:
        if not self.metrics_token and not self.metrics_token_sha256:
            return True
        token = self._bearer(request)
        if token is not None:
            if self.metrics_token and hmac.compare_digest(token.encode(), self.metrics_token.encode()):
                return True
            digest = hashlib.sha256(token.encode()).hexdigest()
            if self.metrics_token_sha256 and hmac.compare_digest(digest, self.metrics_token_sha256):
                return True
        return self.identify(request) is not None

    async def authorize(self, request: web.Request, role: str | None) -> web.StreamResponse | None:
        """None when the request may go on (its identity in request['identity']), else the refusal."""
        if role is None:
            return None
        if role == METRICS:
            if self._metrics_ok(request):
                return None
            return _error(401, "/metrics needs its bearer token", {"WWW-Authenticate": 'Bearer realm="metrics"'})
        ident = self.identify(request)
        if ident is None:
            if not self.users and self._bearer(request) is None:
                return web.Response(status=403, text=NO_USERS, content_type="text/plain")
            if request.method in SAFE_METHODS and "text/html" in request.headers.get("Accept", ""):
                return _see_other(f"/login?next={quote(request.path_qs, safe='')}")
            return _error(401, "login required", {"WWW-Authenticate": 'Bearer realm="meter-gateway"'})
        if not ident.may(role):
            request[IDENTITY] = ident
            return _error(403, f"this needs the {role} role; {ident.user} is {ident.role}")
        if request.method not in SAFE_METHODS and ident.session is not None:
            if _cross_site(request):
                return _error(403, "cross-site request refused (Origin does not match this server)")
            sent = request.headers.get(CSRF_HEADER, "")
            if not sent and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
                with contextlib.suppress(Exception):
                    sent = str((await asyncio.wait_for(request.post(), self.body_timeout)).get(CSRF_FIELD, ""))
            if not sent or not hmac.compare_digest(sent.encode(), ident.session.csrf.encode()):
                return _error(403, f"CSRF token missing or wrong: send the session's token in {CSRF_HEADER}")
        request[IDENTITY] = ident
        return None

    # -- login / logout ------------------------------------------------------------------------------------
    def _locked(self, key: str, now: float) -> float:
        f = self.failures.get(key)
        return max(0.0, f.locked_until - now) if f is not None else 0.0

    def _fail(self, key: str, now: float, what: str) -> None:
        f = self.failures.get(key)
        if f is None:
            if len(self.failures) >= MAX_FAILURE_KEYS:  # forget finished lock-outs first, then the oldest
                for k in [k for k, v in self.failures.items() if v.locked_until < now][: MAX_FAILURE_KEYS // 2]:
                    del self.failures[k]
                if len(self.failures) >= MAX_FAILURE_KEYS:
                    del self.failures[next(iter(self.failures))]
            f = self.failures[key] = _Failures()
        if f.locked_until and f.locked_until <= now:  # a past lock-out: start counting again
            f.count, f.locked_until, f.logged = 0, 0.0, False
        f.count += 1
        if f.count >= self.lockout_after and not f.locked_until:
            f.locked_until = now + self.lockout_seconds
            if not f.logged:
                f.logged = True
                log.warning(
                    "logins locked for %s for %.0f s after %d failed attempts", what, self.lockout_seconds, f.count
                )

    async def login(self, request: web.Request) -> web.StreamResponse:
        """POST /login: form or JSON {username, password[, next]}; sets the session cookie."""
        if _cross_site(request):
            return _error(403, "cross-site login refused (Origin does not match this server)")
        form = not request.content_type.startswith("application/json")
        try:
            if form:
                data = dict(await asyncio.wait_for(request.post(), self.body_timeout))
            else:
                data = await asyncio.wait_for(request.json(), self.body_timeout)
        except TimeoutError:
            return _error(408, "request timeout")
        except (ValueError, json.JSONDecodeError):
            return _error(400, "send JSON {username, password} or a form with username and password")
        if not isinstance(data, dict):
            return _error(400, "send JSON {username, password} or a form with username and password")
        name, password = str(data.get("username", "")), str(data.get("password", ""))
        nxt = str(data.get("next", "") or "/")
        if not nxt.startswith("/") or nxt.startswith("//") or "\\" in nxt:
            nxt = "/"  # only local targets: no open redirect
        if not self.users:
            return web.Response(status=403, text=NO_USERS, content_type="text/plain")
        addr = request.remote or ""
        now = self.clock()
        wait = max(self._locked("u:" + name, now), self._locked("a:" + addr, now))
        if wait > 0:
            return _error(429, f"too many failed logins: try again in {wait:.0f} s", {"Retry-After": f"{wait:.0f}"})
        user = self.users.get(name)
        if self._verifying is None:
            self._verifying = asyncio.Semaphore(2)
        async with self._verifying:
            ok = await asyncio.to_thread(
                self._verify, user.password_hash if user is not None else self._dummy, password
            )
        if not ok or user is None:
            if user is not None:
                self._fail("u:" + name, now, f"user {name!r}")
            self._fail("a:" + addr, now, f"address {addr}")
            self.once.event(addr, "failed login", "failed login for %r from %s", name[:64], addr)
            if form:
                return _see_other(f"/login?failed=1&next={quote(nxt, safe='')}")
            return _error(401, "wrong user name or password")
        self.failures.pop("u:" + name, None)
        self.failures.pop("a:" + addr, None)
        session = self._new_session(user.name, user.role, now)
        log.info("login of %s (%s) from %s", user.name, user.role, addr)
        if form:
            resp: web.StreamResponse = _see_other(nxt)
        else:
            resp = web.json_response({"user": user.name, "role": user.role, "csrf": session.csrf, "next": nxt})
        resp.set_cookie(
            SESSION_COOKIE, session.id, httponly=True, samesite="Strict", secure=self.secure_cookie, path="/"
        )
        return resp

    async def _dummy_hash(self) -> str:
        if not self._dummy:
            params = extract_parameters(next(iter(self.users.values())).password_hash)
            hasher = PasswordHasher.from_parameters(params)
            self._dummy = await asyncio.to_thread(hasher.hash, secrets.token_hex(8))
        return self._dummy

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def _new_session(self, user: str, role: str, now: float) -> Session:
        for sid in [sid for sid, s in self.sessions.items() if now - s.last_seen > self.session_timeout]:
            del self.sessions[sid]
        if len(self.sessions) >= MAX_SESSIONS:
            del self.sessions[min(self.sessions.values(), key=lambda s: s.last_seen).id]
        s = Session(secrets.token_urlsafe(32), user, role, secrets.token_urlsafe(32), now)
        self.sessions[s.id] = s
        return s

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """POST /logout: ends the session (needs its CSRF token)."""
        ident: Identity | None = request.get(IDENTITY)
        if ident is not None and ident.session is not None:
            self.sessions.pop(ident.session.id, None)
        if not request.content_type.startswith("application/json") and "text/html" in request.headers.get("Accept", ""):
            resp: web.StreamResponse = _see_other("/login")
        else:
            resp = web.json_response({"ok": True})
        resp.del_cookie(SESSION_COOKIE, path="/")
        return resp

    async def session_info(self, request: web.Request) -> web.StreamResponse:
        """GET /api/session: who is logged in, the role and the CSRF token for state-changing requests."""
        ident: Identity = request[IDENTITY]
        csrf = ident.session.csrf if ident.session is not None else ""
        return web.json_response({"user": ident.user, "role": ident.role, "csrf": csrf})


def _cross_site(request: web.Request) -> bool:
    """A browser says the request comes from a page of another site (Origin header other than this server)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return False  # not sent by older browsers or non-browser clients: the CSRF token and SameSite decide
    return origin == "null" or urlsplit(origin).netloc.lower() != request.host.lower()


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location}, text=f"see {location}\n")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def read_control_token(state_dir: Path) -> str | None:
    """The running gateway's control token, if this user may read it."""
    try:
        return (state_dir / CONTROL_TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None
