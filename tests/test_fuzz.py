"""Fuzzing the public API: schemathesis from /openapi.json, and hypothesis-built chat, Messages,
Responses and embeddings bodies.

The gateway runs on a real TCP port (aiohttp is not ASGI; schemathesis calls it over HTTP with
``requests``) in a thread with its own event loop, over loopback fakes that answer normally. The
promise under test: no 5xx except the documented upstream 502/503/504 (and Anthropic's 529 on
``/v1/messages``), and every error is a JSON body in the client's shape: OpenAI's, or Anthropic's
on ``/v1/messages``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.api.app import create_app
from gateway.policy.model import Policy, hash_key
from gateway.policy.settings import Settings
from tests.conftest import MODELS, PROVIDER_KEYS, TEAM_KEY, Fakes, policy_for
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.base import Behaviour, Blocked, CutStream, Fail, FakeProvider, Malformed, Ok
from tests.fakes.gemini import FakeGemini
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai import FakeOpenAI

UPSTREAM_STATUSES = {502, 503, 504}
_WITH_INPUTS = {
    "POST /v1/chat/completions",
    "POST /v1/messages",
    "POST /v1/messages/count_tokens",
    "POST /v1/responses",
    "POST /v1/embeddings",
    "GET /v1/models/{model}",
    "POST /v1/feedback",
}
# Embedding aliases on the fakes that have an embeddings API, and a route over them.
EMBEDDING_MODELS = {
    "embed-openai": "openai",
    "embed-gemini": "gemini",
    "embed-ollama": "ollama",
}
FUZZ_ADMIN_KEY = "fuzz-admin-key-0123456789"
EXAMPLES = 60  # per operation and mode; the chat body fuzz runs more


class ThreadedServer:
    """The gateway and its fakes on 127.0.0.1, served by an event loop in a daemon thread."""

    def __init__(self) -> None:
        self.url = ""
        self.fakes: list[FakeProvider] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),))
        self._error: BaseException | None = None
        self.closing: list[Any] = []  # clients the tests opened, closed with the server

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        stops: list[Any] = []
        try:
            runner = web.AppRunner(await _gateway_app(self, stops), access_log=None)
            await runner.setup()
            stops.insert(0, runner.cleanup)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._ready.set()
        await self._stop.wait()
        for stop in stops:
            await stop()

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None or not self.url:
            raise RuntimeError("the gateway did not start") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        for close in self.closing:
            close()
        stop = self._stop
        assert stop is not None
        self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(30)
        self._loop.close()


async def _gateway_app(server: ThreadedServer, stack: list[Any]) -> web.Application:
    fakes = Fakes(
        openai=FakeOpenAI(region="us"),
        anthropic=FakeAnthropic(region="us"),
        gemini=FakeGemini(region="eu"),
        ollama=FakeOllama(region="onprem"),
    )
    for fake in vars(fakes).values():
        await fake.start()
        stack.append(fake.stop)
        server.fakes.append(fake)
    routes = [
        {"name": "default", "candidates": ["gpt", "claude", "gemini", "ollama"]},
        {"name": "embeddings", "candidates": list(EMBEDDING_MODELS)},
    ]
    policy = policy_for(fakes).model_dump()
    policy["routes"] = routes
    policy["models"] += [
        {"name": name, "provider": provider, "id": f"{name}-v1", "kind": "embedding"}
        for name, provider in EMBEDDING_MODELS.items()
    ]
    settings = Settings(
        max_body_bytes=64 * 1024,
        admin_key_sha256=hash_key(FUZZ_ADMIN_KEY),
        auth_fail_burst=10**9,  # the fuzzers send wrong keys by the thousand from one address
    )
    app = create_app(settings, Policy.model_validate(policy), PROVIDER_KEYS)
    return app


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with ThreadedServer() as running:
        yield running


def assert_openai_shaped(status: int, headers: Mapping[str, str], text: str) -> None:
    """No 5xx but the upstream ones; errors are ``{"error": {message, type, param, code}}``."""
    assert status < 500 or status in UPSTREAM_STATUSES, (status, text[:500])
    if status >= 400:
        assert headers["content-type"].startswith("application/json"), headers
        error = orjson.loads(text)["error"]
        assert isinstance(error["message"], str)
        assert error["message"]
        assert isinstance(error["type"], str)
        assert "param" in error
        assert "code" in error
        assert "Traceback" not in error["message"]
        assert headers.get("x-request-id")


def assert_anthropic_shaped(status: int, headers: Mapping[str, str], text: str) -> None:
    """No 5xx but the upstream ones and 529; errors are Anthropic's ``{"type": "error", ...}``."""
    assert status < 500 or status in {*UPSTREAM_STATUSES, 529}, (status, text[:500])
    if status >= 400:
        assert headers["content-type"].startswith("application/json"), headers
        body = orjson.loads(text)
        assert body["type"] == "error"
        assert isinstance(body["error"]["type"], str)
        assert body["error"]["message"]
        assert "Traceback" not in body["error"]["message"]
        assert headers.get("x-request-id")
        assert body["request_id"] == headers["x-request-id"]


