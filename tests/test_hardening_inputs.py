"""Inputs a careless client or an attacker sends, each answered with a 4xx in the client's own
error shape, never a 500 and never a traceback in the log: header bytes that are not UTF-8,
forged dashboard cookies, a sign-in body that is not the form it claims, JSON nested past what
the gateway can forward, absurd numbers, prompts no model can hold, malformed HTTP, a client
gone before its first token. Also the dashboard's session revocation and Origin check, and the
optional key (and port) for ``/metrics``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.admin.dashboard import COOKIE
from gateway.api.app import METRICS_SITE, create_app
from gateway.policy.model import hash_key
from gateway.policy.settings import Settings
from tests.conftest import PROVIDER_KEYS, TEAM_KEY, Fakes, policy_for
from tests.fakes.base import Hang
from tests.rawhttp import exchange, request
from tests.test_fuzz import assert_anthropic_shaped, assert_openai_shaped

ADMIN_KEY = "hardening-admin-key-0123456789"
BEARER = {"Authorization": f"Bearer {TEAM_KEY}"}
CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """The invariant next to "no 500": nothing was logged with a traceback or as an error."""
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()
        assert record.levelno < logging.ERROR, record.getMessage()
        assert "Traceback" not in record.getMessage()


def nested(depth: int) -> bytes:
    """JSON ``depth`` levels deep (objects and arrays in turn): past what any encoder writes."""
    opening = "".join('{"a":' if i % 2 else "[" for i in range(depth - 1))
    closing = "".join("}" if i % 2 else "]" for i in reversed(range(depth - 1)))
    return f'{opening}"leaf"{closing}'.encode()


def with_nested(body: dict[str, Any], depth: int) -> bytes:
    """``body`` as JSON with its ``"DEEP"`` string replaced by ``nested(depth)``."""
    return orjson.dumps(body).replace(b'"DEEP"', nested(depth))


@pytest.fixture
async def admin_gateway(make_gateway: Any) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await make_gateway(
        admin_key_sha256=hash_key(ADMIN_KEY),
        auth_fail_burst=10_000,  # the auth brake has its own tests (test_auth_brake.py)
    )
    return client


async def test_authorization_that_is_not_utf8_is_a_401(
    admin_gateway: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    port = admin_gateway.port
    assert port is not None
    for method, path in (
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/messages"),
        ("POST", "/v1/responses"),
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/feedback"),
        ("GET", "/v1/models"),
        ("GET", "/admin/cache/config"),
        ("GET", "/dashboard/data"),
    ):
        for value in (b"Bearer \xff", b"Bearer sk-\xc3\x28\xa0", b"\xff\xfe"):
            response = await exchange(port, request(method, path, [("Authorization", value)]))
            assert response.status == 401, (path, value, response.body[:200])
            headers = response.headers
            if path.startswith("/v1/messages"):
                assert_anthropic_shaped(response.status, headers, response.body.decode())
            else:
                assert_openai_shaped(response.status, headers, response.body.decode())
        response = await exchange(port, request(method, path, [("x-api-key", b"\xff\x80")]))
        assert 400 <= response.status < 500
    no_traceback(caplog)


async def test_forged_dashboard_cookies_are_not_sessions(
    admin_gateway: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    port = admin_gateway.port
    assert port is not None
    for cookie in (
        b"9999999999.abc.\xc3\xa9" + b"0" * 62,  # a non-ASCII MAC
        b"9" * 5000 + b".abc." + b"0" * 64,  # an expiry past int()'s digit limit
        "9999999999.sid.é".encode() + b"0" * 63,
        b"." * 300,
        b"1.2.3",
        b"\xff\xff.\xff.\xff",
    ):
        header = [("Cookie", COOKIE.encode() + b"=" + cookie)]
        for path in ("/dashboard", "/dashboard/data", "/dashboard/panels"):
            response = await exchange(port, request("GET", path, header))
            assert response.status == 401, (path, cookie[:40], response.body[:200])
    no_traceback(caplog)


async def test_sign_in_body_that_is_not_a_form_is_a_400(
    admin_gateway: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    for content_type, body in (
        ("multipart/form-data; boundary=xyz", b"key=whatever"),
        ("multipart/form-data", b"key=whatever"),
        ("text/plain", b"key=whatever"),
        ("application/json", b'{"key": "x"}'),
    ):
        response = await admin_gateway.post(
            "/dashboard/login", data=body, headers={"Content-Type": content_type}
        )
        assert response.status == 400, (content_type, await response.text())
        assert (await response.json())["error"]["code"] == "invalid_form"
    no_traceback(caplog)


async def test_sign_out_revokes_the_session(admin_gateway: TestClient[Any, Any]) -> None:
    signed_in = await admin_gateway.post(
        "/dashboard/login", data={"key": ADMIN_KEY}, allow_redirects=False
    )
    assert signed_in.status == 303
    cookies = {COOKIE: signed_in.cookies[COOKIE].value}
    assert (await admin_gateway.get("/dashboard/data", cookies=cookies)).status == 200
    out = await admin_gateway.post("/dashboard/logout", cookies=cookies, allow_redirects=False)
    assert out.status == 303
    # The cookie a browser (or a thief) kept is dead at once, not in 8 hours.
    assert (await admin_gateway.get("/dashboard/data", cookies=cookies)).status == 401
    assert (await admin_gateway.get("/dashboard", cookies=cookies)).status == 401


async def test_cross_origin_dashboard_posts_are_refused(
    admin_gateway: TestClient[Any, Any],
) -> None:
    host = f"127.0.0.1:{admin_gateway.port}"
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": f"http://{host}.evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain
        {"Origin": f"http://{host}", "Sec-Fetch-Site": "cross-site"},
    ):
        for path in ("/dashboard/login", "/dashboard/logout"):
            response = await admin_gateway.post(
                path, data={"key": ADMIN_KEY}, headers=headers, allow_redirects=False
            )
            assert response.status == 403, (path, headers)
            assert (await response.json())["error"]["code"] == "cross_origin"
            assert COOKIE not in response.cookies
    same = await admin_gateway.post(
        "/dashboard/login",
        data={"key": ADMIN_KEY},
        headers={"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"},
        allow_redirects=False,
    )
    assert same.status == 303
    # What Chromium sends for the sign-in form when the page's referrer policy is no-referrer:
    # Origin null, but its own Sec-Fetch-Site says same-origin (a header no page can set).
    chromium = await admin_gateway.post(
        "/dashboard/login",
        data={"key": ADMIN_KEY},
        headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"},
        allow_redirects=False,
    )
    assert chromium.status == 303
    page = await admin_gateway.get("/dashboard")
    assert page.headers["Referrer-Policy"] == "same-origin"


@pytest.mark.parametrize("depth", [255, 300, 1000])
async def test_deep_json_in_forwarded_fields_is_a_400_naming_it(
    gateway: TestClient[Any, Any], depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": "DEEP"}}
    for path, body, field in (
        ("/v1/chat/completions", {**CHAT, "metadata": {"k": "DEEP"}}, "metadata.k"),
        ("/v1/chat/completions", {**CHAT, "tools": [tool]}, "tools[0].function.parameters"),
        (
            "/v1/messages",
            {
                "model": "gpt",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": "hi"}],
                "metadata": {"user_id": "DEEP"},
            },
            "metadata.user_id",
        ),
        ("/v1/responses", {"model": "gpt", "input": "hi", "metadata": "DEEP"}, "metadata"),
    ):
        response = await gateway.post(
            path,
            data=with_nested(body, depth),
            headers={**BEARER, "Content-Type": "application/json"},
        )
        text = await response.text()
        assert response.status == 400, (path, depth, text[:300])
        if path == "/v1/messages":
            assert_anthropic_shaped(response.status, response.headers, text)
            assert field in (await response.json())["error"]["message"]
        else:
            assert_openai_shaped(response.status, response.headers, text)
            error = (await response.json())["error"]
            assert error["param"].startswith(field), error
            assert error["code"] == "too_deeply_nested"
    no_traceback(caplog)


async def test_json_nested_within_the_bound_is_forwarded(
    gateway: TestClient[Any, Any], fakes: Fakes
) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    body = {**CHAT, "tools": [tool], "metadata": {"k": "v"}}
    response = await gateway.post("/v1/chat/completions", json=body, headers=BEARER)
    assert response.status == 200, await response.text()


async def test_absurd_max_tokens_and_oversized_prompts_are_400s(
    gateway: TestClient[Any, Any], fakes: Fakes, caplog: pytest.LogCaptureFixture
) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        for value in (2**63, 2**63 - 1, 10**12):
            body = {**CHAT, field: value}
            response = await gateway.post("/v1/chat/completions", json=body, headers=BEARER)
            error = (await response.json())["error"]
            assert response.status == 400, error
            assert error["param"] == field
    huge = {"model": "gpt", "messages": [{"role": "user", "content": "word " * 200_000}]}
    response = await gateway.post("/v1/chat/completions", json=huge, headers=BEARER)
    error = (await response.json())["error"]
    assert response.status == 400, error
    assert (error["param"], error["code"]) == ("messages", "context_length_exceeded")
    messages = {
        "model": "gpt",
        "max_tokens": 2**62,
        "messages": [{"role": "user", "content": "hi"}],
    }
    response = await gateway.post("/v1/messages", json=messages, headers=BEARER)
    assert response.status == 400
    assert_anthropic_shaped(response.status, response.headers, await response.text())
    assert fakes.openai.requests == [] or all(
        r.get("max_tokens") != 2**63 for r in fakes.openai.requests
    )
    no_traceback(caplog)


async def test_malformed_http_gets_the_openai_error_shape(
    gateway: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    port = gateway.port
    assert port is not None
    for raw in (
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\n\r\n",
    ):
        response = await exchange(port, raw)
        assert 400 <= response.status < 500, raw[:60]
        text = response.body.decode()
        assert_openai_shaped(response.status, response.headers, text)
        assert response.headers["content-type"].startswith("application/json")
        error = response.json()["error"]  # type: ignore[index]
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "malformed_http"
    no_traceback(caplog)


async def test_client_gone_before_the_first_token_logs_one_quiet_line(
    fakes: Fakes, caplog: pytest.LogCaptureFixture
) -> None:
    fakes.openai.default = Hang(0.5)  # the first token comes after the client left
    caplog.set_level(logging.INFO)
    app = create_app(Settings(), policy_for(fakes), environ=PROVIDER_KEYS)
    # As `gateway serve` runs it: a client that leaves does not cancel its handler.
    runner = web.AppRunner(app, handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        body = orjson.dumps({**CHAT, "stream": True})
        headers = [("Authorization", f"Bearer {TEAM_KEY}".encode())]
        headers.append(("Content-Type", b"application/json"))
        with pytest.raises(TimeoutError):
            await exchange(
                port, request("POST", "/v1/chat/completions", headers, body), timeout_s=0.2
            )
        for _ in range(50):  # the upstream answers; the gateway finds the client gone
            await asyncio.sleep(0.1)
            if any("went away" in r.getMessage() for r in caplog.records):
                break
    finally:
        await runner.cleanup()
    assert any("went away" in r.getMessage() for r in caplog.records), caplog.text
    no_traceback(caplog)


async def test_metrics_can_require_a_key_and_have_their_own_port(make_gateway: Any) -> None:
    metrics_key = "metrics-key-0123456789"
    client: TestClient[Any, Any] = await make_gateway(
        metrics_key_sha256=hash_key(metrics_key),
        admin_key_sha256=hash_key(ADMIN_KEY),
        metrics_port=0,
    )
    assert (await client.get("/metrics")).status == 401
    ready = await client.get("/readyz")  # a load balancer's probe: the status, no detail
    assert ready.status == 200
    assert await ready.json() == {"status": "ready"}
    detailed = await client.get("/readyz", headers={"Authorization": f"Bearer {metrics_key}"})
    assert "providers" in (await detailed.json())["checks"]
    assert (await client.get("/metrics", headers=BEARER)).status == 401
    for key in (metrics_key, ADMIN_KEY):
        response = await client.get("/metrics", headers={"Authorization": f"Bearer {key}"})
        assert response.status == 200
        assert "gateway_requests" in await response.text()
    (address,) = client.app[METRICS_SITE] if client.app is not None else ("",)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{address}/metrics") as response:
            assert response.status == 200
            assert "gateway_requests" in await response.text()
        async with session.get(f"http://{address}/v1/models", headers=BEARER) as response:
            assert response.status == 404  # that port serves the metrics and nothing else
