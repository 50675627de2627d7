"""The dashboard at ``/dashboard``, behind the admin key.

Two ways in, both checked against ``GATEWAY_ADMIN_KEY_SHA256`` (without it the dashboard answers
403, like the admin API):

- ``Authorization: Bearer <admin key>``, for scripts (``/dashboard/data``) and proxies;
- a browser signs in on the form ``/dashboard`` shows with a 401: it POSTs the key (never in a
  URL) and gets a session cookie: HttpOnly, SameSite=Strict, path ``/dashboard``, Secure over
  HTTPS, valid for ``SESSION_S``. The cookie holds an expiry and an HMAC of it under a random
  key of this process (bound to the admin key's digest): never the key or its digest. Sessions
  end when the process restarts or the admin key changes, and each replica signs its own.

Pages are served with a strict Content-Security-Policy (same-origin script and style only) and
``no-store``; the charts are server-rendered SVG (``dashboard_svg``) from one snapshot
(``dashboard_data``), which ``/dashboard/data`` returns as JSON.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import orjson
from aiohttp import web

from gateway.core.errors import AuthenticationFailed, ModelNotAllowed
from gateway.core.runtime import RUNTIME, Runtime

from .dashboard_data import snapshot
from .dashboard_page import REFRESH_S, asset, login_page, page, panels

COOKIE = "gw_dashboard"
SESSION_S = 8 * 3600
SIGNING_KEY = web.AppKey("dashboard_signing_key", bytes)
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
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def setup(app: web.Application) -> None:
    """Add the dashboard's routes and its session signing key to ``app``."""
    app[SIGNING_KEY] = secrets.token_bytes(32)
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
    digest = hashlib.sha256(key.strip().encode()).hexdigest()
    return hmac.compare_digest(digest, expected)


def _sign(request: web.Request, expires: int, expected: str) -> str:
    message = f"dashboard|{expires}|{expected}".encode()
    return hmac.new(request.app[SIGNING_KEY], message, hashlib.sha256).hexdigest()


def _session_valid(request: web.Request, expected: str) -> bool:
    expires_text, _, mac = request.cookies.get(COOKIE, "").partition(".")
    if not expires_text.isdigit() or int(expires_text) < time.time():
        return False
    return hmac.compare_digest(mac, _sign(request, int(expires_text), expected))


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
    expected = _expected_digest(request.app[RUNTIME])
    form = await request.post()
    key = form.get("key")
    if not isinstance(key, str) or not key or not _key_matches(key, expected):
        return _html(login_page("That is not the admin key."), status=401)
    expires = int(time.time()) + SESSION_S
    response = _see_dashboard()
    response.set_cookie(
        COOKIE,
        f"{expires}.{_sign(request, expires, expected)}",
        max_age=SESSION_S,
        path="/dashboard",
        httponly=True,
        samesite="Strict",
        # Secure whenever the browser speaks HTTPS, also to a TLS-terminating proxy in front.
        secure=request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https",
    )
    return response


async def logout(request: web.Request) -> web.Response:
    """``POST /dashboard/logout``: drop the session cookie."""
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