def assert_client_shaped(path: str, status: int, headers: Mapping[str, str], text: str) -> None:
    """The error shape of the client that calls ``path``."""
    if path.startswith("/v1/messages"):
        assert_anthropic_shaped(status, headers, text)
    else:
        assert_openai_shaped(status, headers, text)


def check(response: requests.Response, path: str = "/v1/chat/completions") -> None:
    headers = {k.lower(): v for k, v in response.headers.items()}
    assert_client_shaped(path, response.status_code, headers, response.text)


def _fuzz_operations(server: ThreadedServer, mode: GenerationMode) -> int:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    session = requests.Session()
    server.closing.append(session.close)
    auth = {"Authorization": f"Bearer {TEAM_KEY}"}
    checks = [
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        response_headers_conformance,
    ]
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if mode is GenerationMode.NEGATIVE and operation.label not in _WITH_INPUTS:
            continue  # nothing to make invalid

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode), keyed=st.booleans())
        def run(case: Any, keyed: bool) -> None:
            nonlocal calls
            headers = auth if keyed else {}
            response = case.call(base_url=server.url, session=session, headers=headers, timeout=30)
            calls += 1
            seen = {k.lower(): v[0] for k, v in response.headers.items()}
            assert_client_shaped(case.operation.path, response.status_code, seen, response.text)
            case.validate_response(response, checks=checks, headers=headers)

        run()
    return calls


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis(server: ThreadedServer, mode: GenerationMode) -> None:
    assert _fuzz_operations(server, mode) >= EXAMPLES  # every operation ran


# ---------------------------------------------------------------------------- chat bodies

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
_text = st.text(max_size=40)
_part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": _text}),
    st.fixed_dictionaries(
        {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": _text})}
    ),
    st.fixed_dictionaries({"type": _text}),
    _json,
)
_content = st.one_of(_text, st.lists(_part, max_size=3), st.none(), _json)
_tool_call = st.fixed_dictionaries(
    {
        "id": _text,
        "type": st.just("function"),
        "function": st.fixed_dictionaries({"name": _text, "arguments": _text | _json}),
    }
)
_message = st.one_of(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "x"]),
            "content": _content,
        },
        optional={
            "name": _text | _json,
            "tool_call_id": _text | _json,
            "tool_calls": st.lists(_tool_call, max_size=2) | _json,
        },
    ),
    _json,
)
_tool = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.just("function"),
            "function": st.fixed_dictionaries(
                {"name": st.text(min_size=1, max_size=10)},
                optional={"parameters": _json, "description": _text},
            ),
        }
    ),
    _json,
)
_number = st.one_of(st.integers(-5, 5000), st.floats(-3, 3, allow_nan=False), _json)
_wild_body = st.fixed_dictionaries(
    {
        "model": st.sampled_from([*MODELS, "default", "nope"]) | _json,
        "messages": st.lists(_message, min_size=0, max_size=4) | _json,
    },
    optional={
        "stream": st.booleans() | _json,
        "temperature": _number,
        "top_p": _number,
        "max_tokens": _number,
        "max_completion_tokens": _number,
        "n": _number,
        "seed": _number,
        "stop": _text | st.lists(_text, max_size=6) | _json,
        "presence_penalty": _number,
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | _json}) | _json,
        "response_format": st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])},
            optional={"json_schema": st.fixed_dictionaries({"name": _text}) | _json},
        )
        | _json,
        "tools": st.lists(_tool, max_size=2) | _json,
        "tool_choice": st.sampled_from(["none", "auto", "required"])
        | st.fixed_dictionaries(
            {"type": st.just("function"), "function": st.fixed_dictionaries({"name": _text})}
        )
        | _json,
        "user": _text | _json,
        "extra": _json,
    },
)

