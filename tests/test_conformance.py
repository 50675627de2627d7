"""One conformance suite, parametrized over every wire protocol.

Each case drives the gateway with the official OpenAI SDK (what an internal team uses) against a
loopback fake of one provider, and checks what the client sees and what the provider received.
"""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest

from tests.conftest import MODELS, PROVIDER_KEYS, Fakes
from tests.fakes.base import Blocked, CutStream, Fail, Malformed, Ok

PROVIDERS = ["openai", "anthropic", "gemini", "ollama"]
ALIAS = {provider: alias for alias, (provider, _) in MODELS.items()}
QUESTION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the weather in Paris?"},
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def pinned_model_sent(fakes: Fakes, provider: str) -> bool:
    """The provider received the pinned upstream id (in the body, or in Gemini's URL)."""
    request = fakes.by_provider(provider).requests[-1]
    pinned = MODELS[ALIAS[provider]][1]
    return bool(request.body.get("model") == pinned or pinned in request.path)


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


async def test_plain(provider: str, sdk: openai.AsyncOpenAI, fakes: Fakes) -> None:
    fakes.by_provider(provider).push(
        Ok(text="Sunny and mild.", prompt_tokens=12, completion_tokens=4)
    )
    raw = await sdk.chat.completions.with_raw_response.create(
        model=ALIAS[provider], messages=QUESTION, temperature=0.2, max_tokens=50
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Sunny and mild."
    assert completion.choices[0].finish_reason == "stop"
    assert raw.headers["x-gateway-provider"] == provider
    assert raw.headers["x-gateway-model"] == MODELS[ALIAS[provider]][1]
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (12, 4)
    assert pinned_model_sent(fakes, provider)


async def test_stream_with_usage(provider: str, sdk: openai.AsyncOpenAI, fakes: Fakes) -> None:
    fakes.by_provider(provider).push(
        Ok(text="Sunny and mild all day.", prompt_tokens=9, completion_tokens=6)
    )
    stream = await sdk.chat.completions.create(
        model=ALIAS[provider],
        messages=QUESTION,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage, roles = "", None, None, []
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
            if choice.delta.role:
                roles.append(choice.delta.role)
    assert text == "Sunny and mild all day."
    assert finish == "stop"
    assert roles == ["assistant"]
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (9, 6)


async def test_stream_without_usage_sends_no_usage_chunk(
    provider: str, sdk: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    stream = await sdk.chat.completions.create(
        model=ALIAS[provider], messages=QUESTION, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)


async def test_tool_call(provider: str, sdk: openai.AsyncOpenAI, fakes: Fakes) -> None:
    fakes.by_provider(provider).push(Ok(tool_call=("get_weather", {"city": "Paris"})))
    completion = await sdk.chat.completions.create(
        model=ALIAS[provider], messages=QUESTION, tools=[WEATHER_TOOL], tool_choice="auto"
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id


async def test_streamed_tool_call(provider: str, sdk: openai.AsyncOpenAI, fakes: Fakes) -> None:
    fakes.by_provider(provider).push(Ok(tool_call=("get_weather", {"city": "Paris"})))
    stream = await sdk.chat.completions.create(
        model=ALIAS[provider], messages=QUESTION, tools=[WEATHER_TOOL], stream=True
    )
    name, arguments, finish = "", "", None
    async for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                assert call.index == 0
                if call.function and call.function.name:
                    name += call.function.name
                if call.function and call.function.arguments:
                    arguments += call.function.arguments
            finish = choice.finish_reason or finish
    assert name == "get_weather"
    assert orjson.loads(arguments) == {"city": "Paris"}
    assert finish == "tool_calls"


async def test_tool_result_round_trip(provider: str, sdk: openai.AsyncOpenAI, fakes: Fakes) -> None:
    fakes.by_provider(provider).push(Ok(text="It is 18 C in Paris."))
    messages: list[Any] = [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 18}'},
    ]
    completion = await sdk.chat.completions.create(
        model=ALIAS[provider], messages=messages, tools=[WEATHER_TOOL]
    )
    assert completion.choices[0].message.content == "It is 18 C in Paris."
    sent = orjson.dumps(fakes.by_provider(provider).requests[-1].body).decode()
    assert "get_weather" in sent
    assert "18" in sent  # the tool's result reached the provider


async def test_upstream_auth_failure_is_not_the_clients(
    provider: str, sdk: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    fakes.by_provider(provider).push(
        Fail(401, message=f"bad key {PROVIDER_KEYS['FAKE_OPENAI_KEY']}")
    )
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.chat.completions.create(model=ALIAS[provider], messages=QUESTION)
    assert caught.value.status_code == 502
    body = caught.value.response.json()
    assert body["error"]["code"] == "upstream_auth_error"
    assert "SECRET" not in caught.value.response.text


async def test_rate_limited_with_retry_after(
    provider: str, sdk: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    fakes.by_provider(provider).push(Fail(429, message="slow down", retry_after=7))
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk.chat.completions.create(model=ALIAS[provider], messages=QUESTION)
    assert caught.value.response.json()["error"]["code"] == "upstream_rate_limited"
    if provider != "ollama":  # Ollama's API documents no Retry-After
        assert caught.value.response.headers["retry-after"] == "7"


@pytest.mark.parametrize("status", [500, 503])
async def test_server_error(
    provider: str, status: int, sdk: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    fakes.by_provider(provider).push(Fail(status, message="upstream exploded"))
    with pytest.raises(openai.InternalServerError) as caught:
        await sdk.chat.completions.create(model=ALIAS[provider], messages=QUESTION)
    assert caught.value.status_code == 503
    assert caught.value.response.json()["error"]["code"] == "upstream_overloaded"


async def test_malformed_body(provider: str, sdk: openai.AsyncOpenAI, fakes: Fakes) -> None:
    fakes.by_provider(provider).push(Malformed())
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.chat.completions.create(model=ALIAS[provider], messages=QUESTION)
    assert caught.value.status_code == 502
    assert caught.value.response.json()["error"]["code"] == "bad_upstream_response"


async def test_malformed_stream_before_content_is_a_502(
    provider: str, sdk: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    fakes.by_provider(provider).push(Malformed())
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.chat.completions.create(model=ALIAS[provider], messages=QUESTION, stream=True)
    assert caught.value.status_code == 502


async def test_cut_stream_ends_with_error_event(
    provider: str, sdk: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    fakes.by_provider(provider).push(CutStream(text="Sunny and"))
    stream = await sdk.chat.completions.create(
        model=ALIAS[provider], messages=QUESTION, stream=True
    )
    text: list[str] = []

    async def read_all() -> None:
        async for chunk in stream:
            text.extend(choice.delta.content or "" for choice in chunk.choices)

    with pytest.raises(openai.APIError) as caught:
        await read_all()
    # What was sent stays sent; nothing from another attempt is spliced after it.
    assert "".join(text).startswith("Sunny")
    assert "stream" in caught.value.message or "cut" in caught.value.message


async def test_safety_block(provider: str, sdk: openai.AsyncOpenAI, fakes: Fakes) -> None:
    if provider == "ollama":
        pytest.skip("Ollama has no moderation layer")
    fakes.by_provider(provider).push(Blocked())
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(model=ALIAS[provider], messages=QUESTION)
    assert caught.value.response.json()["error"]["code"] == "content_blocked"
    assert caught.value.response.headers["x-gateway-provider"] == provider


async def test_json_mode_reaches_provider(
    provider: str, sdk: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    fakes.by_provider(provider).push(Ok(text='{"answer": "sunny"}'))
    completion = await sdk.chat.completions.create(
        model=ALIAS[provider], messages=QUESTION, response_format={"type": "json_object"}
    )
    assert orjson.loads(completion.choices[0].message.content or "") == {"answer": "sunny"}
    sent = orjson.dumps(fakes.by_provider(provider).requests[-1].body).decode().lower()
    assert "json" in sent
