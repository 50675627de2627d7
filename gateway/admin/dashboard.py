"""The dashboard at ``/dashboard``, behind the admin key.

Two ways in, both checked against ``GATEWAY_ADMIN_KEY_SHA256`` (without it the dashboard answers
403, like the admin API):

- ``Authorization: Bearer <admin key>``, for scripts (``/dashboard/data``) and proxies;
- a browser signs in on the form ``/dashboard`` shows with a 401: it POSTs the key (never in a
  URL) and gets a session cookie: HttpOnly, SameSite=Strict, path ``/dashboard``, Secure over
  HTTPS, valid for ``SESSION_S``. The cookie holds an expiry, a random session id and an HMAC
  of both under a random key of this process (bound to the admin key's digest): never the key or
  its digest. The process keeps its open sessions (``Sessions``): signing out removes the id,
  so the cookie stops working at once, not when it expires. Sessions end when the process
  restarts or the admin key changes, and each replica signs (and lists) its own.

Sign-in and sign-out are POSTs a browser only accepts from the dashboard's own origin: a
``Sec-Fetch-Site`` other than ``same-origin`` (or, without it, a foreign ``Origin``) gets a 403
(CSRF), on top of the cookie's ``SameSite=Strict``. Wrong keys, from a form or a bearer header,
count toward the auth brake (``gateway.core.auth_brake``).

Pages are served with a strict Content-Security-Policy (same-origin script and style only) and
``no-store``; the charts are server-rendered SVG (``dashboard_svg``) from one snapshot
(``dashboard_data``), which ``/dashboard/data`` returns as JSON.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time

import orjson
from aiohttp import web

from gateway.core.auth_brake import AUTH_BRAKE
from gateway.core.errors import (
    AuthenticationFailed,
    InvalidRequest,
    ModelNotAllowed,
    RequestTimedOut,
)
from gateway.core.runtime import RUNTIME, Runtime
from gateway.policy.catalog import key_digest

from .dashboard_data import snapshot
from .dashboard_page import REFRESH_S, asset, login_page, page, panels

COOKIE = "gw_dashboard"
SESSION_S = 8 * 3600
SIGNING_KEY = web.AppKey("dashboard_signing_key", bytes)
MAX_SESSIONS = 1000  # open sign-ins kept per process; the oldest is dropped past it
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class Sessions:
    """This process's open dashboard sessions: id -> expiry (wall clock). A cookie is valid only
    while its id is listed, so signing out revokes it; bounded, expired ids pruned on sign-in."""

    def __init__(self, limit: int = MAX_SESSIONS) -> None:
        self._open: dict[str, float] = {}
        self._limit = limit

    def open(self, expires: float) -> str:
        now = time.time()
        self._open = {sid: until for sid, until in self._open.items() if until > now}
        while len(self._open) >= self._limit:
            del self._open[next(iter(self._open))]  # dicts keep insertion order: the oldest
        sid = secrets.token_urlsafe(18)
        self._open[sid] = expires
        return sid

    def valid(self, sid: str) -> bool:
        return self._open.get(sid, 0.0) > time.time()

    def close(self, sid: str) -> None:
        self._open.pop(sid, None)


SESSIONS = web.AppKey("dashboard_sessions", Sessions)
_STATIC = {
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: under no-referrer Chromium sends ``Origin: null`` with the
    # sign-in form, which no Origin check can tell from a sandboxed cross-site frame.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def setup(app: web.Application) -> None:
    """Add the dashboard's routes and its session signing key to ``app``."""
    app[SIGNING_KEY] = secrets.token_bytes(32)
    app[SESSIONS] = Sessions()
    app.add_routes(
        [
            web.get("/dashboard", show_dashboard),
            web.get("/dashboard/data", dashboard_data),
            web.get("/dashboard/panels", dashboard_panels),
            web.post("/dashboard/login", login),
            web.post("/dashboard/logout", logout),
            web.get("/dashboard/static/{name}", static_file),
        ]
    )


def _expected_digest(runtime: Runtime) -> str:
    expected = runtime.settings.admin_key_sha256
    if not expected:
        raise ModelNotAllowed(
            "The dashboard is disabled: set GATEWAY_ADMIN_KEY_SHA256.", code="admin_disabled"
        )
    return expected


def _key_matches(key: str, expected: str) -> bool:
    return hmac.compare_digest(key_digest(key.strip()), expected)


def _sign(request: web.Request, expires: int, sid: str, expected: str) -> str:
    message = f"dashboard|{expires}|{sid}|{expected}".encode()
    return hmac.new(request.app[SIGNING_KEY], message, hashlib.sha256).hexdigest()


def _session(request: web.Request) -> tuple[int, str, str] | None:
    """The cookie's ``(expires, session id, mac)`` when it is well formed: ASCII, a short
    number, a token and 64 hex digits. Anything else (a non-ASCII MAC, a 5,000-digit expiry) is
    no session, never an error."""
    raw = request.cookies.get(COOKIE, "")
    if not raw or len(raw) > 200 or not raw.isascii():
        return None
    expires_text, _, rest = raw.partition(".")
    sid, _, mac = rest.partition(".")
    if not (expires_text.isdigit() and len(expires_text) <= 12 and sid and len(mac) == 64):
        return None
    return int(expires_text), sid, mac


def _session_valid(request: web.Request, expected: str) -> bool:
    session = _session(request)
    if session is None:
        return False
    expires, sid, mac = session
    if expires < time.time() or not hmac.compare_digest(
        mac, _sign(request, expires, sid, expected)
    ):
        return False
    return request.app[SESSIONS].valid(sid)


