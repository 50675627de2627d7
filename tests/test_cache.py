"""The semantic cache through the HTTP API: hits, isolation, guards, streaming, feedback.

Replicas, stores, outages and invalidation: tests/test_cache_replicas.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from gateway.core.runtime import RUNTIME
from tests.conftest import (
    LIMITED_TEAM_KEY,
    TEAM_KEY,
    Fakes,
    SdkFactory,
    policy_for,
)
from tests.fakes.base import Fail, Ok

QUESTION = "How do I reset my password?"
PARAPHRASE = "How can I reset my password?"
SHARED_REDIS = "redis://127.0.0.1:6379/0"


def cached_policy(fakes: Fakes, **cache: Any) -> Any:
    return policy_for(fakes, cache={"static_threshold": 0.85, **cache})


async def ask(
    client: TestClient[Any, Any],
    text: str = QUESTION,
    *,
    key: str = TEAM_KEY,
    headers: dict[str, str] | None = None,
    **body: Any,
) -> tuple[int, dict[str, Any], Any]:
    payload = {"model": "gpt", "messages": [{"role": "user", "content": text}], **body}
    response = await client.post(
        "/v1/chat/completions",
        json=payload,
        headers={"Authorization": f"Bearer {key}", **(headers or {})},
    )
    return response.status, await response.json(), response.headers


async def settle(client: TestClient[Any, Any]) -> None:
    """Wait for the background store of the previous answer."""
    for stage in client.app[RUNTIME].interceptors:
        await stage.drain()  # type: ignore[attr-defined]


@pytest.fixture
async def cached(make_gateway: Any, fakes: Fakes, embedder: Any) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await make_gateway(cached_policy(fakes), embedder=embedder)
    return client


async def test_exact_repeat_is_served_from_cache(
    cached: TestClient[Any, Any], fakes: Fakes
) -> None:
    fakes.openai.push(Ok(text="Use the reset link on the sign-in page."))
    _, first, headers = await ask(cached)
    assert headers["x-gateway-cache"] == "miss"
    await settle(cached)
    status, second, headers = await ask(cached, "  how do I RESET my password?  ")
    assert status == 200
    assert headers["x-gateway-cache"] == "hit"
    assert headers["x-gateway-source"] == "cache"
    assert headers["x-gateway-cache-similarity"] == "1.0000"
    assert second["choices"][0]["message"]["content"] == "Use the reset link on the sign-in page."
    assert second["usage"]["total_tokens"] == 0
    assert second["id"] != first["id"]
    assert len(fakes.openai.requests) == 1


async def test_paraphrase_is_a_semantic_hit(cached: TestClient[Any, Any], fakes: Fakes) -> None:
    await ask(cached)
    await settle(cached)
    status, _, headers = await ask(cached, PARAPHRASE)
    assert status == 200
    assert headers["x-gateway-cache"] == "hit"
    assert 0.85 <= float(headers["x-gateway-cache-similarity"]) < 1
    assert len(fakes.openai.requests) == 1


async def test_unrelated_question_misses(cached: TestClient[Any, Any], fakes: Fakes) -> None:
    await ask(cached)
    await settle(cached)
    _, _, headers = await ask(cached, "What is the travel allowance for Berlin?")
    assert headers["x-gateway-cache"] == "miss"
    assert len(fakes.openai.requests) == 2


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (
            "Transfer 100 dollars to my savings account",
            "Transfer 500 dollars to my savings account",
        ),
        ("Can I cancel my card?", "Can I not cancel my card?"),
        ("What is the weather in Paris?", "What is the weather in London?"),
    ],
)
async def test_near_duplicates_that_differ_in_meaning_miss(
    make_gateway: Any, fakes: Fakes, embedder: Any, first: str, second: str
) -> None:
    client = await make_gateway(cached_policy(fakes, static_threshold=0.5), embedder=embedder)
    await ask(client, first)
    await settle(client)
    _, _, headers = await ask(client, second)
    assert headers["x-gateway-cache"] == "miss"
    assert len(fakes.openai.requests) == 2


@pytest.mark.parametrize(
    "variation",
    [
        {"key": LIMITED_TEAM_KEY},  # another team
        {"model": "claude"},  # another route
        {"temperature": 0.9},  # another temperature bucket
        {"max_tokens": 10},  # another output limit
        {"headers": {"x-gateway-regions": "us"}},  # another residency
        {"messages_prefix": [{"role": "system", "content": "Answer in French."}]},
        {
            "messages_prefix": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ]
        },
        {"response_format": {"type": "json_object"}},
    ],
)
async def test_no_entry_is_served_across_scopes(
    cached: TestClient[Any, Any], fakes: Fakes, variation: dict[str, Any]
) -> None:
    await ask(cached)
    await settle(cached)
    variation = dict(variation)
    prefix = variation.pop("messages_prefix", None)
    if prefix is not None:
        variation["messages"] = [*prefix, {"role": "user", "content": QUESTION}]
    status, _, headers = await ask(cached, **variation)
    assert status == 200
    assert headers["x-gateway-cache"] != "hit"


async def test_bypass_refresh_and_hot_temperature(
    cached: TestClient[Any, Any], fakes: Fakes
) -> None:
    await ask(cached)
    await settle(cached)
    _, _, headers = await ask(cached, headers={"x-gateway-cache": "bypass"})
    assert headers["x-gateway-cache"] == "bypass"
    _, _, headers = await ask(cached, temperature=1.5)
    assert headers["x-gateway-cache"] == "bypass"
    fakes.openai.push(Ok(text="A fresher answer."))
    _, body, headers = await ask(cached, headers={"x-gateway-cache": "refresh"})
    assert headers["x-gateway-cache"] == "refresh"
    await settle(cached)
    _, body, headers = await ask(cached)
    assert headers["x-gateway-cache"] == "hit"
    assert body["choices"][0]["message"]["content"] == "A fresher answer."


async def test_tool_calls_and_errors_are_not_cached(
    cached: TestClient[Any, Any], fakes: Fakes
) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    fakes.openai.push(Ok(tool_call=("lookup", {"q": "x"})), Ok(tool_call=("lookup", {"q": "x"})))
    await ask(cached, tools=tools)
    await settle(cached)
    _, _, headers = await ask(cached, tools=tools)
    assert headers["x-gateway-cache"] == "miss"
    fakes.openai.push(Fail(503))
    status, _, _ = await ask(cached, "A question that fails")
    assert status == 503
    await settle(cached)
    _, _, headers = await ask(cached, "A question that fails")
    assert headers["x-gateway-cache"] == "miss"


async def test_streamed_answers_are_stored_and_hits_stream(
    cached: TestClient[Any, Any], fakes: Fakes, sdk_for: SdkFactory
) -> None:
    sdk = sdk_for(cached)
    fakes.openai.push(Ok(text="Streamed once, cached since."))
    stream = await sdk.chat.completions.create(
        model="gpt", messages=[{"role": "user", "content": QUESTION}], stream=True
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    await settle(cached)
    raw = await sdk.chat.completions.with_raw_response.create(
        model="gpt",
        messages=[{"role": "user", "content": PARAPHRASE}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["x-gateway-cache"] == "hit"
    chunks = [c async for c in raw.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Streamed once, cached since."
    assert chunks[-1].usage is not None
    assert len(fakes.openai.requests) == 1


async def test_embedder_failure_answers_uncached(
    cached: TestClient[Any, Any], fakes: Fakes
) -> None:
    class Broken:
        name, dim = "broken", 384

        async def embed(self, text: str) -> Any:
            raise RuntimeError("model crashed")

    cached.app[RUNTIME].embedder = Broken()  # type: ignore[assignment]
    status, _, headers = await ask(cached, "Something never asked before")
    assert status == 200
    assert headers["x-gateway-cache"] == "miss"


# -- Redis -----------------------------------------------------------------------------------


async def test_hit_similarity_is_the_exact_cosine_not_the_index_estimate(
    cached: TestClient[Any, Any], fakes: Fakes, embedder: Any
) -> None:
    fakes.openai.push(Ok(text="Reset it in settings."))
    await ask(cached)
    await settle(cached)
    _, _, headers = await ask(cached, PARAPHRASE)
    assert headers["x-gateway-cache"] == "hit"
    question, paraphrase = embedder.encode([QUESTION, PARAPHRASE])
    exact = float(np.dot(question, paraphrase))
    assert abs(float(headers["x-gateway-cache-similarity"]) - exact) < 2e-4


def test_cache_config_in_policy_is_validated() -> None:
    from gateway.policy.cache_config import validate_override

    assert validate_override({"max_error_rate": 0.02}) == {"max_error_rate": 0.02}
    with pytest.raises(ValueError, match="max_error_rate"):
        validate_override({"max_error_rate": 2})
    with pytest.raises(ValueError, match="colour"):
        validate_override({"colour": "red"})


# -- the learned hit policy ------------------------------------------------------------------


async def test_learned_policy_is_cautious_when_cold_and_takes_feedback(
    make_gateway: Any, fakes: Fakes, embedder: Any
) -> None:
    client = await make_gateway(
        policy_for(fakes, cache={"max_error_rate": 0.01}), embedder=embedder
    )
    await ask(client, "How do I reset my password")
    await settle(client)
    # A cold scope serves only near-identical wording...
    _, _, headers = await ask(client, "How do I reset my password??")
    assert headers["x-gateway-cache"] == "hit"
    request_id = headers["x-request-id"]
    # ...not a looser paraphrase it has learned nothing about.
    _, _, headers = await ask(client, "Is there a way to change the password I forgot?")
    assert headers["x-gateway-cache"] == "miss"
    # The client says the cached answer was wrong: that entry stops serving at that similarity.
    response = await client.post(
        "/v1/feedback",
        json={"request_id": request_id, "score": 0.0, "comment": "wrong account"},
        headers={"Authorization": f"Bearer {TEAM_KEY}"},
    )
    assert response.status == 200
    assert (await response.json())["cache_corrected"] is True
    _, _, headers = await ask(client, "How do I reset my password??")
    assert headers["x-gateway-cache"] == "miss"


async def test_feedback_is_only_for_the_requesting_team(
    cached: TestClient[Any, Any], fakes: Fakes
) -> None:
    _, _, headers = await ask(cached)
    response = await cached.post(
        "/v1/feedback",
        json={"request_id": headers["x-request-id"], "score": 0.1},
        headers={"Authorization": f"Bearer {LIMITED_TEAM_KEY}"},
    )
    assert response.status == 404
    response = await cached.post(
        "/v1/feedback",
        json={"request_id": headers["x-request-id"], "score": 3},
        headers={"Authorization": f"Bearer {TEAM_KEY}"},
    )
    assert response.status == 400


async def test_a_wrong_answer_flagged_by_feedback_is_no_longer_replayed(
    cached: TestClient[Any, Any], fakes: Fakes
) -> None:
    """Negative feedback on the request whose answer was stored, or on an exact hit of it,
    removes the entry: the next repeat goes to the provider instead of replaying it."""
    _, _, first = await ask(cached, "What is the capital of Australia")
    await settle(cached)
    _, _, headers = await ask(cached, "What is the capital of Australia")
    assert headers["x-gateway-cache"] == "hit"

    async def flag(request_id: str) -> Any:
        response = await cached.post(
            "/v1/feedback",
            json={"request_id": request_id, "score": 0.0, "comment": "it is Canberra"},
            headers={"Authorization": f"Bearer {TEAM_KEY}"},
        )
        assert response.status == 200
        return await response.json()

    assert (await flag(first["x-request-id"]))["cache_corrected"] is True  # the stored answer
    _, _, headers = await ask(cached, "What is the capital of Australia")
    assert headers["x-gateway-cache"] == "miss"
    await settle(cached)  # that fresh answer is stored anew...
    _, _, hit = await ask(cached, "What is the capital of Australia")
    assert hit["x-gateway-cache"] == "hit"
    assert (await flag(hit["x-request-id"]))["cache_corrected"] is True  # ...and flagged on a hit
    _, _, headers = await ask(cached, "What is the capital of Australia")
    assert headers["x-gateway-cache"] == "miss"
    # Flagging it again finds nothing left to remove; a good grade removes nothing.
    assert (await flag(hit["x-request-id"]))["cache_corrected"] is False
