"""The Ollama fake is faithful: the official ``ollama`` SDK parses everything it serves.

If the SDK's pydantic models accept the fake's JSON and NDJSON (and raise its ``ResponseError``
for the fake's error bodies), the adapter tests that run against the fake test Ollama's real
wire format rather than our guess at it.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import aiohttp
import httpx
import ollama
import orjson
import pytest

from tests.fakes.base import Blocked, CutStream, Fail, Hang, Malformed, Ok
from tests.fakes.ollama import NDJSON, ErrorMidStream, FakeOllama

MODEL = "llama3.2:3b"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    server = FakeOllama()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def client(
    fake: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ollama.AsyncClient]:
    # The SDK adds "Authorization: Bearer $OLLAMA_API_KEY" when set: keep the tests hermetic.
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    sdk = ollama.AsyncClient(host=fake.base_url)
    try:
        yield sdk
    finally:
        await sdk.close()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def _drain(
    parts: AsyncIterator[ollama.ChatResponse], into: list[ollama.ChatResponse]
) -> None:
    """Collect streamed parts into ``into`` so a test still sees them after the stream fails."""
    async for part in parts:
        into.append(part)


async def test_chat_non_stream(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    fake.push(Ok(text="Paris is the capital.", prompt_tokens=21, completion_tokens=6))
    response = await client.chat(model=MODEL, messages=_user("Capital of France?"), stream=False)

    assert isinstance(response, ollama.ChatResponse)
    assert response.message.role == "assistant"
    assert response.message.content == "Paris is the capital."
    assert response.message.tool_calls is None
    assert response.model == MODEL
    assert response.done is True
    assert response.done_reason == "stop"
    assert response.prompt_eval_count == 21
    assert response.eval_count == 6
    # Timings are integer nanoseconds and add up.
    assert response.total_duration is not None
    assert response.eval_duration is not None
    assert response.total_duration > response.eval_duration > 0
    assert str(response.created_at).endswith("Z")


async def test_chat_records_the_request_as_the_sdk_sent_it(
    fake: FakeOllama, client: ollama.AsyncClient
) -> None:
    image = b"\x89PNG\r\n\x1a\nfake-pixels"
    await client.chat(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is this?", "images": [image]},
        ],
        stream=False,
        format="json",
        options={"temperature": 0.2, "num_predict": 64, "stop": ["\n\n"], "seed": 7},
        keep_alive="10m",
    )

    [recorded] = fake.requests
    assert recorded.method == "POST"
    assert recorded.path == "/api/chat"
    assert recorded.headers["content-type"] == "application/json"
    assert "authorization" not in recorded.headers
    body = recorded.body
    assert body["model"] == MODEL
    assert body["stream"] is False
    assert body["format"] == "json"
    assert body["keep_alive"] == "10m"
    assert body["options"] == {"temperature": 0.2, "num_predict": 64, "stop": ["\n\n"], "seed": 7}
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][1]["images"] == [base64.b64encode(image).decode()]


async def test_chat_stream(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    fake.push(Ok(text="The sky is blue.", prompt_tokens=9, completion_tokens=5))
    parts = [
        part async for part in await client.chat(model=MODEL, messages=_user("Sky?"), stream=True)
    ]

    assert len(parts) >= 3
    assert "".join(p.message.content or "" for p in parts) == "The sky is blue."
    assert all(p.done is False for p in parts[:-1])
    assert all(p.eval_count is None for p in parts[:-1])
    final = parts[-1]
    assert final.done is True
    assert final.done_reason == "stop"
    assert final.prompt_eval_count == 9
    assert final.eval_count == 5
    assert fake.requests[0].body["stream"] is True


async def test_stream_is_ndjson_and_the_default(fake: FakeOllama) -> None:
    """Without ``stream`` Ollama streams: one JSON object per line, the last one done."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{fake.base_url}/api/chat", json={"model": MODEL, "messages": _user("hi")}
        ) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"] == NDJSON
        raw = await response.read()
    lines = raw.split(b"\n")
    assert lines[-1] == b""  # every object, the last included, ends with a newline
    objects = [orjson.loads(line) for line in lines[:-1]]
    assert [o["done"] for o in objects] == [False] * (len(objects) - 1) + [True]
    assert objects[-1]["eval_count"] == Ok().completion_tokens


