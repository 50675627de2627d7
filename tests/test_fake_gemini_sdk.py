"""The Gemini fake is faithful: the official ``google-genai`` SDK parses everything it sends.

The SDK's async client runs on an ``aiohttp`` session the test owns (the SDK's own session class
subclasses ``aiohttp.ClientSession``, which aiohttp deprecates, and warnings are errors here) and
with retries off, so an error answer surfaces at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from google import genai
from google.genai import errors, types

from providers.base import Target
from providers.gemini import GeminiAdapter
from providers.schema import ChatRequest
from tests.fakes.base import Blocked, CutStream, Fail, Malformed, Ok
from tests.fakes.gemini import FakeGemini

MODEL = "gemini-2.5-flash"
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
WEATHER = types.Tool(
    function_declarations=[
        types.FunctionDeclaration(
            name="get_weather",
            description="Current weather for a city",
            parameters_json_schema=WEATHER_SCHEMA,
        )
    ]
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeGemini]:
    server = FakeGemini()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(fake: FakeGemini) -> AsyncIterator[genai.client.AsyncClient]:
    async with aiohttp.ClientSession() as session:
        sdk = genai.Client(
            api_key="test-key",
            http_options=types.HttpOptions(
                base_url=fake.base_url,
                api_version="v1beta",
                retry_options=types.HttpRetryOptions(attempts=1),
                aiohttp_client=session,
            ),
        )
        yield sdk.aio
        await sdk.aio.aclose()


async def test_generate_content_text(fake: FakeGemini, client: genai.client.AsyncClient) -> None:
    fake.push(Ok(text="Hi there, friend.", served_model="gemini-2.5-flash-preview-05-20"))
    response = await client.models.generate_content(model=MODEL, contents="Hello")
    assert response.text == "Hi there, friend."
    assert response.model_version == "gemini-2.5-flash-preview-05-20"
    assert response.response_id
    assert response.candidates is not None
    candidate = response.candidates[0]
    assert candidate.finish_reason == types.FinishReason.STOP
    assert candidate.content is not None
    assert candidate.content.role == "model"
    usage = response.usage_metadata
    assert usage is not None
    assert usage.prompt_token_count == 11
    assert usage.candidates_token_count == 7
    assert usage.total_token_count == 18


async def test_length_finish_and_model_version_defaults_to_the_url_model(
    fake: FakeGemini, client: genai.client.AsyncClient
) -> None:
    fake.push(Ok(finish="length"))
    response = await client.models.generate_content(model=MODEL, contents="Hello")
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert response.model_version == MODEL


async def test_function_call(fake: FakeGemini, client: genai.client.AsyncClient) -> None:
    fake.push(Ok(tool_call=("get_weather", {"city": "Paris"})))
    config = types.GenerateContentConfig(tools=[WEATHER])
    response = await client.models.generate_content(
        model=MODEL, contents="Weather in Paris?", config=config
    )
    assert response.function_calls is not None
    [call] = response.function_calls
    assert call.name == "get_weather"
    assert call.args == {"city": "Paris"}
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == types.FinishReason.STOP


async def test_no_function_call_without_declared_tools(
    fake: FakeGemini, client: genai.client.AsyncClient
) -> None:
    fake.push(Ok(text="plain", tool_call=("get_weather", {"city": "Paris"})))
    response = await client.models.generate_content(model=MODEL, contents="Hello")
    assert response.function_calls is None
    assert response.text == "plain"


async def test_generate_content_stream(fake: FakeGemini, client: genai.client.AsyncClient) -> None:
    fake.push(Ok(text="one two three", served_model="gemini-2.5-flash-001"))
    chunks = [
        chunk
        async for chunk in await client.models.generate_content_stream(model=MODEL, contents="Hi")
    ]
    assert "".join(chunk.text or "" for chunk in chunks) == "one two three"
    reasons = [chunk.candidates[0].finish_reason for chunk in chunks if chunk.candidates]
    assert reasons == [None, None, types.FinishReason.STOP]  # only the last chunk finishes
    assert {chunk.model_version for chunk in chunks} == {"gemini-2.5-flash-001"}
    assert len({chunk.response_id for chunk in chunks}) == 1
    final_usage = chunks[-1].usage_metadata
    assert final_usage is not None
    assert final_usage.candidates_token_count == 7
    assert final_usage.total_token_count == 18
    recorded = fake.requests[-1]
    assert recorded.path == f"/v1beta/models/{MODEL}:streamGenerateContent"
    assert recorded.query == {"alt": "sse"}


async def test_stream_function_call(fake: FakeGemini, client: genai.client.AsyncClient) -> None:
    fake.push(Ok(tool_call=("get_weather", {"city": "Rome"})))
    config = types.GenerateContentConfig(tools=[WEATHER])
    stream = await client.models.generate_content_stream(
        model=MODEL, contents="Weather in Rome?", config=config
    )
    chunks = [chunk async for chunk in stream]
    calls = [call for chunk in chunks for call in chunk.function_calls or []]
    assert [(call.name, call.args) for call in calls] == [("get_weather", {"city": "Rome"})]


@pytest.mark.parametrize(
    ("status", "grpc_status", "error_type"),
    [
        (400, "INVALID_ARGUMENT", errors.ClientError),
        (429, "RESOURCE_EXHAUSTED", errors.ClientError),
        (500, "INTERNAL", errors.ServerError),
        (503, "UNAVAILABLE", errors.ServerError),
    ],
)
async def test_errors(
    fake: FakeGemini,
    client: genai.client.AsyncClient,
    status: int,
    grpc_status: str,
    error_type: type[errors.APIError],
) -> None:
    fake.push(Fail(status, message="simulated failure", retry_after=30))
    with pytest.raises(error_type) as caught:
        await client.models.generate_content(model=MODEL, contents="Hello")
    assert caught.value.code == status
    assert caught.value.status == grpc_status
    assert caught.value.message == "simulated failure"
    assert len(fake.requests) == 1  # retries are off


async def test_rate_limit_carries_retry_info(
    fake: FakeGemini, client: genai.client.AsyncClient
) -> None:
    fake.push(Fail(429, message="You exceeded your current quota.", retry_after=1.5))
    with pytest.raises(errors.ClientError) as caught:
        await client.models.generate_content(model=MODEL, contents="Hello")
    details = caught.value.details["error"]["details"]
    retry = [d for d in details if d["@type"] == "type.googleapis.com/google.rpc.RetryInfo"]
    assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}]


async def test_error_in_a_stream_request(
    fake: FakeGemini, client: genai.client.AsyncClient
) -> None:
    fake.push(Fail(503, message="The model is overloaded."))
    with pytest.raises(errors.ServerError) as caught:
        async for _ in await client.models.generate_content_stream(model=MODEL, contents="Hi"):
            pass
    assert caught.value.status == "UNAVAILABLE"


async def test_prompt_block(fake: FakeGemini, client: genai.client.AsyncClient) -> None:
    fake.push(Blocked())
    response = await client.models.generate_content(model=MODEL, contents="something bad")
    assert response.candidates is None
    assert response.prompt_feedback is not None
    assert response.prompt_feedback.block_reason == types.BlockedReason.SAFETY


async def test_prompt_block_in_a_stream(fake: FakeGemini, client: genai.client.AsyncClient) -> None:
    fake.push(Blocked())
    stream = await client.models.generate_content_stream(model=MODEL, contents="something bad")
    chunks = [chunk async for chunk in stream]
    assert len(chunks) == 1
    assert chunks[0].prompt_feedback is not None
    assert chunks[0].prompt_feedback.block_reason == types.BlockedReason.SAFETY


async def test_cut_stream_breaks_the_connection(
    fake: FakeGemini, client: genai.client.AsyncClient
) -> None:
    fake.push(CutStream(text="Hello from the"))
    received: list[types.GenerateContentResponse] = []

    async def consume() -> None:
        async for chunk in await client.models.generate_content_stream(model=MODEL, contents="Hi"):
            received.append(chunk)

    with pytest.raises(aiohttp.ClientError):
        await consume()
    assert "".join(chunk.text or "" for chunk in received) == "Hello from the"
    assert all(chunk.candidates and chunk.candidates[0].finish_reason is None for chunk in received)


async def test_malformed_body_is_not_json(
    fake: FakeGemini, client: genai.client.AsyncClient
) -> None:
    fake.push(Malformed())
    with pytest.raises(ValueError, match="Expecting value"):  # json.JSONDecodeError
        await client.models.generate_content(model=MODEL, contents="Hello")


async def test_recorded_request_is_what_the_sdk_sent_and_matches_the_adapter(
    fake: FakeGemini, client: genai.client.AsyncClient
) -> None:
    answer_schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    config = types.GenerateContentConfig(
        system_instruction="You are terse.",
        temperature=0.2,
        top_p=0.9,
        max_output_tokens=64,
        stop_sequences=["END"],
        response_mime_type="application/json",
        response_json_schema=answer_schema,
        tools=[WEATHER],
        tool_config=types.ToolConfig(
            function_calling_config=types.FunctionCallingConfig(
                mode=types.FunctionCallingConfigMode.ANY, allowed_function_names=["get_weather"]
            )
        ),
    )
    await client.models.generate_content(model=MODEL, contents="Weather in Paris?", config=config)
    recorded = fake.requests[-1]
    assert recorded.method == "POST"
    assert recorded.path == f"/v1beta/models/{MODEL}:generateContent"
    assert recorded.headers["x-goog-api-key"] == "test-key"
    sent = recorded.body
    assert sent["contents"] == [{"role": "user", "parts": [{"text": "Weather in Paris?"}]}]
    assert sent["generationConfig"]["maxOutputTokens"] == 64

    # The adapter, given the same request in OpenAI form, writes the body the SDK wrote.
    openai_request = ChatRequest.from_body(
        {
            "model": "alias",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Weather in Paris?"},
            ],
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 64,
            "stop": "END",
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": answer_schema},
            },
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "description": "Current weather for a city",
                        "parameters": WEATHER_SCHEMA,
                    },
                }
            ],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        }
    )
    target = Target(provider="gemini", base_url=fake.base_url, model=MODEL, api_key="test-key")
    upstream = GeminiAdapter().build_request(openai_request, target)
    ours = orjson.loads(upstream.body)
    # The SDK tags the system instruction as a user turn; the API does not require a role.
    assert sent["systemInstruction"]["parts"] == ours["systemInstruction"]["parts"]
    for key in ("contents", "generationConfig", "toolConfig"):
        assert ours[key] == sent[key], key
    # The SDK writes function declarations with proto field names (parameters_json_schema);
    # Google's JSON parser takes those and the lowerCamelCase JSON names the adapter uses.
    [sent_declaration] = sent["tools"][0]["functionDeclarations"]
    [our_declaration] = ours["tools"][0]["functionDeclarations"]
    assert our_declaration == {
        "name": sent_declaration["name"],
        "description": sent_declaration["description"],
        "parametersJsonSchema": sent_declaration["parameters_json_schema"],
    }
    assert upstream.url == f"{fake.base_url}{recorded.path}"
