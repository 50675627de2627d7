"""The fakes' embeddings APIs are faithful: each official SDK parses what its fake answers.

OpenAI's SDK (``embeddings.create``, which asks for base64 by default and decodes it), Ollama's
(``embed`` on ``/api/embed``) and Google's (``models.embed_content``, which the Developer API
serves through ``batchEmbedContents``), each against its loopback fake; and the adapters'
embedding translations against the same fakes, through the provider pool.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import ollama
import openai
import pytest
from google import genai
from google.genai import errors, types

from providers.base import Target
from providers.embeddings import EmbeddingRequest, to_array
from providers.errors import UpstreamInvalidRequest, UpstreamProtocolError, UpstreamRateLimited
from providers.pool import Endpoint, ProviderPool
from tests.fakes.base import Fail, FakeProvider, Malformed, fake_vector
from tests.fakes.gemini import FakeGemini
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai import FakeOpenAI

TEXTS = ["The cat sat on the mat.", "A second, longer sentence about dogs."]


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def fake_ollama() -> AsyncIterator[FakeOllama]:
    server = FakeOllama()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def fake_gemini() -> AsyncIterator[FakeGemini]:
    server = FakeGemini()
    await server.start()
    yield server
    await server.stop()


def _close(left: list[float], right: list[float]) -> bool:
    return all(
        math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for a, b in zip(left, right, strict=True)
    )


async def test_openai_sdk_parses_float_and_base64(fake_openai: FakeOpenAI) -> None:
    async with openai.AsyncOpenAI(
        base_url=fake_openai.api_base, api_key="sk-test", max_retries=0
    ) as client:
        default = await client.embeddings.create(model="text-embedding-3-small", input=TEXTS)
        floats = await client.embeddings.create(
            model="text-embedding-3-small", input=TEXTS[0], encoding_format="float", dimensions=4
        )
        fake_openai.push(Fail(429, retry_after=1))
        with pytest.raises(openai.RateLimitError):
            await client.embeddings.create(model="text-embedding-3-small", input="x")
    # The SDK asked for base64 and decoded it back into the fake's floats.
    assert fake_openai.requests[0].body["encoding_format"] == "base64"
    assert [d.index for d in default.data] == [0, 1]
    for item, text in zip(default.data, TEXTS, strict=True):
        assert _close(item.embedding, fake_vector(text))
    assert default.usage.prompt_tokens == sum(len(t.split()) for t in TEXTS)
    assert len(floats.data[0].embedding) == 4
    assert _close(floats.data[0].embedding, fake_vector(TEXTS[0], 4))


async def test_ollama_sdk_parses_embed(
    fake_ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    client = ollama.AsyncClient(host=fake_ollama.base_url)
    try:
        response = await client.embed(model="nomic-embed-text", input=TEXTS)
        fake_ollama.push(Fail(404, "model 'nomic-embed-text' not found"))
        with pytest.raises(ollama.ResponseError) as failure:
            await client.embed(model="nomic-embed-text", input="x")
    finally:
        await client.close()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated
    assert response.model == "nomic-embed-text"
    assert len(response.embeddings) == 2
    assert _close(list(response.embeddings[1]), fake_vector(TEXTS[1]))
    assert response.prompt_eval_count == sum(len(t.split()) for t in TEXTS)
    assert failure.value.status_code == 404


async def test_google_sdk_parses_batch_embed(fake_gemini: FakeGemini) -> None:
    async with aiohttp.ClientSession() as session:
        client = genai.Client(
            api_key="test-key",
            http_options=types.HttpOptions(
                base_url=fake_gemini.base_url,
                api_version="v1beta",
                retry_options=types.HttpRetryOptions(attempts=1),
                aiohttp_client=session,
            ),
        ).aio
        response = await client.models.embed_content(
            model="gemini-embedding-001",
            contents=TEXTS,
            config=types.EmbedContentConfig(output_dimensionality=6),
        )
        fake_gemini.push(Fail(429, retry_after=2))
        with pytest.raises(errors.ClientError) as failure:
            await client.models.embed_content(model="gemini-embedding-001", contents="x")
        await client.aclose()
    recorded = fake_gemini.requests[0]
    assert recorded.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert response.embeddings is not None
    values = [e.values for e in response.embeddings]
    assert values[0] is not None
    assert _close(values[0], fake_vector(TEXTS[0], 6))
    assert failure.value.code == 429


# -- the adapters, through the pool ----------------------------------------------------------
def _pool_for(fake: FakeProvider, kind: str) -> tuple[ProviderPool, Target]:
    base = f"{fake.base_url}/v1" if kind == "openai" else fake.base_url
    pool = ProviderPool([Endpoint(name="p", kind=kind)])
    return pool, Target(provider="p", base_url=base, model="embed-1", api_key="key-SECRET-1")


@pytest.mark.parametrize("kind", ["openai", "ollama", "gemini"])
async def test_adapters_translate_each_wire_format(
    kind: str, fake_openai: FakeOpenAI, fake_ollama: FakeOllama, fake_gemini: FakeGemini
) -> None:
    fake: Any = {"openai": fake_openai, "ollama": fake_ollama, "gemini": fake_gemini}[kind]
    pool, target = _pool_for(fake, kind)
    await pool.start()
    try:
        request = EmbeddingRequest(model="m", input=TEXTS, encoding_format="base64")
        result = await pool.embed(target, request)
        fake.push(Malformed())
        with pytest.raises(UpstreamProtocolError):
            await pool.embed(target, request)
        fake.push(Fail(429, retry_after=1))
        with pytest.raises(UpstreamRateLimited):
            await pool.embed(target, request)
        fake.push(Fail(400, "bad input key-SECRET-1"))
        with pytest.raises(UpstreamInvalidRequest) as invalid:
            await pool.embed(target, request)
    finally:
        await pool.close()
    vectors = to_array(result.vectors)
    assert vectors.dtype == np.float32
    assert vectors.shape == (2, 8)
    assert np.allclose(vectors[0], fake_vector(TEXTS[0]), atol=1e-6)
    # OpenAI-compatible servers were asked for base64 and it is kept as sent (no decode).
    assert isinstance(result.vectors[0], str) is (kind == "openai")
    assert result.estimated is (kind == "gemini")  # Gemini reports no token count
    assert result.prompt_tokens > 0
    assert "key-SECRET-1" not in invalid.value.message  # the pool redacts a quoted key


async def test_gemini_input_list_is_batched_by_one_hundred(fake_gemini: FakeGemini) -> None:
    pool, target = _pool_for(fake_gemini, "gemini")
    await pool.start()
    try:
        texts = [f"sentence number {i}" for i in range(250)]
        result = await pool.embed(target, EmbeddingRequest(model="m", input=texts))
    finally:
        await pool.close()
    sizes = [len(r.body["requests"]) for r in fake_gemini.requests]
    assert sizes == [100, 100, 50]
    vectors = to_array(result.vectors)
    assert vectors.shape == (250, 8)
    assert np.allclose(vectors[249], fake_vector(texts[249]), atol=1e-6)
