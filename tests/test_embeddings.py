"""``POST /v1/embeddings``: the official ``openai`` SDK as the client, routed by policy.

Embedding models are aliases with ``kind: embedding``; they are served by OpenAI-compatible
providers, Ollama, Gemini and the gateway's own model (the ``builtin`` provider), behind the same
residency, fallback, team limits and cost accounting as chat.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import openai
import pytest
from aiohttp.test_utils import TestClient
from pydantic import ValidationError

from gateway.core.runtime import RUNTIME
from gateway.policy.model import Policy
from tests.conftest import EU_TEAM_KEY, TEAM_KEY, Fakes, SdkFactory, policy_for
from tests.fakes.base import Fail, fake_vector

EMBEDDING_MODELS = {
    # alias -> (provider, pinned id)
    "embed-openai": ("openai", "text-embedding-3-small"),
    "embed-gemini": ("gemini", "gemini-embedding-001"),
    "embed-ollama": ("ollama", "nomic-embed-text:v1.5"),
    "embed-local": ("builtin", "all-MiniLM-L6-v2"),
}
TEXTS = ["The cat sat on the mat.", "Dogs bark at night.", "A third, longer input sentence."]
AUTH = {"Authorization": f"Bearer {TEAM_KEY}"}


def embedding_policy(fakes: Fakes, **team: Any) -> Policy:
    """The test policy plus one embedding alias per provider kind and an ``embeddings`` route
    (us, then eu, then onprem); team alpha gets ``team``'s limits."""
    data = policy_for(fakes).model_dump()
    data["providers"].append({"name": "builtin", "kind": "builtin", "region": "onprem"})
    for alias, (provider, upstream) in EMBEDDING_MODELS.items():
        model: dict[str, Any] = {"name": alias, "provider": provider, "id": upstream}
        model["kind"] = "embedding"
        if alias == "embed-openai":
            model["price"] = {"input": 20_000, "output": 0}  # $0.02 per 1k tokens: visible
        data["models"].append(model)
    data["routes"].append(
        {"name": "embeddings", "candidates": ["embed-openai", "embed-gemini", "embed-local"]}
    )
    data["teams"][0].update(team)
    return Policy.model_validate(data)


@pytest.fixture
async def gateway(make_gateway: Any, fakes: Fakes, embedder: Any) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await make_gateway(embedding_policy(fakes), embedder=embedder)
    return client


def last_decision(gateway: TestClient[Any, Any]) -> Any:
    assert gateway.app is not None
    return gateway.app[RUNTIME].decisions.recent(1)[0]


def expected(alias: str, text: str, embedder: Any) -> np.ndarray[Any, Any]:
    if alias == "embed-local":
        return np.asarray(embedder.encode([text])[0])
    return np.asarray(fake_vector(text))


@pytest.mark.parametrize("alias", list(EMBEDDING_MODELS))
async def test_single_and_batch_from_every_provider_kind(
    alias: str, gateway: TestClient[Any, Any], sdk: openai.AsyncOpenAI, embedder: Any
) -> None:
    provider, upstream = EMBEDDING_MODELS[alias]
    raw = await sdk.embeddings.with_raw_response.create(model=alias, input=TEXTS[0])
    single = raw.parse()
    assert raw.headers["x-gateway-provider"] == provider
    assert len(single.data) == 1
    assert np.allclose(single.data[0].embedding, expected(alias, TEXTS[0], embedder), atol=1e-5)
    batch = await sdk.embeddings.create(model=alias, input=TEXTS)
    assert [item.index for item in batch.data] == [0, 1, 2]
    for item, text in zip(batch.data, TEXTS, strict=True):
        assert np.allclose(item.embedding, expected(alias, text, embedder), atol=1e-5)
    assert batch.usage.prompt_tokens > single.usage.prompt_tokens > 0
    served = embedder.name if alias == "embed-local" else upstream
    assert batch.model == served
    decision = last_decision(gateway)
    assert (decision.api, decision.route, decision.served_by) == ("openai.embeddings", alias, alias)
    assert decision.prompt_tokens == batch.usage.prompt_tokens


