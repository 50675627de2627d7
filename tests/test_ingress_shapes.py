"""Every body and stream event of the new formats validates against the official SDKs' types.

The SDKs build their objects without validation (a missing required field goes unnoticed until a
client reads it), so these tests validate what the gateway sends with pydantic against the
``anthropic`` and ``openai`` packages' own models: each non-streamed answer, and each SSE event of
a text answer, a tool-call answer and a stream that fails after its first content.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from anthropic.types import Message, MessageTokensCount, RawMessageStreamEvent
from openai.types import CreateEmbeddingResponse
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.conftest import TEAM_KEY, Fakes
from tests.fakes.base import CutStream, Ok
from tests.test_embeddings import embedding_policy

ANTHROPIC_EVENT = TypeAdapter(RawMessageStreamEvent)
RESPONSES_EVENT = TypeAdapter(ResponseStreamEvent)
TOOL = {"name": "get_weather", "input_schema": {"type": "object"}}
FUNCTION = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
ANSWERS = [
    pytest.param(Ok(text="Paris is the capital."), id="text"),
    pytest.param(Ok(tool_call=("get_weather", {"city": "Paris"})), id="tool-call"),
    pytest.param(Ok(text="cut short", finish="length"), id="length"),
]


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of every SSE event in ``text``."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], orjson.loads(fields["data"])))
    return events


@pytest.mark.parametrize("answer", ANSWERS)
@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_messages_bodies_and_events_are_anthropics_types(
    gateway: TestClient[Any, Any], fakes: Fakes, answer: Ok, provider: str
) -> None:
    alias = {"openai": "gpt", "gemini": "gemini"}[provider]
    body = {
        "model": alias,
        "max_tokens": 32,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [TOOL],
    }
    headers = {"x-api-key": TEAM_KEY}
    fakes.by_provider(provider).push(answer, answer)
    plain = await gateway.post("/v1/messages", json=body, headers=headers)
    assert plain.status == 200
    Message.model_validate(await plain.json(), strict=False)
    streamed = await gateway.post("/v1/messages", json={**body, "stream": True}, headers=headers)
    events = sse_events(await streamed.text())
    for name, data in events:
        if name == "ping":
            assert data == {"type": "ping"}
            continue
        event = ANTHROPIC_EVENT.validate_python(data)
        assert event.type == name
    assert events[-1][0] == "message_stop"


async def test_count_tokens_is_anthropics_type(gateway: TestClient[Any, Any]) -> None:
    response = await gateway.post(
        "/v1/messages/count_tokens",
        json={"model": "gpt", "messages": [{"role": "user", "content": "Hello there"}]},
        headers={"x-api-key": TEAM_KEY},
    )
    MessageTokensCount.model_validate(await response.json())


@pytest.mark.parametrize("answer", ANSWERS)
@pytest.mark.parametrize("provider", ["anthropic", "ollama"])
async def test_responses_bodies_and_events_are_openais_types(
    gateway: TestClient[Any, Any], fakes: Fakes, answer: Ok, provider: str
) -> None:
    alias = {"anthropic": "claude", "ollama": "ollama"}[provider]
    body = {"model": alias, "input": "Weather in Paris?", "tools": [FUNCTION]}
    headers = {"Authorization": f"Bearer {TEAM_KEY}"}
    fakes.by_provider(provider).push(answer, answer)
    plain = await gateway.post("/v1/responses", json=body, headers=headers)
    assert plain.status == 200
    Response.model_validate(await plain.json())
    streamed = await gateway.post("/v1/responses", json={**body, "stream": True}, headers=headers)
    events = sse_events(await streamed.text())
    for number, (name, data) in enumerate(events):
        event = RESPONSES_EVENT.validate_python(data)
        assert event.type == name
        assert event.sequence_number == number


async def test_failed_streams_are_the_sdks_types(
    gateway: TestClient[Any, Any], fakes: Fakes
) -> None:
    fakes.openai.push(CutStream(), CutStream())
    anthropic_stream = await gateway.post(
        "/v1/messages",
        json={
            "model": "gpt",
            "max_tokens": 8,
            "stream": True,
            "messages": [{"role": "user", "content": "Hi"}],
        },
        headers={"x-api-key": TEAM_KEY},
    )
    name, data = sse_events(await anthropic_stream.text())[-1]
    assert name == "error"
    assert data["error"]["type"] == "api_error"
    responses_stream = await gateway.post(
        "/v1/responses",
        json={"model": "gpt", "input": "Hi", "stream": True},
        headers={"Authorization": f"Bearer {TEAM_KEY}"},
    )
    events = sse_events(await responses_stream.text())
    for name, data in events:
        assert RESPONSES_EVENT.validate_python(data).type == name
    assert [name for name, _ in events[-2:]] == ["error", "response.failed"]


async def test_embeddings_body_is_openais_type(
    make_gateway: Any, fakes: Fakes, embedder: Any
) -> None:
    gateway = await make_gateway(embedding_policy(fakes), embedder=embedder)
    for model in ("embed-ollama", "embed-openai", "embed-local"):
        response = await gateway.post(
            "/v1/embeddings",
            json={"model": model, "input": ["a", "b"], "encoding_format": "float"},
            headers={"Authorization": f"Bearer {TEAM_KEY}"},
        )
        # The SDK's type holds floats (it decodes base64 itself before building it).
        CreateEmbeddingResponse.model_validate(await response.json())
