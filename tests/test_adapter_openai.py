"""The OpenAI adapter's pure translations, and the OpenAI fake proven by the official SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
import pytest
from multidict import CIMultiDict

from providers.base import StreamEvent, Target
from providers.errors import (
    ContentBlocked,
    UpstreamAuthError,
    UpstreamInvalidRequest,
    UpstreamModelNotFound,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamRateLimited,
)
from providers.openai import OpenAIAdapter
from providers.schema import ChatRequest
from tests.fakes.base import Blocked, Fail, Ok
from tests.fakes.openai import FakeOpenAI

ADAPTER = OpenAIAdapter()
TARGET = Target(
    provider="openai",
    base_url="https://api.openai.com/v1",
    model="gpt-4o-mini-2024-07-18",
    api_key="sk-secret",
    headers={"OpenAI-Organization": "org-1"},
    options={"stream_usage": True},
)


def request(**body: Any) -> ChatRequest:
    return ChatRequest.from_body(
        {"model": "fast", "messages": [{"role": "user", "content": "hi"}], **body}
    )


def test_request_is_the_clients_body_with_the_pinned_model() -> None:
    built = ADAPTER.build_request(request(temperature=0.3, seed=7, logprobs=True), TARGET)
    body = orjson.loads(built.body)
    assert built.url == "https://api.openai.com/v1/chat/completions"
    assert body["model"] == "gpt-4o-mini-2024-07-18"
    assert body["temperature"] == 0.3
    assert body["logprobs"] is True  # unknown-to-us fields pass through
    assert built.headers["Authorization"] == "Bearer sk-secret"
    assert built.headers["OpenAI-Organization"] == "org-1"
    assert not built.stream


def test_streams_always_ask_for_usage() -> None:
    built = ADAPTER.build_request(request(stream=True), TARGET)
    assert orjson.loads(built.body)["stream_options"] == {"include_usage": True}
    assert built.stream
    no_usage = Target(
        provider="vllm", base_url="http://x/v1", model="m", options={"stream_usage": False}
    )
    assert "stream_options" not in orjson.loads(
        ADAPTER.build_request(request(stream=True), no_usage).body
    )


def test_no_authorization_without_a_key() -> None:
    local = Target(provider="local", base_url="http://127.0.0.1:8081/v1", model="gemma")
    assert "Authorization" not in ADAPTER.build_request(request(), local).headers


def test_parse_response() -> None:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    completion = ADAPTER.parse_response(orjson.dumps(body), TARGET)
    assert completion.served_model == "gpt-4o-mini-2024-07-18"
    assert completion.usage.total_tokens == 4
    assert completion.finish_reason == "stop"
    assert completion.body["choices"][0]["message"]["content"] == "Hi"


@pytest.mark.parametrize("body", [b"<html>", b"{}", b'{"choices": []}', b'{"choices": [1]}'])
def test_malformed_responses(body: bytes) -> None:
    with pytest.raises(UpstreamProtocolError):
        ADAPTER.parse_response(body, TARGET)


def test_content_filter_without_content_is_a_block() -> None:
    body = {
        "choices": [
            {"message": {"role": "assistant", "content": None}, "finish_reason": "content_filter"}
        ]
    }
    with pytest.raises(ContentBlocked):
        ADAPTER.parse_response(orjson.dumps(body), TARGET)


def test_stream_events() -> None:
    state = ADAPTER.new_stream(TARGET)
    first = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        ],
    }
    chunks = ADAPTER.parse_stream_event(StreamEvent(orjson.dumps(first)), state)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert state.role_sent
    last = {**first, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    ADAPTER.parse_stream_event(StreamEvent(orjson.dumps(last)), state)
    usage = {
        **first,
        "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
    assert ADAPTER.parse_stream_event(StreamEvent(orjson.dumps(usage)), state) == []
    assert state.usage.total_tokens == 7
    assert state.finish_reason == "stop"
    assert not state.done
    assert ADAPTER.parse_stream_event(StreamEvent(b"[DONE]"), state) == []
    assert state.done


def test_in_stream_error_event() -> None:
    state = ADAPTER.new_stream(TARGET)
    event = StreamEvent(
        b'{"error": {"message": "overloaded", "type": "server_error", "code": null}}'
    )
    with pytest.raises(UpstreamOverloaded) as caught:
        ADAPTER.parse_stream_event(event, state)
    assert caught.value.provider == "openai"


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, None, UpstreamInvalidRequest),
        (400, "content_policy_violation", ContentBlocked),
        (401, "invalid_api_key", UpstreamAuthError),
        (403, None, UpstreamAuthError),
        (404, "model_not_found", UpstreamModelNotFound),
        (429, "rate_limit_exceeded", UpstreamRateLimited),
        (500, None, UpstreamOverloaded),
        (503, None, UpstreamOverloaded),
    ],
)
def test_classify_error(status: int, code: str | None, expected: type[Exception]) -> None:
    body = orjson.dumps(
        {"error": {"message": "Incorrect API key provided: sk-secret", "type": "x", "code": code}}
    )
    error = ADAPTER.classify_error(status, CIMultiDict({"retry-after": "12"}), body, TARGET)
    assert type(error) is expected
    assert error.provider == "openai"
    assert error.upstream_status == status
    if status in (401, 403):
        assert "sk-secret" not in error.message
    if status == 429:
        assert error.retry_after == 12


def test_classify_non_json_error_by_status() -> None:
    error = ADAPTER.classify_error(502, CIMultiDict(), b"<html>bad gateway</html>", TARGET)
    assert isinstance(error, UpstreamOverloaded)


# -- the fake is faithful: the official SDK parses it ----------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(fake: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=fake.api_base, api_key="sk-test", max_retries=0)
    yield sdk
    await sdk.close()


async def test_sdk_parses_fake_completion_and_stream(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == Ok().text
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == Ok().prompt_tokens
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == Ok().text
    assert chunks[-1].usage is not None
    assert fake.requests[-1].headers["authorization"] == "Bearer sk-test"


async def test_sdk_parses_fake_tool_call(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.push(Ok(tool_call=("lookup", {"q": "x"})))
    completion = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        tools=[
            {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
        ],
    )
    call = completion.choices[0].message.tool_calls
    assert call is not None
    assert call[0].function.name == "lookup"


async def test_sdk_parses_fake_errors(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.push(Fail(429, retry_after=3), Fail(401), Blocked(), Fail(500))
    messages: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model="m", messages=messages)
    assert limited.value.response.headers["retry-after"] == "3"
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model="m", messages=messages)
    with pytest.raises(openai.BadRequestError) as blocked:
        await client.chat.completions.create(model="m", messages=messages)
    assert blocked.value.code == "content_policy_violation"
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="m", messages=messages)