async def test_the_input_list_goes_upstream_in_one_batch(
    gateway: TestClient[Any, Any], sdk: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    await sdk.embeddings.create(model="embed-ollama", input=TEXTS)
    await sdk.embeddings.create(model="embed-openai", input=TEXTS, dimensions=4)
    assert fakes.ollama.requests[-1].body["input"] == TEXTS
    assert fakes.openai.requests[-1].body["input"] == TEXTS
    assert fakes.openai.requests[-1].body["dimensions"] == 4
    texts = [f"input number {i}" for i in range(120)]
    result = await sdk.embeddings.create(model="embed-gemini", input=texts)
    assert [len(r.body["requests"]) for r in fakes.gemini.requests] == [100, 20]
    assert np.allclose(result.data[119].embedding, fake_vector(texts[119]), atol=1e-6)


async def test_float_and_base64_carry_the_same_vectors(gateway: TestClient[Any, Any]) -> None:
    body = {"model": "embed-gemini", "input": TEXTS}
    floats = await (await gateway.post("/v1/embeddings", json=body, headers=AUTH)).json()
    packed = await (
        await gateway.post(
            "/v1/embeddings", json={**body, "encoding_format": "base64"}, headers=AUTH
        )
    ).json()
    for plain, encoded in zip(floats["data"], packed["data"], strict=True):
        assert isinstance(encoded["embedding"], str)
        decoded = np.frombuffer(__import__("base64").b64decode(encoded["embedding"]), "<f4")
        assert np.array_equal(decoded, np.asarray(plain["embedding"], dtype=np.float32))
    assert floats["object"] == "list"
    assert floats["data"][0]["object"] == "embedding"


async def test_cost_is_counted(gateway: TestClient[Any, Any], sdk: openai.AsyncOpenAI) -> None:
    result = await sdk.embeddings.create(model="embed-openai", input=TEXTS)
    decision = last_decision(gateway)
    assert decision.cost_usd == pytest.approx(result.usage.prompt_tokens * 20_000 / 1e6)
    metrics = await (await gateway.get("/metrics")).text()
    assert 'gateway_tokens_total{kind="prompt",model="embed-openai"' in metrics


async def test_gemini_usage_is_an_estimate_said_to_be_one(
    gateway: TestClient[Any, Any], sdk: openai.AsyncOpenAI
) -> None:
    result = await sdk.embeddings.create(model="embed-gemini", input="x" * 40)
    assert result.usage.prompt_tokens == 11  # 40 characters at ~4 a token, rounded up
    assert {"type": "usage_estimated", "method": "chars/4"} in last_decision(gateway).events


# -- the same policy ---------------------------------------------------------------------------
async def test_residency_filters_embedding_candidates(
    gateway: TestClient[Any, Any], sdk_for: SdkFactory, fakes: Fakes
) -> None:
    eu = sdk_for(gateway, key=EU_TEAM_KEY)  # regions eu and onprem: the us OpenAI is out
    raw = await eu.embeddings.with_raw_response.create(model="embeddings", input=TEXTS)
    assert (raw.headers["x-gateway-provider"], raw.headers["x-gateway-region"]) == ("gemini", "eu")
    narrowed = await eu.embeddings.with_raw_response.create(
        model="embeddings", input=TEXTS, extra_headers={"x-gateway-regions": "onprem"}
    )
    assert narrowed.headers["x-gateway-provider"] == "builtin"  # the gateway's own model
    with pytest.raises(openai.APIStatusError) as refused:
        await eu.embeddings.create(model="embed-openai", input="x")
    assert refused.value.status_code == 503
    assert refused.value.code == "no_eligible_provider"
    assert not fakes.openai.requests  # the prompt never went to the us region


async def test_fallback_to_the_next_embedding_candidate(
    gateway: TestClient[Any, Any], sdk: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    fakes.openai.push(Fail(503))
    fakes.gemini.push(Fail(429, retry_after=30))
    raw = await sdk.embeddings.with_raw_response.create(model="embeddings", input=TEXTS)
    assert raw.headers["x-gateway-provider"] == "builtin"
    assert raw.headers["x-gateway-fallbacks"] == "2"
    assert len(raw.parse().data[0].embedding) == 384
    attempts = [(a.provider, a.outcome) for a in last_decision(gateway).attempts]
    assert attempts == [
        ("openai", "upstream_overloaded"),
        ("gemini", "upstream_rate_limited"),
        ("builtin", "ok"),
    ]


async def test_team_limits_count_embedding_tokens(
    make_gateway: Any, fakes: Fakes, embedder: Any, sdk_for: SdkFactory
) -> None:
    policy = embedding_policy(fakes, tokens_per_minute=10)
    client = sdk_for(await make_gateway(policy, embedder=embedder))
    first = await client.embeddings.create(model="embed-openai", input=TEXTS)
    assert first.usage.prompt_tokens > 10  # the answer is served, then charged
    with pytest.raises(openai.RateLimitError) as limited:
        await client.embeddings.create(model="embed-openai", input="one more")
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.type == "tokens"
    assert len(fakes.openai.requests) == 1


# -- what is refused ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "embed-openai", "input": []}, "input"),
        ({"model": "embed-openai", "input": ""}, "input"),
        ({"model": "embed-openai", "input": [1, 2, 3]}, "input"),
        ({"model": "embed-openai", "input": ["ok"] * 2049}, "input"),
        ({"model": "embed-openai", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "embed-local", "input": "x", "dimensions": 16}, "dimensions"),
        ({"model": "gpt", "input": "x"}, "model"),
        ({"model": "embed-openai"}, "input"),
    ],
)
async def test_bad_requests_are_400s_naming_the_field(
    gateway: TestClient[Any, Any], body: dict[str, Any], param: str, fakes: Fakes
) -> None:
    response = await gateway.post("/v1/embeddings", json=body, headers=AUTH)
    assert response.status == 400
    error = (await response.json())["error"]
    assert param in error["message"] or error["param"] == param
    assert not fakes.openai.requests


