"""Fuzzing headers and cookies: raw bytes (not UTF-8, control characters, forged dashboard
cookies, odd content types and origins) on every kind of path, API, admin and dashboard, against
the module-scoped gateway of ``tests/test_fuzz.py``. The invariant: no 5xx but the upstream ones,
errors in the client's shape, and nothing logged with a traceback or at ERROR."""

from __future__ import annotations

import logging
import socket

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import TEAM_KEY
from tests.fakes.base import Ok
from tests.test_fuzz import (
    FUZZ_ADMIN_KEY,
    UPSTREAM_STATUSES,
    ThreadedServer,
    assert_client_shaped,
    server,
)

__all__ = ["server"]  # the module-scoped gateway fixture, shared with test_fuzz.py


class _Troubles(logging.Handler):
    """Log records with a traceback or at ERROR and above, from any thread (the server's)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info is not None or record.levelno >= logging.ERROR:
            self.records.append(record)


# Header values as bytes: mostly ones HTTP parses (no control characters; bytes past ASCII,
# which are not UTF-8, included), sometimes any but CR, LF and NUL (which end the line).
_parsable_bytes = st.binary(max_size=60).map(lambda b: bytes(c for c in b if 0x20 <= c != 0x7F))
_header_bytes = st.one_of(
    _parsable_bytes,
    _parsable_bytes,
    _parsable_bytes,
    st.binary(max_size=60).map(lambda b: bytes(c for c in b if c not in b"\r\n\x00")),
)
_credential = st.one_of(
    st.sampled_from([TEAM_KEY, FUZZ_ADMIN_KEY, "sk-wrong"]).map(lambda k: k.encode()),
    _header_bytes,
)
_fuzz_headers = st.fixed_dictionaries(
    {},
    optional={
        "Authorization": st.one_of(_credential.map(lambda k: b"Bearer " + k), _header_bytes),
        "x-api-key": _credential,
        "Cookie": st.one_of(
            st.tuples(st.sampled_from([b"9999999999", b"9" * 5000, b"1"]), _header_bytes).map(
                lambda parts: b"gw_dashboard=" + parts[0] + b".sid." + parts[1]
            ),
            _header_bytes,
        ),
        "Content-Type": st.one_of(
            st.sampled_from(
                [
                    b"application/json",
                    b"multipart/form-data",
                    b"multipart/form-data; boundary=x",
                    b"application/x-www-form-urlencoded",
                    b"text/plain; charset=\xff",
                ]
            ),
            _header_bytes,
        ),
        "Origin": st.sampled_from([b"null", b"https://evil.example", b"http://127.0.0.1"]),
        "anthropic-version": st.sampled_from([b"2023-06-01", b"\xff"]),
        "x-gateway-task": _header_bytes,
        "x-gateway-deadline-ms": _header_bytes,
        "x-gateway-regions": _header_bytes,
        "X-Forwarded-Proto": _header_bytes,
    },
)
_paths = st.sampled_from(
    [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/messages"),
        ("POST", "/v1/responses"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/gpt"),
        ("GET", "/admin/decisions"),
        ("GET", "/dashboard"),
        ("GET", "/dashboard/data"),
        ("POST", "/dashboard/login"),
        ("POST", "/dashboard/logout"),
    ]
)
_raw_body = st.one_of(
    st.just(b'{"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}'),
    st.just(b"key=" + FUZZ_ADMIN_KEY.encode()),
    st.binary(max_size=80),
)


def _send_raw(url: str, method: str, path: str, headers: dict[str, bytes], body: bytes) -> bytes:
    host, _, port = url.removeprefix("http://").partition(":")
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + host.encode(), b"Connection: close"]
    lines += [name.encode() + b": " + value for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}".encode())
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.timeout(300)
def test_generated_headers_and_cookies(server: ThreadedServer) -> None:
    """Headers and cookies as raw bytes on every kind of path: never a 5xx but the upstream
    ones, errors in the client's shape, and nothing logged with a traceback."""
    troubles = _Troubles()
    logging.getLogger().addHandler(troubles)
    for fake in server.fakes:
        fake.default = Ok()

    @settings(
        max_examples=300,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(target=_paths, headers=_fuzz_headers, body=_raw_body)
    def run(target: tuple[str, str], headers: dict[str, bytes], body: bytes) -> None:
        method, path = target
        raw = _send_raw(server.url, method, path, headers, body if method == "POST" else b"")
        head, _, payload = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        got = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        event(f"{method} {path} {status}")
        assert status < 500 or status in UPSTREAM_STATUSES, (path, headers, payload[:300])
        if path.startswith("/v1") and status >= 400:
            # An Anthropic client (anthropic-version) asking /v1/models gets Anthropic's shape,
            # unless its headers did not parse (then nobody knows it is one).
            anthropic = path.startswith("/v1/models") and "anthropic-version" in headers
            malformed = b'"malformed_http"' in payload
            shape = "/v1/messages" if anthropic and not malformed else path
            try:
                assert_client_shaped(shape, status, got, payload.decode("utf-8", "replace"))
            except (AssertionError, KeyError) as exc:
                raise AssertionError((path, headers, status, payload[:300])) from exc
        elif status >= 400 and not payload.lstrip().startswith(b"<"):  # HTML: sign-in pages
            assert got["content-type"].startswith("application/json"), (path, got)

    try:
        run()
    finally:
        logging.getLogger().removeHandler(troubles)
    assert not troubles.records, [r.getMessage() for r in troubles.records[:5]]
