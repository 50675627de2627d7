"""The semantic cache serves every ingress format: an answer stored from one client's request is
replayed to another's in its own shape, plain and streamed, and counts as a cache hit."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest
from aiohttp.test_utils import TestClient

from gateway.core.runtime import RUNTIME
from tests.conftest import TEAM_KEY, Fakes, SdkFactory, policy_for
from tests.fakes.base import Ok

QUESTION = "How do I reset my password?"


async def settle(client: TestClient[Any, Any]) -> None:
    """Wait for the background store of the previous answer."""
    assert client.app is not None
    for stage in client.app[RUNTIME].interceptors:
        await stage.drain()  # type: ignore[attr-defined]


@pytest.fixture
async def cached(make_gateway: Any, fakes: Fakes, embedder: Any) -> TestClient[Any, Any]:
    policy = policy_for(fakes, cache={"static_threshold": 0.85})
    client: TestClient[Any, Any] = await make_gateway(policy, embedder=embedder)
    return client


async def test_an_anthropic_answer_is_replayed_to_anthropic_and_responses_clients(
    cached: TestClient[Any, Any], fakes: Fakes, sdk_for: SdkFactory
) -> None:
    fakes.openai.push(Ok(text="Use the reset link on the sign-in page."))
    claude = anthropic.AsyncAnthropic(
        base_url=str(cached.make_url("")), api_key=TEAM_KEY, max_retries=0
    )
    try:
        ask: dict[str, Any] = {
            "model": "gpt",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": QUESTION}],
        }
        first = await claude.messages.with_raw_response.create(**ask)
        assert first.headers["x-gateway-cache"] == "miss"
        await settle(cached)
        again = await claude.messages.with_raw_response.create(**ask)
        assert again.headers["x-gateway-cache"] == "hit"
        message = await again.parse()
        assert message.content[0].text == "Use the reset link on the sign-in page."  # type: ignore[union-attr]
        assert message.stop_reason == "end_turn"
        async with claude.messages.stream(**ask) as stream:
            replayed = "".join([text async for text in stream.text_stream])
            final = await stream.get_final_message()
        assert replayed == "Use the reset link on the sign-in page."
        assert final.stop_reason == "end_turn"
    finally:
        await claude.close()
    # The same question from a Responses client with the same limit: the same entry.
    sdk: openai.AsyncOpenAI = sdk_for(cached)
    raw = await sdk.responses.with_raw_response.create(
        model="gpt", input=QUESTION, max_output_tokens=64
    )
    assert raw.headers["x-gateway-cache"] == "hit"
    assert raw.parse().output_text == "Use the reset link on the sign-in page."
    stream = await sdk.responses.create(
        model="gpt", input=QUESTION, max_output_tokens=64, stream=True
    )
    events = [event async for event in stream]
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "Use the reset link on the sign-in page."
    assert len(fakes.openai.requests) == 1  # one provider call for five answers
