"""``POST /v1/messages``: the official ``anthropic`` SDK as the client, any provider behind.

Each test runs the real gateway in-process in front of the loopback fakes; an Anthropic client
gets Anthropic-shaped answers, streams and errors whichever provider kind answers (OpenAI,
Anthropic, Gemini, Ollama), and the request goes through the same policy as chat completions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import pytest
from aiohttp.test_utils import TestClient
from anthropic.types import MessageParam, ToolParam

from gateway.core.runtime import RUNTIME
from tests.conftest import EU_TEAM_KEY, MODELS, TEAM_KEY, Fakes, policy_for
from tests.fakes.base import CutStream, Fail, Ok

ALIASES = list(MODELS)  # one alias per provider kind: gpt, claude, gemini, ollama
HELLO: list[MessageParam] = [{"role": "user", "content": "Hello"}]
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "The current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
AnthropicFactory = Callable[..., anthropic.AsyncAnthropic]


@pytest.fixture
async def anthropic_for() -> AsyncIterator[AnthropicFactory]:
    """The official SDK pointed at a gateway, as a team sets ``ANTHROPIC_BASE_URL``."""
    clients: list[anthropic.AsyncAnthropic] = []

    def build(gateway: TestClient[Any, Any], key: str = TEAM_KEY, **kw: Any) -> Any:
        client = anthropic.AsyncAnthropic(
            base_url=str(gateway.make_url("")), api_key=key, max_retries=0, **kw
        )
        clients.append(client)
        return client

    yield build
    for client in clients:
        await client.close()


@pytest.fixture
def client(gateway: TestClient[Any, Any], anthropic_for: AnthropicFactory) -> Any:
    return anthropic_for(gateway)


def last_decision(gateway: TestClient[Any, Any]) -> Any:
    assert gateway.app is not None
    return gateway.app[RUNTIME].decisions.recent(1)[0]


@pytest.mark.parametrize("alias", ALIASES)
async def test_plain_message_from_every_provider_kind(
    alias: str, gateway: TestClient[Any, Any], client: Any, fakes: Fakes
) -> None:
    provider, upstream = MODELS[alias]
    fakes.by_provider(provider).push(Ok(text="Bonjour from upstream.", prompt_tokens=13))
    raw = await client.messages.with_raw_response.create(
        model=alias,
        max_tokens=64,
        system="Answer in French.",
        messages=HELLO,
        stop_sequences=["END"],
        metadata={"user_id": "user-42"},
        # An older client: API versions before 2026-10-21 take sampling parameters.
        extra_headers={"anthropic-version": "2023-06-01"},
        extra_body={"temperature": 0.5},
    )
    message = await raw.parse()
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == upstream  # the served version, as Anthropic reports its own
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Bonjour from upstream."
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (13, 7)
    assert raw.headers["x-gateway-provider"] == provider
    assert message._request_id == raw.headers["x-request-id"]
    decision = last_decision(gateway)
    assert (decision.api, decision.route, decision.prompt_tokens) == (
        "anthropic.messages",
        alias,
        13,
    )
    # The provider got the system prompt, the turn and the sampling in its own format.
    sent = fakes.by_provider(provider).requests[-1].body
    assert "Answer in French." in str(sent)
    assert "Hello" in str(sent)


async def test_system_blocks_stop_and_limit_reach_the_provider(
    gateway: TestClient[Any, Any], client: Any, fakes: Fakes
) -> None:
    fakes.openai.push(Ok(finish="length"))
    message = await client.messages.create(
        model="gpt",
        max_tokens=5,
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "One"}]},
            {"role": "assistant", "content": "Two"},
            {"role": "user", "content": "Three"},
        ],
        stop_sequences=["\n\n"],
        extra_body={"top_p": 0.9},
        output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}},
    )
    assert message.stop_reason == "max_tokens"
    sent = fakes.openai.requests[-1].body
    assert sent["messages"][0]["role"] == "system"
    assert [p["text"] for p in sent["messages"][0]["content"]] == ["Be brief.", "Be kind."]
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert (sent["max_tokens"], sent["stop"], sent["top_p"]) == (5, ["\n\n"], 0.9)
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"] == {"type": "object"}


@pytest.mark.parametrize("alias", ALIASES)
async def test_stream_is_anthropics_event_sequence(
    alias: str, gateway: TestClient[Any, Any], client: Any, fakes: Fakes
) -> None:
    provider, upstream = MODELS[alias]
    fakes.by_provider(provider).push(Ok(text="one two three four", completion_tokens=4))
    events = []
    async with client.messages.stream(model=alias, max_tokens=64, messages=HELLO) as stream:
        async for event in stream:
            events.append(event.type)
        final = await stream.get_final_message()
        text = "".join(b.text for b in final.content if b.type == "text")
    assert text == "one two three four"
    assert final.stop_reason == "end_turn"
    assert final.model == upstream
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 4)
    # The SDK's own events, in Anthropic's order (text events interleave with the deltas).
    raw = [e for e in events if e not in ("text",)]
    assert raw[:2] == ["message_start", "content_block_start"]
    assert raw[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(raw[2:-3]) == {"content_block_delta"}


async def test_stream_wire_events_include_ping_and_cumulative_usage(
    gateway: TestClient[Any, Any], fakes: Fakes
) -> None:
    fakes.gemini.push(Ok(text="hi there"))
    response = await gateway.post(
        "/v1/messages",
        json={"model": "gemini", "max_tokens": 8, "stream": True, "messages": HELLO},
        headers={"x-api-key": TEAM_KEY, "anthropic-version": "2023-06-01"},
    )
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    body = await response.text()
    names = [line[len("event: ") :] for line in body.splitlines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert '"usage":{"input_tokens":11,"output_tokens":7}' in body
    assert "[DONE]" not in body


@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("stream", [False, True])
async def test_tool_use_round_trip(
    alias: str, stream: bool, gateway: TestClient[Any, Any], client: Any, fakes: Fakes
) -> None:
    provider, _ = MODELS[alias]
    fake = fakes.by_provider(provider)
    fake.push(Ok(tool_call=("get_weather", {"city": "Paris"})), Ok(text="It is sunny in Paris."))
    question: list[MessageParam] = [{"role": "user", "content": "Weather in Paris?"}]
    kwargs: dict[str, Any] = {"model": alias, "max_tokens": 64, "tools": [WEATHER]}
    if stream:
        async with client.messages.stream(messages=question, **kwargs) as events:
            first = await events.get_final_message()
    else:
        first = await client.messages.create(messages=question, **kwargs)
    assert first.stop_reason == "tool_use"
    call = next(block for block in first.content if block.type == "tool_use")
    assert (call.name, call.input) == ("get_weather", {"city": "Paris"})
    assert call.id
    follow_up: list[MessageParam] = [
        *question,
        {"role": "assistant", "content": first.content},  # the SDK's blocks, sent back
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 24C"}],
        },
    ]
    second = await client.messages.create(messages=follow_up, **kwargs)
    assert second.content[0].text == "It is sunny in Paris."
    assert second.stop_reason == "end_turn"
    # The provider saw the call and its result in its own format, linked by the call id.
    sent = str(fake.requests[-1].body)
    assert "Sunny, 24C" in sent
    assert "get_weather" in sent


async def test_tool_choice_and_parallel_flag_translate(
    gateway: TestClient[Any, Any], client: Any, fakes: Fakes
) -> None:
    await client.messages.create(
        model="gpt",
        max_tokens=16,
        messages=HELLO,
        tools=[WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    sent = fakes.openai.requests[-1].body
    assert sent["tool_choice"] == "required"
    assert sent["parallel_tool_calls"] is False
    assert sent["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]
    await client.messages.create(
        model="claude",
        max_tokens=16,
        messages=HELLO,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert fakes.anthropic.requests[-1].body["tool_choice"] == {
        "type": "tool",
        "name": "get_weather",
    }


async def test_images_reach_the_provider(
    gateway: TestClient[Any, Any], client: Any, fakes: Fakes
) -> None:
    await client.messages.create(
        model="claude",
        max_tokens=16,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw=="},
                    },
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    )
    blocks = fakes.anthropic.requests[-1].body["messages"][0]["content"]
    assert blocks[0]["source"] == {"type": "base64", "media_type": "image/png", "data": "iVBORw=="}


async def test_keys_in_x_api_key_or_bearer(
    gateway: TestClient[Any, Any], anthropic_for: AnthropicFactory
) -> None:
    bearer = anthropic_for(gateway, key=None, auth_token=TEAM_KEY)
    message = await bearer.messages.create(model="gpt", max_tokens=8, messages=HELLO)
    assert message.content[0].text
    missing = await gateway.post("/v1/messages", json={"model": "gpt"})
    assert missing.status == 401
    assert await missing.json() == {
        "type": "error",
        "error": {
            "type": "authentication_error",
            "message": "Missing API key: send 'x-api-key: <team key>' or "
            "'Authorization: Bearer <team key>'.",
        },
        "request_id": missing.headers["x-request-id"],
    }
    wrong = anthropic_for(gateway, key="sk-wrong")
    with pytest.raises(anthropic.AuthenticationError) as failure:
        await wrong.messages.create(model="gpt", max_tokens=8, messages=HELLO)
    assert failure.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt", "messages": HELLO}, "max_tokens"),
        ({"model": "gpt", "max_tokens": 8, "messages": []}, "messages"),
        ({"model": "gpt", "max_tokens": 8, "messages": HELLO, "temperature": 1.5}, "temperature"),
        ({"model": "gpt", "max_tokens": 8, "messages": HELLO, "colour": "red"}, "colour"),
        (
            {
                "model": "gpt",
                "max_tokens": 8,
                "messages": HELLO,
                "thinking": {"type": "enabled", "budget_tokens": 1024},
            },
            "thinking",
        ),
        (
            {
                "model": "gpt",
                "max_tokens": 8,
                "messages": [
                    {"role": "user", "content": [{"type": "document", "source": {}}]},
                ],
            },
            "messages",
        ),
        (
            {
                "model": "gpt",
                "max_tokens": 8,
                "messages": HELLO,
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            "tools",
        ),
    ],
)
async def test_bad_requests_are_anthropic_400s_naming_the_field(
    gateway: TestClient[Any, Any], body: dict[str, Any], param: str, fakes: Fakes
) -> None:
    response = await gateway.post("/v1/messages", json=body, headers={"x-api-key": TEAM_KEY})
    assert response.status == 400
    payload = await response.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "invalid_request_error"
    assert param in payload["error"]["message"]
    assert not fakes.openai.requests


async def test_upstream_errors_in_anthropic_statuses(
    gateway: TestClient[Any, Any], client: Any, fakes: Fakes
) -> None:
    fakes.openai.push(Fail(429, retry_after=3))
    with pytest.raises(anthropic.RateLimitError) as limited:
        await client.messages.create(model="gpt", max_tokens=8, messages=HELLO)
    assert limited.value.response.headers["retry-after"] == "3"
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    fakes.gemini.push(Fail(503))
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        await client.messages.create(model="gemini", max_tokens=8, messages=HELLO)
    assert overloaded.value.status_code == 529  # Anthropic's overloaded status
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as unknown:
        await client.messages.create(model="nope", max_tokens=8, messages=HELLO)
    assert unknown.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


async def test_a_stream_cut_after_content_ends_with_an_error_event(
    gateway: TestClient[Any, Any], client: Any, fakes: Fakes
) -> None:
    fakes.openai.push(CutStream(text="Hello from the"))
    received: list[str] = []

    async def read() -> None:
        async with client.messages.stream(model="gpt", max_tokens=64, messages=HELLO) as stream:
            async for text in stream.text_stream:
                received.append(text)

    with pytest.raises(anthropic.APIStatusError) as failure:
        await read()
    assert "".join(received).startswith("Hello")
    assert failure.value.body["error"]["type"] == "api_error"  # type: ignore[index]


async def test_count_tokens_is_the_labelled_estimate(
    gateway: TestClient[Any, Any], client: Any, fakes: Fakes
) -> None:
    raw = await client.messages.with_raw_response.count_tokens(
        model="gpt", system="Be brief.", messages=HELLO, tools=[WEATHER]
    )
    counted = await raw.parse()
    assert raw.headers["x-gateway-token-count"] == "estimate; method=chars/4"
    longer = await client.messages.count_tokens(
        model="gpt", messages=[{"role": "user", "content": "Hello " * 400}]
    )
    assert 0 < counted.input_tokens < longer.input_tokens
    assert 550 <= longer.input_tokens <= 700  # ~2400 characters at ~4 a token
    assert not fakes.openai.requests  # counting calls no provider
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.count_tokens(model="nope", messages=HELLO)


async def test_models_list_in_anthropic_shape(client: Any) -> None:
    page = await client.models.list()
    ids = [model.id for model in page.data]
    assert {"gpt", "claude", "gemini", "ollama", "default"} <= set(ids)
    assert page.data[0].type == "model"
    one = await client.models.retrieve("claude")
    assert one.id == "claude"


# -- the same policy ---------------------------------------------------------------------------
async def test_residency_holds_for_anthropic_clients(
    gateway: TestClient[Any, Any], anthropic_for: AnthropicFactory, fakes: Fakes
) -> None:
    eu = anthropic_for(gateway, key=EU_TEAM_KEY)
    with pytest.raises(anthropic.APIStatusError) as refused:
        await eu.messages.create(model="default", max_tokens=8, messages=HELLO)  # us only
    assert refused.value.status_code == 503
    assert "allowed regions" in refused.value.body["error"]["message"]  # type: ignore[index]
    assert not fakes.openai.requests
    assert not fakes.anthropic.requests
    raw = await eu.messages.with_raw_response.create(model="gemini", max_tokens=8, messages=HELLO)
    assert raw.headers["x-gateway-region"] == "eu"


async def test_fallback_across_provider_kinds(
    make_gateway: Any, anthropic_for: AnthropicFactory, fakes: Fakes
) -> None:
    routes = [{"name": "default", "candidates": ["claude", "gemini", "ollama"]}]
    gateway = await make_gateway(policy_for(fakes, routes=routes))
    client = anthropic_for(gateway)
    fakes.anthropic.push(Fail(529))
    fakes.gemini.push(Fail(500))
    raw = await client.messages.with_raw_response.create(
        model="default", max_tokens=8, messages=HELLO
    )
    message = await raw.parse()
    assert message.content[0].text == "Hello from the fake provider."
    assert message.model == MODELS["ollama"][1]  # an Anthropic-shaped answer from Ollama
    assert raw.headers["x-gateway-provider"] == "ollama"
    assert raw.headers["x-gateway-fallbacks"] == "2"


async def test_team_limits_hold_for_anthropic_clients(
    make_gateway: Any, anthropic_for: AnthropicFactory, fakes: Fakes
) -> None:
    data = policy_for(fakes).model_dump()
    data["teams"][0]["requests_per_minute"] = 2
    from gateway.policy.model import Policy

    gateway = await make_gateway(Policy.model_validate(data))
    client = anthropic_for(gateway)
    for _ in range(2):
        await client.messages.create(model="gpt", max_tokens=8, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError) as limited:
        await client.messages.create(model="gpt", max_tokens=8, messages=HELLO)
    assert limited.value.body["type"] == "error"  # type: ignore[index]
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert len(fakes.openai.requests) == 2