async def test_length_and_served_model(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    fake.push(Ok(finish="length", served_model="llama3.2:3b-instruct-q8_0"))
    response = await client.chat(model=MODEL, messages=_user("Go on"), stream=False)
    assert response.done_reason == "length"
    assert response.model == "llama3.2:3b-instruct-q8_0"


async def test_tool_call(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    fake.push(Ok(tool_call=("get_weather", {"city": "Paris"})))
    response = await client.chat(
        model=MODEL, messages=_user("Weather in Paris?"), tools=[WEATHER_TOOL], stream=False
    )

    assert response.done_reason == "stop"  # Ollama does not say "tool_calls"
    assert response.message.content == ""
    calls = response.message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == {"city": "Paris"}
    assert isinstance(calls[0].function.arguments, dict)
    assert fake.requests[0].body["tools"][0]["function"]["name"] == "get_weather"


async def test_tool_call_stream(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    fake.push(Ok(tool_call=("get_weather", {"city": "Oslo"})))
    parts = [
        part
        async for part in await client.chat(
            model=MODEL, messages=_user("Weather?"), tools=[WEATHER_TOOL], stream=True
        )
    ]
    with_calls = [p for p in parts if p.message.tool_calls]
    assert len(with_calls) == 1
    assert with_calls[0].done is False  # the call arrives whole, before the done line
    calls = with_calls[0].message.tool_calls or []
    assert calls[0].function.arguments == {"city": "Oslo"}
    assert parts[-1].done is True


async def test_tool_call_needs_tools_in_the_request(
    fake: FakeOllama, client: ollama.AsyncClient
) -> None:
    fake.push(Ok(text="No tools here.", tool_call=("get_weather", {"city": "Paris"})))
    response = await client.chat(model=MODEL, messages=_user("Weather?"), stream=False)
    assert response.message.tool_calls is None
    assert response.message.content == "No tools here."


async def test_tool_result_turn_is_recorded(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    await client.chat(
        model=MODEL,
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}
                ],
            },
            {"role": "tool", "content": "21 C, sunny", "tool_name": "get_weather"},
        ],
        tools=[WEATHER_TOOL],
        stream=False,
    )
    sent = fake.requests[0].body["messages"]
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Rome"}
    assert sent[2] == {"role": "tool", "content": "21 C, sunny", "tool_name": "get_weather"}


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, "registry.ollama.ai/library/gemma:2b does not support tools"),
        (401, "unauthorized"),
        (404, "model 'llama3.2:3b' not found"),
        (429, "too many requests"),
        (500, "llama runner process has terminated"),
        (502, "cloud model unreachable"),
    ],
)
async def test_errors(
    fake: FakeOllama, client: ollama.AsyncClient, status: int, message: str
) -> None:
    fake.push(Fail(status, message))
    with pytest.raises(ollama.ResponseError) as info:
        await client.chat(model=MODEL, messages=_user("hi"), stream=False)
    assert info.value.status_code == status
    assert info.value.error == message


async def test_error_before_stream_starts(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    fake.push(Fail(503, "server busy", retry_after=2))
    stream = await client.chat(model=MODEL, messages=_user("hi"), stream=True)
    with pytest.raises(ollama.ResponseError) as info:
        await _drain(stream, [])
    assert info.value.status_code == 503
    assert info.value.error == "server busy"


async def test_retry_after_header(fake: FakeOllama) -> None:
    fake.push(Fail(429, "slow down", retry_after=3))
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fake.base_url}/api/chat", json={"model": MODEL, "stream": False}) as resp,
    ):
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "3"
        assert await resp.json() == {"error": "slow down"}


async def test_error_mid_stream(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    fake.push(ErrorMidStream(text="Partial answer", message="unexpected EOF"))
    received: list[ollama.ChatResponse] = []
    stream = await client.chat(model=MODEL, messages=_user("hi"), stream=True)
    with pytest.raises(ollama.ResponseError) as info:
        await _drain(stream, received)
    assert "".join(p.message.content or "" for p in received) == "Partial answer"
    assert info.value.error == "unexpected EOF"
    assert info.value.status_code == -1  # the SDK's marker: the 200 was already sent


async def test_cut_stream(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    fake.push(CutStream(text="Hello from the"))
    received: list[ollama.ChatResponse] = []
    stream = await client.chat(model=MODEL, messages=_user("hi"), stream=True)
    with pytest.raises(httpx.HTTPError):
        await _drain(stream, received)
    assert "".join(p.message.content or "" for p in received) == "Hello from the"
    assert all(p.done is False for p in received)


async def test_cut_non_stream(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    fake.push(CutStream())
    with pytest.raises(httpx.HTTPError):
        await client.chat(model=MODEL, messages=_user("hi"), stream=False)


async def test_malformed(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    fake.push(Malformed())
    with pytest.raises(ValueError, match="Expecting value"):  # json.JSONDecodeError
        await client.chat(model=MODEL, messages=_user("hi"), stream=False)


async def test_hang_then_answer(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    fake.push(Hang(0.05, then=Ok(text="late")))
    response = await client.chat(model=MODEL, messages=_user("hi"), stream=False)
    assert response.message.content == "late"


def test_blocked_is_not_supported() -> None:
    server = FakeOllama()
    with pytest.raises(NotImplementedError, match="no moderation"):
        server.push(Blocked())
    with pytest.raises(NotImplementedError):
        server.push(Hang(0.1, then=Blocked()))
    assert not server.script


async def test_model_is_required(fake: FakeOllama) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fake.base_url}/api/chat", json={"messages": []}) as resp,
    ):
        assert resp.status == 400
        assert await resp.json() == {"error": "model is required"}


async def test_probes(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    await client.chat(model=MODEL, messages=_user("hi"), stream=False)
    listed = await client.list()
    assert [m.model for m in listed.models] == [MODEL]
    assert listed.models[0].details is not None
    assert listed.models[0].details.family == "llama"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{fake.base_url}/api/version") as resp:
            assert (await resp.json())["version"].count(".") == 2
        async with session.get(f"{fake.base_url}/") as resp:
            assert await resp.text() == "Ollama is running"
