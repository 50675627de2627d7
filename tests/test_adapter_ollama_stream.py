"""The Ollama adapter's stream translation, error classification and the loopback fake (the
requests and responses are in tests/test_adapter_ollama.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from providers.base import StreamEvent, StreamState, Target
from providers.errors import (
    UpstreamAuthError,
    UpstreamInvalidRequest,
    UpstreamModelNotFound,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamRateLimited,
)
from tests.fakes.base import Ok
from tests.fakes.ollama import ErrorMidStream, FakeOllama
from tests.test_adapter_ollama import ADAPTER, TARGET, WEATHER, chat


# -- parse_stream_event -------------------------------------------------------------------------
def lines(state: StreamState, *objects: dict[str, Any]) -> list[dict[str, Any]]:
    chunks: list[dict[str, Any]] = []
    for obj in objects:
        chunks.extend(ADAPTER.parse_stream_event(StreamEvent(data=orjson.dumps(obj)), state))
    return chunks


def part(content: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "llama3.2",
        "created_at": "2023-08-04T08:52:19.385406455-07:00",
        "message": {"role": "assistant", "content": content, **extra},
        "done": False,
    }


FINAL = {
    "model": "llama3.2",
    "created_at": "2023-08-04T19:22:45.499127Z",
    "message": {"role": "assistant", "content": ""},
    "done": True,
    "done_reason": "stop",
    "total_duration": 4883583458,
    "load_duration": 1334875,
    "prompt_eval_count": 26,
    "prompt_eval_duration": 342546000,
    "eval_count": 282,
    "eval_duration": 4535599000,
}


def test_new_stream() -> None:
    state = ADAPTER.new_stream(TARGET)
    assert state.id.startswith("chatcmpl-")
    assert state.model == "llama3.2:3b"
    assert state.provider == "ollama-local"
    assert state.done is False


def test_stream_text() -> None:
    state = ADAPTER.new_stream(TARGET)
    chunks = lines(state, part("The"), part(" sky"), part(""), FINAL)

    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": "The"},
        {"content": " sky"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == "llama3.2" and c["id"] == state.id for c in chunks)
    assert state.done is True
    assert state.finish_reason == "stop"
    assert state.served_model == "llama3.2"
    assert state.usage.to_openai() == {
        "prompt_tokens": 26,
        "completion_tokens": 282,
        "total_tokens": 308,
    }
    assert not any("usage" in c for c in chunks)  # the gateway emits the usage chunk


def test_stream_not_done_until_the_done_line() -> None:
    state = ADAPTER.new_stream(TARGET)
    lines(state, part("Hello"))
    assert state.done is False
    assert state.finish_reason is None


def test_final_line_with_content_and_length() -> None:
    # /api/generate's documented stream puts the last token on the done line; handle it for chat.
    state = ADAPTER.new_stream(TARGET)
    final = {**FINAL, "message": {"role": "assistant", "content": "!"}, "done_reason": "length"}
    chunks = lines(state, final)
    assert [c["choices"][0]["delta"] for c in chunks] == [{"role": "assistant", "content": "!"}, {}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert state.finish_reason == "length"


def test_stream_tool_calls() -> None:
    state = ADAPTER.new_stream(TARGET)
    call = {"function": {"name": "get_current_weather", "arguments": {"location": "Toronto"}}}
    other = {"function": {"name": "get_time", "arguments": {}}}
    chunks = lines(state, part("", tool_calls=[call]), part("", tool_calls=[other]), FINAL)

    deltas = [c["choices"][0]["delta"] for c in chunks]
    opening = deltas[0]["tool_calls"][0]
    assert deltas[0]["role"] == "assistant"
    assert opening["index"] == 0
    assert opening["id"].startswith("call_")
    assert opening["type"] == "function"
    assert opening["function"] == {"name": "get_current_weather", "arguments": ""}
    assert deltas[1] == {
        "tool_calls": [{"index": 0, "function": {"arguments": '{"location":"Toronto"}'}}]
    }
    assert deltas[2]["tool_calls"][0]["index"] == 1
    assert deltas[2]["tool_calls"][0]["function"]["name"] == "get_time"
    assert deltas[3] == {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}
    assert deltas[4] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert state.finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("an error was encountered while running the model", UpstreamOverloaded),
        ("unexpected EOF", UpstreamOverloaded),
        ("llama3.2 does not support tools", UpstreamInvalidRequest),
    ],
)
def test_error_line_mid_stream(message: str, error: type[Exception]) -> None:
    state = ADAPTER.new_stream(TARGET)
    lines(state, part("Yes"))
    with pytest.raises(error) as info:
        lines(state, {"error": message})
    assert message in str(info.value)
    assert getattr(info.value, "provider", None) == "ollama-local"
    assert state.done is False


@pytest.mark.parametrize("data", [b"not json", b"[1]", b'{"message": "text", "done": false}'])
def test_bad_stream_lines(data: bytes) -> None:
    with pytest.raises(UpstreamProtocolError):
        ADAPTER.parse_stream_event(StreamEvent(data=data), ADAPTER.new_stream(TARGET))


# -- classify_error -----------------------------------------------------------------------------
def classify(status: int, body: bytes, **headers: str) -> Exception:
    return ADAPTER.classify_error(status, CIMultiDict(headers), body, TARGET)


def test_400_is_the_clients_error() -> None:
    error = classify(400, b'{"error": "llama3.2 does not support tools"}')
    assert isinstance(error, UpstreamInvalidRequest)
    assert error.message == "llama3.2 does not support tools"
    assert error.upstream_status == 400
    assert error.provider == "ollama-local"
    assert error.retryable is False


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_never_echo_the_message(status: int) -> None:
    error = classify(status, b'{"error": "invalid key sk-secret"}')
    assert isinstance(error, UpstreamAuthError)
    assert "sk-secret" not in error.message


def test_404_missing_model_is_a_misconfiguration_that_falls_back() -> None:
    error = classify(404, b'{"error": "model \'llama3.2:3b\' not found"}')
    assert isinstance(error, UpstreamModelNotFound)
    assert not isinstance(error, UpstreamInvalidRequest)
    assert error.retryable is True
    assert error.upstream_status == 404
    assert "llama3.2:3b" in error.message
    assert error.provider == "ollama-local"


def test_429_with_retry_after() -> None:
    error = classify(429, b'{"error": "too many requests"}', **{"Retry-After": "7"})
    assert isinstance(error, UpstreamRateLimited)
    assert error.retry_after == 7.0
    assert "too many requests" in error.message


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors(status: int) -> None:
    error = classify(status, b'{"error": "llama runner process has terminated"}')
    assert isinstance(error, UpstreamOverloaded)
    assert "llama runner" in error.message
    assert error.upstream_status == status


def test_non_json_error_bodies_classify_by_status() -> None:
    error = classify(502, b"<html><body>502 Bad Gateway</body></html>")
    assert isinstance(error, UpstreamOverloaded)
    assert error.provider == "ollama-local"
    assert isinstance(classify(400, b"bad request"), UpstreamInvalidRequest)
    assert isinstance(classify(404, b""), UpstreamModelNotFound)


def test_openai_style_error_from_a_proxy() -> None:
    error = classify(400, b'{"error": {"message": "bad field", "type": "invalid_request_error"}}')
    assert isinstance(error, UpstreamInvalidRequest)
    assert error.message == "bad field"


# -- against the loopback fake ------------------------------------------------------------------
@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    server = FakeOllama()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_round_trip_through_the_fake(fake: FakeOllama) -> None:
    target = Target(provider="ollama", base_url=fake.base_url, model="llama3.2:3b")
    fake.push(Ok(tool_call=("get_current_weather", {"location": "Paris"}), prompt_tokens=5))
    upstream = ADAPTER.build_request(chat(tools=[WEATHER]), target)
    async with (
        aiohttp.ClientSession() as session,
        session.post(upstream.url, data=upstream.body, headers=dict(upstream.headers)) as resp,
    ):
        body = await resp.read()
    completion = ADAPTER.parse_response(body, target)
    call = completion.body["choices"][0]["message"]["tool_calls"][0]
    assert orjson.loads(call["function"]["arguments"]) == {"location": "Paris"}
    assert completion.finish_reason == "tool_calls"
    assert completion.usage.prompt_tokens == 5
    assert fake.requests[0].body["stream"] is False


async def stream_through_fake(fake: FakeOllama, state: StreamState) -> list[dict[str, Any]]:
    target = Target(provider="ollama", base_url=fake.base_url, model="llama3.2:3b")
    upstream = ADAPTER.build_request(chat(stream=True), target)
    chunks: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(upstream.url, data=upstream.body, headers=dict(upstream.headers)) as resp,
    ):
        async for raw in resp.content:
            if raw.strip():
                chunks.extend(ADAPTER.parse_stream_event(StreamEvent(data=raw.strip()), state))
    return chunks


async def test_stream_through_the_fake(fake: FakeOllama) -> None:
    fake.push(Ok(text="one two three", served_model="llama3.2:3b-q8_0"))
    state = ADAPTER.new_stream(TARGET)
    chunks = await stream_through_fake(fake, state)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "one two three"
    assert state.done is True
    assert state.served_model == "llama3.2:3b-q8_0"
    assert state.usage.completion_tokens == Ok().completion_tokens


async def test_mid_stream_error_through_the_fake(fake: FakeOllama) -> None:
    fake.push(ErrorMidStream(text="partial"))
    with pytest.raises(UpstreamOverloaded, match="running the model"):
        await stream_through_fake(fake, ADAPTER.new_stream(TARGET))