# Valid bodies reach the router, the adapters and the fakes; the edge cases live in the values
# (empty and odd text, image parts, tool turns, every parameter at its bounds).
_valid_content = _text | st.lists(
    st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": _text}),
        st.fixed_dictionaries(
            {
                "type": st.just("image_url"),
                "image_url": st.fixed_dictionaries(
                    {"url": st.sampled_from(["https://x.test/a.png", "data:image/png;base64,AA=="])}
                ),
            }
        ),
    ),
    min_size=1,
    max_size=3,
)
_valid_tool_call = st.fixed_dictionaries(
    {
        "id": _text,
        "type": st.just("function"),
        "function": st.fixed_dictionaries({"name": _text, "arguments": _json.map(json.dumps)}),
    }
)
_valid_message = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user"]), "content": _valid_content}
    ),
    st.fixed_dictionaries(
        {"role": st.just("assistant"), "content": _text | st.none()},
        optional={"tool_calls": st.lists(_valid_tool_call, min_size=1, max_size=2)},
    ),
    st.fixed_dictionaries({"role": st.just("tool"), "content": _text, "tool_call_id": _text}),
)
_valid_tool = st.fixed_dictionaries(
    {
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {"name": st.from_regex(r"[a-z_]{1,12}", fullmatch=True)},
            optional={
                "parameters": st.just({"type": "object", "properties": {}}),
                "description": _text,
            },
        ),
    }
)
_valid_body = st.fixed_dictionaries(
    {
        "model": st.sampled_from([*MODELS, "default"]),
        "messages": st.lists(_valid_message, min_size=1, max_size=4),
    },
    optional={
        "stream": st.booleans(),
        "temperature": st.floats(0, 2) | st.integers(0, 2),
        "top_p": st.floats(0, 1),
        "max_tokens": st.integers(1, 100_000),
        "max_completion_tokens": st.integers(1, 100_000),
        "n": st.just(1),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "stop": _text | st.lists(_text, max_size=4),
        "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "response_format": st.sampled_from(
            [
                {"type": "text"},
                {"type": "json_object"},
                {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
            ]
        ),
        "tools": st.lists(_valid_tool, min_size=1, max_size=2),
        "tool_choice": st.sampled_from(["none", "auto", "required"]),
        "parallel_tool_calls": st.booleans(),
        "user": _text,
        "metadata": _json,
    },
)
_body = st.one_of(_valid_body, _valid_body, _wild_body)


_headers = st.fixed_dictionaries(
    {},
    optional={
        "x-gateway-deadline-ms": st.sampled_from(["1", "5000", "20000", "0", "abc"]),
        "x-gateway-regions": st.sampled_from(["eu", "us,eu", "onprem", "mars", ",", ""]),
        "x-gateway-task": st.sampled_from(["summarize", "code-review", "", "a b", "x" * 80]),
    },
)


# Mostly normal answers; the rest every upstream failure the adapters classify.
_upstream = st.one_of(
    st.just(Ok()),
    st.sampled_from(
        [
            Ok(text=""),
            Ok(served_model="gpt-4o-2099-01-01"),
            Ok(finish="length"),
            Fail(400),
            Fail(429, retry_after=0.01),
            Fail(500),
            Fail(503),
            Malformed(),
            CutStream(),
            Blocked(),
        ]
    ),
)


@pytest.mark.timeout(300)
@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(body=_body, headers=st.just({}) | _headers, upstream=_upstream)
def test_generated_chat_bodies(
    server: ThreadedServer, body: dict[str, Any], headers: dict[str, str], upstream: Behaviour
) -> None:
    for fake in server.fakes:  # every provider answers this request the same way
        blocked_ollama = isinstance(fake, FakeOllama) and isinstance(upstream, Blocked)
        fake.default = Ok() if blocked_ollama else upstream  # Ollama has no moderation layer
    response = requests.post(
        f"{server.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {TEAM_KEY}", **headers},
        timeout=30,
    )
    check(response)
    code = response.json()["error"]["code"] if response.status_code >= 400 else ""
    event(f"status {response.status_code} {code}")
    if response.status_code == 200 and body.get("stream") is True:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.text.rstrip().endswith("data: [DONE]"), response.text[-300:]
    elif response.status_code == 200:
        assert response.json()["object"] == "chat.completion"


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(raw=st.binary(max_size=200) | _json.map(lambda v: repr(v).encode()))
def test_arbitrary_bytes_are_client_errors(server: ThreadedServer, raw: bytes) -> None:
    for path in (
        "/v1/chat/completions",
        "/v1/feedback",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/responses",
        "/v1/embeddings",
    ):
        response = requests.post(
            f"{server.url}{path}",
            data=raw,
            headers={"Authorization": f"Bearer {TEAM_KEY}", "Content-Type": "application/json"},
            timeout=30,
        )
        check(response, path)
        assert 400 <= response.status_code < 500
