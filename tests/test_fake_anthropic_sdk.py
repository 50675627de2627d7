"""The Anthropic fake is faithful: the official ``anthropic`` SDK parses everything it sends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest
from anthropic.types import ToolParam

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.base import Blocked, Fail, Ok

MODEL = "claude-sonnet-4-20250514"
HELLO: list[Any] = [{"role": "user", "content": "Hello"}]
WEATHER_TOOL: ToolParam = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropic()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(fake: FakeAnthropic) -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="test-key", max_retries=0)
    yield sdk
    await sdk.close()


async def test_plain_create(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.push(Ok(text="Hi there, friend.", served_model="claude-sonnet-4-20250514-served"))
    message = await client.messages.create(model=MODEL, max_tokens=256, messages=HELLO)
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == "claude-sonnet-4-20250514-served"
    assert message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hi there, friend."  # type: ignore[union-attr]
    assert message.usage.input_tokens == 11
    assert message.usage.output_tokens == 7
    assert message.id.startswith("msg_")


async def test_length_finish(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.push(Ok(finish="length"))
    message = await client.messages.create(model=MODEL, max_tokens=3, messages=HELLO)
    assert message.stop_reason == "max_tokens"
    assert message.model == MODEL  # echoed when no served_model is scripted


async def test_tool_use(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.push(Ok(tool_call=("get_weather", {"location": "Paris"})))
    message = await client.messages.create(
        model=MODEL, max_tokens=256, messages=HELLO, tools=[WEATHER_TOOL]
    )
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use"
    assert block.name == "get_weather"
    assert block.input == {"location": "Paris"}
    assert block.id.startswith("toolu_")


async def test_tool_call_needs_tools_in_request(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.push(Ok(text="no tools offered", tool_call=("get_weather", {"location": "Paris"})))
    message = await client.messages.create(model=MODEL, max_tokens=256, messages=HELLO)
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"


async def test_refusal(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.push(Blocked())
    message = await client.messages.create(model=MODEL, max_tokens=256, messages=HELLO)
    assert message.stop_reason == "refusal"
    assert message.content == []


async def test_stream_text(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.push(Ok(text="Streaming works fine", prompt_tokens=5, completion_tokens=4))
    async with client.messages.stream(model=MODEL, max_tokens=256, messages=HELLO) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(pieces) > 1
    assert "".join(pieces) == "Streaming works fine"
    assert final.content[0].text == "Streaming works fine"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 5
    assert final.usage.output_tokens == 4
    assert fake.requests[-1].body["stream"] is True


async def test_stream_tool_use(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    arguments = {"location": "San Francisco, CA", "unit": "celsius"}
    fake.push(Ok(tool_call=("get_weather", arguments)))
    async with client.messages.stream(
        model=MODEL, max_tokens=256, messages=HELLO, tools=[WEATHER_TOOL]
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds.count("input_json") > 1  # the input arrived in several fragments
    assert final.stop_reason == "tool_use"
    block = final.content[0]
    assert block.type == "tool_use"
    assert block.input == arguments


async def test_raw_stream_event_names(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.push(Ok(text="one two"))
    stream = await client.messages.create(model=MODEL, max_tokens=64, messages=HELLO, stream=True)
    kinds = [event.type async for event in stream]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert "content_block_start" in kinds
    assert "content_block_stop" in kinds


async def test_authentication_error(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.push(Fail(401, "invalid x-api-key"))
    with pytest.raises(anthropic.AuthenticationError) as info:
        await client.messages.create(model=MODEL, max_tokens=16, messages=HELLO)
    assert info.value.status_code == 401
    assert info.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert info.value.request_id is not None
    assert info.value.request_id.startswith("req_")


async def test_rate_limit_error(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.push(Fail(429, "Number of requests has exceeded your rate limit", retry_after=7))
    with pytest.raises(anthropic.RateLimitError) as info:
        await client.messages.create(model=MODEL, max_tokens=16, messages=HELLO)
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


async def test_overloaded_error(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.push(Fail(529, "Overloaded"))
    overloaded = getattr(anthropic, "OverloadedError", anthropic.InternalServerError)
    with pytest.raises(anthropic.InternalServerError) as info:
        await client.messages.create(model=MODEL, max_tokens=16, messages=HELLO)
    assert isinstance(info.value, overloaded)
    assert info.value.status_code == 529
    assert info.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": info.value.request_id,
    }


async def test_bad_request_error(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.push(Fail(400, "messages: roles must alternate"))
    with pytest.raises(anthropic.BadRequestError) as info:
        await client.messages.create(model=MODEL, max_tokens=16, messages=HELLO)
    assert info.value.body["error"] == {  # type: ignore[index]
        "type": "invalid_request_error",
        "message": "messages: roles must alternate",
    }


async def test_missing_max_tokens_is_rejected_like_the_api(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        await client.post(
            "/v1/messages",
            body={"model": MODEL, "messages": HELLO},
            cast_to=anthropic.types.Message,
        )
    assert "max_tokens" in info.value.body["error"]["message"]  # type: ignore[index]


async def test_records_the_request_as_sent(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    await client.messages.create(
        model=MODEL,
        max_tokens=128,
        system="Be brief.",
        messages=HELLO,
        stop_sequences=["END"],
        metadata={"user_id": "user-42"},
    )
    recorded = fake.requests[-1]
    assert recorded.method == "POST"
    assert recorded.path == "/v1/messages"
    assert recorded.headers["anthropic-version"]
    # SDK 2.x sends the key as a bearer token; earlier majors used x-api-key.
    assert "test-key" in (
        recorded.headers.get("x-api-key") or recorded.headers.get("authorization", "")
    )
    assert recorded.body == {
        "model": MODEL,
        "max_tokens": 128,
        "system": "Be brief.",
        "messages": HELLO,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
    }
