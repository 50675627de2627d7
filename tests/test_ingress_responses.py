"""``POST /v1/responses``: the official ``openai`` SDK's Responses API as the client.

The SDK's own stream helpers (``responses.create(stream=True)`` and ``responses.stream(...)``)
accumulate the events and check their order and identities, so a wrong sequence fails here; each
provider kind answers behind the same policy as chat completions.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestClient
from openai.types.responses import FunctionToolParam
from pydantic import BaseModel

from gateway.core.runtime import RUNTIME
from gateway.policy.model import Policy
from tests.conftest import EU_TEAM_KEY, MODELS, TEAM_KEY, Fakes, SdkFactory, policy_for
from tests.fakes.base import CutStream, Fail, Ok

ALIASES = list(MODELS)
WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
AUTH = {"Authorization": f"Bearer {TEAM_KEY}"}


def last_decision(gateway: TestClient[Any, Any]) -> Any:
    assert gateway.app is not None
    return gateway.app[RUNTIME].decisions.recent(1)[0]


@pytest.mark.parametrize("alias", ALIASES)
async def test_plain_response_from_every_provider_kind(
    alias: str, gateway: TestClient[Any, Any], sdk: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    provider, upstream = MODELS[alias]
    fakes.by_provider(provider).push(Ok(text="Bonjour.", prompt_tokens=12, completion_tokens=3))
    raw = await sdk.responses.with_raw_response.create(
        model=alias,
        instructions="Answer in French.",
        input="Hello",
        max_output_tokens=50,
        temperature=0.3,
        metadata={"ticket": "T-1"},
    )
    response = raw.parse()
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == "Bonjour."
    assert response.model == upstream
    assert response.instructions == "Answer in French."
    assert response.max_output_tokens == 50
    assert response.metadata == {"ticket": "T-1"}
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 3)
    assert response.usage.total_tokens == 15
    assert raw.headers["x-gateway-provider"] == provider
    assert last_decision(gateway).api == "openai.responses"
    sent = str(fakes.by_provider(provider).requests[-1].body)
    assert "Answer in French." in sent
    assert "Hello" in sent


async def test_items_translate_to_the_providers_format(
    gateway: TestClient[Any, Any], sdk: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    await sdk.responses.create(
        model="gpt",
        input=[
            {"role": "developer", "content": "Be terse."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is in this picture?"},
                    {
                        "type": "input_image",
                        "image_url": "https://example.com/a.png",
                        "detail": "low",
                    },
                ],
            },
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "And now?"},
        ],
        text={"format": {"type": "json_object"}},
        top_p=0.5,
    )
    sent = fakes.openai.requests[-1].body
    assert [m["role"] for m in sent["messages"]] == ["developer", "user", "assistant", "user"]
    assert sent["messages"][1]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "https://example.com/a.png", "detail": "low"},
    }
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["top_p"] == 0.5


@pytest.mark.parametrize("alias", ALIASES)
async def test_stream_events_parse_in_the_sdk(
    alias: str, gateway: TestClient[Any, Any], sdk: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    provider, upstream = MODELS[alias]
    fakes.by_provider(provider).push(Ok(text="one two three", completion_tokens=3))
    stream = await sdk.responses.create(model=alias, input="Count", stream=True)
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert kinds[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "one two three"
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == "one two three"
    assert completed.response.model == upstream
    assert completed.response.usage is not None
    assert completed.response.usage.output_tokens == 3


async def test_stream_helper_accumulates_a_final_response(
    gateway: TestClient[Any, Any], sdk: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    fakes.gemini.push(Ok(text='{"city": "Paris"}'))

    class City(BaseModel):
        city: str

    async with sdk.responses.stream(model="gemini", input="A city?", text_format=City) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_response()
    assert final.output_text == '{"city": "Paris"}'
    assert final.output_parsed == City(city="Paris")
    # text.format json_schema reached Gemini as its response schema.
    config = fakes.gemini.requests[-1].body["generationConfig"]
    assert config["responseMimeType"] == "application/json"


@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("stream", [False, True])
async def test_function_call_round_trip(
    alias: str, stream: bool, gateway: TestClient[Any, Any], sdk: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    provider, _ = MODELS[alias]
    fake = fakes.by_provider(provider)
    fake.push(Ok(tool_call=("get_weather", {"city": "Paris"})), Ok(text="Sunny in Paris."))
    question: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    if stream:
        async with sdk.responses.stream(model=alias, input=question, tools=[WEATHER]) as events:
            argument_deltas = [e.delta async for e in events if e.type.endswith("arguments.delta")]
            first = await events.get_final_response()
        assert "".join(argument_deltas) == '{"city":"Paris"}'
    else:
        first = await sdk.responses.create(model=alias, input=question, tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert call.arguments == '{"city":"Paris"}'
    assert call.call_id
    second = await sdk.responses.create(
        model=alias,
        input=[
            *question,
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24C"},
        ],
        tools=[WEATHER],
    )
    assert second.output_text == "Sunny in Paris."
    sent = str(fake.requests[-1].body)
    assert "Sunny, 24C" in sent
    assert "get_weather" in sent


async def test_a_length_finish_is_incomplete(
    gateway: TestClient[Any, Any], sdk: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    fakes.openai.push(Ok(finish="length"), Ok(finish="length"))
    response = await sdk.responses.create(model="gpt", input="Hi", max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    stream = await sdk.responses.create(model="gpt", input="Hi", stream=True)
    last = [event async for event in stream][-1]
    assert last.type == "response.incomplete"


async def test_a_stream_cut_after_content_ends_failed(
    gateway: TestClient[Any, Any], sdk: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    fakes.anthropic.push(CutStream(text="Hello from the"))
    stream = await sdk.responses.create(model="claude", input="Hi", stream=True)
    events = [event async for event in stream]
    assert events[-2].type == "error"
    assert events[-2].code == "bad_upstream_response"
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed"
    assert events[-1].response.error is not None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"store": True}, "store"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"input": [{"type": "input_file", "file_id": "f"}]}, "input"),
        ({"temperature": "hot"}, "temperature"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_unsupported_or_bad_fields_are_clear_400s(
    gateway: TestClient[Any, Any], extra: dict[str, Any], param: str, fakes: Fakes
) -> None:
    body = {"model": "gpt", "input": "Hi", **extra}
    response = await gateway.post("/v1/responses", json=body, headers=AUTH)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert param in error["message"]
    assert not fakes.openai.requests


async def test_previous_response_id_refusal_through_the_sdk(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.responses.create(model="gpt", input="Hi", previous_response_id="resp_1")
    assert refused.value.param == "previous_response_id"
    assert "whole conversation" in refused.value.message
    # store: false (what a stateless client sends) is fine.
    response = await sdk.responses.create(model="gpt", input="Hi", store=False)
    assert response.output_text


# -- the same policy ---------------------------------------------------------------------------
async def test_residency_holds_for_responses_clients(
    gateway: TestClient[Any, Any], sdk_for: SdkFactory, fakes: Fakes
) -> None:
    eu = sdk_for(gateway, key=EU_TEAM_KEY)
    with pytest.raises(openai.APIStatusError) as refused:
        await eu.responses.create(model="default", input="Hi")  # us candidates only
    assert refused.value.status_code == 503
    assert refused.value.code == "no_eligible_provider"
    assert not fakes.openai.requests
    raw = await eu.responses.with_raw_response.create(
        model="gemini", input="Hi", extra_headers={"x-gateway-regions": "eu"}
    )
    assert raw.headers["x-gateway-region"] == "eu"


async def test_fallback_for_responses_clients(
    make_gateway: Any, sdk_for: SdkFactory, fakes: Fakes
) -> None:
    routes = [{"name": "default", "candidates": ["gpt", "claude"]}]
    gateway = await make_gateway(policy_for(fakes, routes=routes))
    fakes.openai.push(Fail(500))
    raw = await sdk_for(gateway).responses.with_raw_response.create(model="default", input="Hi")
    response = raw.parse()
    assert response.output_text == "Hello from the fake provider."
    assert response.model == MODELS["claude"][1]
    assert raw.headers["x-gateway-fallbacks"] == "1"


async def test_team_limits_hold_for_responses_clients(
    make_gateway: Any, sdk_for: SdkFactory, fakes: Fakes
) -> None:
    data = policy_for(fakes).model_dump()
    data["teams"][0]["requests_per_minute"] = 1
    client = sdk_for(await make_gateway(Policy.model_validate(data)))
    await client.responses.create(model="gpt", input="Hi")
    with pytest.raises(openai.RateLimitError) as limited:
        await client.responses.create(model="gpt", input="Hi")
    assert limited.value.code == "rate_limit_exceeded"
    assert len(fakes.openai.requests) == 1