def _signed_in(request: web.Request) -> Runtime | None:
    """The runtime when the request carries the admin key or a valid session; else ``None``.

    A wrong bearer key is refused outright (401), not treated as "no credentials".
    """
    runtime = request.app[RUNTIME]
    expected = _expected_digest(runtime)
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not _key_matches(key, expected):
            raise AuthenticationFailed("Admin key required.", code="invalid_admin_key")
        return runtime
    return runtime if _session_valid(request, expected) else None


def _same_origin(request: web.Request) -> None:
    """Refuse (403) a POST a browser sent from another site.

    ``Sec-Fetch-Site`` is the browser's own word (no page can set it): ``same-origin`` (or
    ``none``, typed by the user) passes, anything else (``cross-site``, ``same-site``: a sibling
    subdomain) is refused. It decides before ``Origin`` does because a browser sends
    ``Origin: null`` for a same-origin form under some referrer policies (Chromium under
    ``no-referrer``, which this page once sent: every sign-in was refused). Without it (older
    browsers), the ``Origin`` must name this host. Scripts (neither header) pass; they hold the
    key anyway."""
    site = request.headers.get("Sec-Fetch-Site", "").lower()
    if site in ("same-origin", "none"):
        return
    if site:
        raise ModelNotAllowed("Cross-site dashboard requests are refused.", code="cross_origin")
    origin = request.headers.get("Origin")
    if origin is None:
        return
    host = origin.partition("://")[2].rstrip("/")
    if origin == "null" or host.lower() != request.host.lower():
        raise ModelNotAllowed("Cross-site dashboard requests are refused.", code="cross_origin")


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(
        text=body, status=status, content_type="text/html", headers=_SECURITY_HEADERS
    )


async def show_dashboard(request: web.Request) -> web.Response:
    """``GET /dashboard``: the page, or the sign-in form with a 401."""
    runtime = _signed_in(request)
    if runtime is None:
        return _html(login_page(), status=401)
    return _html(page(snapshot(runtime), refresh_s=_refresh_s(request)))


def _refresh_s(request: web.Request) -> int:
    """``?refresh_s=N``: the page's refresh interval, 1 to 300 s (default ``REFRESH_S``)."""
    raw = request.query.get("refresh_s", "")
    return max(1, min(300, int(raw))) if raw.isdigit() else REFRESH_S


async def dashboard_panels(request: web.Request) -> web.Response:
    """``GET /dashboard/panels``: the panels fragment the page's refresh script swaps in."""
    runtime = _signed_in(request)
    if runtime is None:
        raise AuthenticationFailed("Sign in to the dashboard.", code="invalid_admin_key")
    return _html(panels(snapshot(runtime)))


async def dashboard_data(request: web.Request) -> web.Response:
    """``GET /dashboard/data``: the snapshot the page is rendered from, as JSON."""
    runtime = _signed_in(request)
    if runtime is None:
        raise AuthenticationFailed("Admin key required.", code="invalid_admin_key")
    return web.Response(
        body=orjson.dumps(snapshot(runtime)),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def login(request: web.Request) -> web.Response:
    """``POST /dashboard/login`` (form field ``key``): a session cookie, then the dashboard."""
    _same_origin(request)
    expected = _expected_digest(request.app[RUNTIME])
    key = await _form_key(request)
    brake = request.app[AUTH_BRAKE]
    if brake.active:
        brake.check(request, key or None)
    if not key or not _key_matches(key, expected):
        await brake.failed(request, key or None)
        return _html(login_page("That is not the admin key."), status=401)
    expires = int(time.time()) + SESSION_S
    sid = request.app[SESSIONS].open(expires)
    response = _see_dashboard()
    response.set_cookie(
        COOKIE,
        f"{expires}.{sid}.{_sign(request, expires, sid, expected)}",
        max_age=SESSION_S,
        path="/dashboard",
        httponly=True,
        samesite="Strict",
        # Secure whenever the browser speaks HTTPS, also to a TLS-terminating proxy in front.
        secure=request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https",
    )
    return response


async def _form_key(request: web.Request) -> str:
    """The form's ``key`` field; a body that is not a form (whatever its content type claims)
    is a 400, not a parser's traceback."""
    if request.content_type not in _FORM_TYPES:
        raise InvalidRequest(
            f"Send the sign-in form as {' or '.join(_FORM_TYPES)}.", code="invalid_form"
        )
    timeout_s = request.app[RUNTIME].settings.body_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            form = await request.post()
    except TimeoutError as exc:
        raise RequestTimedOut(f"The sign-in form did not arrive within {timeout_s:g} s.") from exc
    except (ValueError, AssertionError, UnicodeDecodeError) as exc:
        # aiohttp's multipart reader asserts on a body that has no boundary lines.
        raise InvalidRequest("The sign-in form is malformed.", code="invalid_form") from exc
    key = form.get("key")
    return key if isinstance(key, str) else ""


async def logout(request: web.Request) -> web.Response:
    """``POST /dashboard/logout``: end the session (its id leaves the list) and drop the cookie."""
    _same_origin(request)
    session = _session(request)
    if session is not None:
        request.app[SESSIONS].close(session[1])
    response = _see_dashboard()
    response.del_cookie(COOKIE, path="/dashboard")
    return response


def _see_dashboard() -> web.Response:
    return web.Response(status=303, headers={**_SECURITY_HEADERS, "Location": "/dashboard"})


async def static_file(request: web.Request) -> web.Response:
    """The page's own stylesheet and refresh script (nothing from a CDN)."""
    name = request.match_info["name"]
    if name not in _STATIC:
        raise web.HTTPNotFound()
    return web.Response(
        body=asset(f"static/{name}"),
        content_type=_STATIC[name],
        headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
    )
