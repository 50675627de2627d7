"""The HTTP API through the official OpenAI SDK and raw requests: answers, headers, bad input."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import LIMITED_TEAM_KEY, TEAM_KEY, Fakes, SdkFactory
from tests.fakes.base import Malformed, Ok

AUTH = {"Authorization": f"Bearer {TEAM_KEY}"}
HELLO = [{"role": "user", "content": "Say hello."}]


async def test_sdk_chat_through_gateway(sdk: openai.AsyncOpenAI, fakes: Fakes) -> None:
    fakes.openai.push(Ok(text="Hi there, team.", prompt_tokens=5, completion_tokens=4))
    raw = await sdk.chat.completions.with_raw_response.create(model="gpt", messages=HELLO)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hi there, team."
    assert completion.usage is not None
    assert completion.usage.total_tokens == 9
    assert raw.headers["x-gateway-provider"] == "openai"
    assert raw.headers["x-gateway-model"] == "gpt-4o-mini-2024-07-18"
    assert raw.headers["x-gateway-route"] == "gpt"
    assert len(raw.headers["x-request-id"]) == 32
    assert float(raw.headers["x-gateway-overhead-ms"]) >= 0
    # The upstream saw the pinned id and the provider key; never the team's key.
    sent = fakes.openai.requests[-1]
    assert sent.body["model"] == "gpt-4o-mini-2024-07-18"
    assert sent.headers["authorization"] == "Bearer sk-provider-openai-SECRET"
    assert TEAM_KEY not in orjson.dumps(sent.headers).decode()


async def test_route_answers_with_first_candidate(sdk: openai.AsyncOpenAI, fakes: Fakes) -> None:
    completion = await sdk.chat.completions.create(model="default", messages=HELLO)
    assert completion.choices[0].message.content
    assert len(fakes.openai.requests) == 1
    assert not fakes.anthropic.requests


async def test_unknown_fields_pass_through_to_openai_compatible(
    gateway: TestClient[Any, Any], fakes: Fakes
) -> None:
    body = {"model": "gpt", "messages": HELLO, "logprobs": False, "metadata": {"k": "v"}}
    response = await gateway.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status == 200
    assert fakes.openai.requests[-1].body["metadata"] == {"k": "v"}


async def test_models_lists_what_the_team_may_use(
    gateway: TestClient[Any, Any], sdk_for: SdkFactory
) -> None:
    everything = await sdk_for(gateway).models.list()
    assert {m.id for m in everything.data} == {"gpt", "claude", "gemini", "ollama", "default"}
    limited = await sdk_for(gateway, LIMITED_TEAM_KEY).models.list()
    assert [m.id for m in limited.data] == ["gpt"]
    model = await sdk_for(gateway).models.retrieve("claude")
    assert model.id == "claude"


async def test_health_and_readiness(gateway: TestClient[Any, Any]) -> None:
    assert (await gateway.get("/healthz")).status == 200
    ready = await gateway.get("/readyz")
    body = await ready.json()
    assert ready.status == 200
    assert body["checks"]["providers"]["openai"]["credentials"] == "configured"
    assert body["checks"]["providers"]["ollama"]["region"] == "onprem"


async def _error(
    gateway: TestClient[Any, Any],
    body: bytes | dict[str, Any],
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    response = await gateway.post(
        "/v1/chat/completions",
        data=data,
        headers={"Content-Type": "application/json", **(AUTH if headers is None else headers)},
    )
    payload = await response.json()
    assert set(payload) == {"error"}
    assert {"message", "type", "code"} <= set(payload["error"])
    assert response.headers["x-request-id"]
    return response.status, payload["error"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b"[1, 2]", 400, "JSON object"),
        ({"model": "gpt"}, 400, "messages"),
        ({"model": "gpt", "messages": []}, 400, "messages"),
        ({"model": "gpt", "messages": "hello"}, 400, "messages"),
        ({"messages": HELLO}, 400, "model"),
        ({"model": "gpt", "messages": [{"role": "wizard", "content": "x"}]}, 400, "wizard"),
        ({"model": "gpt", "messages": [{"content": "x"}]}, 400, "role"),
        ({"model": "gpt", "messages": [{"role": "user", "content": 42}]}, 400, "content"),
        ({"model": "gpt", "messages": HELLO, "temperature": "hot"}, 400, "temperature"),
        ({"model": "gpt", "messages": HELLO, "temperature": 3}, 400, "temperature"),
        ({"model": "gpt", "messages": HELLO, "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "gpt", "messages": HELLO, "stream": "yes"}, 400, "stream"),
        ({"model": "gpt", "messages": HELLO, "n": 3}, 400, "n"),
        ({"model": "gpt", "messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"model": "gpt", "messages": HELLO, "tools": [{"type": "function"}]}, 400, "tools"),
        ({"model": "no-such-model", "messages": HELLO}, 404, "no-such-model"),
    ],
)
async def test_bad_input_gets_openai_style_4xx(
    gateway: TestClient[Any, Any], fakes: Fakes, body: Any, status: int, needle: str
) -> None:
    got_status, error = await _error(gateway, body)
    assert got_status == status
    assert needle in error["message"]
    assert not fakes.openai.requests  # nothing reached a provider


async def test_model_the_team_may_not_use(gateway: TestClient[Any, Any]) -> None:
    status, error = await _error(
        gateway,
        {"model": "claude", "messages": HELLO},
        {"Authorization": f"Bearer {LIMITED_TEAM_KEY}"},
    )
    assert status == 403
    assert error["code"] == "model_not_allowed"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Bearer sk-unknown"}, "invalid_api_key"),
        ({"Authorization": f"Basic {TEAM_KEY}"}, "invalid_api_key"),
    ],
)
async def test_missing_or_unknown_key(
    gateway: TestClient[Any, Any], headers: dict[str, str], code: str
) -> None:
    status, error = await _error(gateway, {"model": "gpt", "messages": HELLO}, headers)
    assert status == 401
    assert error["code"] == code
    assert "sk-unknown" not in error["message"]


async def test_sdk_raises_typed_errors(gateway: TestClient[Any, Any], sdk_for: SdkFactory) -> None:
    with pytest.raises(openai.AuthenticationError):
        await sdk_for(gateway, "sk-wrong").chat.completions.create(model="gpt", messages=HELLO)
    with pytest.raises(openai.NotFoundError):
        await sdk_for(gateway).chat.completions.create(model="nope", messages=HELLO)
    with pytest.raises(openai.BadRequestError):
        await sdk_for(gateway).chat.completions.create(model="gpt", messages=[])


async def test_oversized_body(make_gateway: Any) -> None:
    gateway = await make_gateway(max_body_bytes=2048)
    big = {"model": "gpt", "messages": [{"role": "user", "content": "x" * 4096}]}
    status, error = await _error(gateway, big)
    assert status == 413
    assert error["code"] == "payload_too_large"


async def test_unknown_path_and_method(gateway: TestClient[Any, Any]) -> None:
    response = await gateway.get("/v1/nothing-here")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "unknown_url"
    response = await gateway.get("/v1/chat/completions")
    assert response.status == 405


async def test_upstream_garbage_is_a_clear_502(gateway: TestClient[Any, Any], fakes: Fakes) -> None:
    fakes.openai.push(Malformed())
    status, error = await _error(gateway, {"model": "gpt", "messages": HELLO})
    assert status == 502
    assert error["code"] == "bad_upstream_response"
    assert "Traceback" not in error["message"]