async def test_an_embedding_model_is_no_chat_model(gateway: TestClient[Any, Any]) -> None:
    chat = {"model": "embed-openai", "messages": [{"role": "user", "content": "Hi"}]}
    response = await gateway.post("/v1/chat/completions", json=chat, headers=AUTH)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "wrong_model_kind"
    assert "POST /v1/embeddings" in error["message"]
    messages = {**chat, "max_tokens": 8}
    response = await gateway.post("/v1/messages", json=messages, headers={"x-api-key": TEAM_KEY})
    assert response.status == 400
    assert (await response.json())["error"]["type"] == "invalid_request_error"


async def test_models_lists_embedding_aliases(sdk: openai.AsyncOpenAI) -> None:
    names = {model.id async for model in sdk.models.list()}
    assert {"embed-openai", "embed-local", "embeddings", "gpt"} <= names


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (
            lambda d: d["models"].append(
                {"name": "e", "provider": "anthropic", "id": "x", "kind": "embedding"}
            ),
            "has no embeddings API",
        ),
        (
            lambda d: d["models"].append({"name": "c", "provider": "builtin", "id": "x"}),
            "embedding models only",
        ),
        (
            lambda d: d["routes"].append({"name": "mixed", "candidates": ["gpt", "embed-openai"]}),
            "mixes chat and embedding",
        ),
        (
            lambda d: d.update(task_types={"search": {"route": "embeddings"}}),
            "is an embedding route",
        ),
    ],
)
def test_policy_keeps_kinds_apart(fakes: Fakes, change: Any, needle: str) -> None:
    data = embedding_policy(fakes).model_dump()
    change(data)
    with pytest.raises(ValidationError, match=needle):
        Policy.model_validate(data)
