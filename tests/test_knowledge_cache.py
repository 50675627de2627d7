"""Knowledge and cache together: an answer built on one team's chunks never reaches another team."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from gateway.core.runtime import RUNTIME
from gateway.policy.model import hash_key
from gateway.stages.cache import CacheStage
from gateway.stages.cache_quality import DEGRADED_TTL_S
from gateway.stages.knowledge import KnowledgeStage
from retrieval.stores import open_store
from tests.conftest import Fakes, RedisServer, policy_for
from tests.fakes.base import Ok
from tests.test_knowledge_stage import kb_store

__all__ = ["kb_store"]  # the sample knowledge base fixture, ingested once per module

QUESTION = "When do the books close after quarter end?"


async def finance_gateway(
    make_gateway: Any,
    fakes: Fakes,
    embedder: Any,
    tmp_path: Path,
    redis_server: RedisServer,
    store: Any,
    **knowledge: Any,
) -> tuple[Any, CacheStage, KnowledgeStage]:
    """A gateway of the finance team (key ``finance-key``) whose cache sits on ``redis_server``
    and whose knowledge stage reads ``store``, with budgets a busy machine cannot overrun."""
    policy = policy_for(
        fakes,
        teams=[{"name": "finance", "key_sha256": hash_key("finance-key")}],
        knowledge={"kbs": ["company", "finance"], "timeout_s": 30, **knowledge},
        cache={"static_threshold": 0.5},
    )
    client = await make_gateway(
        policy,
        embedder=embedder,
        knowledge_path=tmp_path,
        redis_url=redis_server.url,
        stage_timeout_s=30.0,
    )
    runtime = client.app[RUNTIME]
    cache = next(s for s in runtime.interceptors if isinstance(s, CacheStage))
    assert policy.knowledge is not None
    stage = KnowledgeStage(policy.knowledge, store)
    runtime.interceptors = (cache, stage)
    return client, cache, stage


async def test_answers_built_on_team_chunks_stay_with_the_team(
    make_gateway: Any, fakes: Fakes, embedder: Any, kb_store: Any, tmp_path: Path
) -> None:
    policy = policy_for(
        fakes,
        teams=[
            {"name": "finance", "key_sha256": hash_key("finance-key")},
            {"name": "support", "key_sha256": hash_key("support-key")},
        ],
        knowledge={"kbs": ["company", "finance"], "context_threshold": 0.3, "timeout_s": 30},
        cache={"static_threshold": 0.5},
    )
    client = await make_gateway(
        policy, embedder=embedder, knowledge_path=tmp_path, stage_timeout_s=30.0
    )
    runtime = client.app[RUNTIME]
    cache = next(s for s in runtime.interceptors if isinstance(s, CacheStage))
    assert policy.knowledge is not None
    runtime.interceptors = (cache, KnowledgeStage(policy.knowledge, kb_store))

    async def ask(key: str) -> Any:
        return await client.post(
            "/v1/chat/completions",
            json={"model": "gpt", "messages": [{"role": "user", "content": QUESTION}]},
            headers={"Authorization": f"Bearer {key}"},
        )

    first = await ask("finance-key")
    assert first.status == 200
    assert first.headers["x-gateway-knowledge"].startswith("context;chunks=")
    assert "fifth working day" in str(fakes.openai.requests[-1].body)
    await cache.drain()
    again = await ask("finance-key")
    assert again.headers["x-gateway-cache"] == "hit"  # the finance team's own cache works
    other = await ask("support-key")
    assert other.status == 200
    assert other.headers["x-gateway-cache"] == "miss"  # never the finance team's cached answer
    assert "fifth working day" not in str(fakes.openai.requests[-1].body)  # nor its chunks


async def test_knowledge_off_and_on_never_share_a_cached_answer(
    make_gateway: Any,
    fakes: Fakes,
    embedder: Any,
    kb_store: Any,
    tmp_path: Path,
    redis_server: RedisServer,
) -> None:
    # The cache is looked up before the knowledge stage: without the knowledge mode in the scope,
    # an answer made without passages (x-gateway-knowledge: off) would be served to a request
    # that gets passages, and the other way round.
    client, cache, _ = await finance_gateway(
        make_gateway, fakes, embedder, tmp_path, redis_server, kb_store, context_threshold=0.3
    )

    async def ask(question: str, knowledge: str | None) -> tuple[Any, str]:
        headers = {"Authorization": "Bearer finance-key"}
        if knowledge is not None:
            headers["x-gateway-knowledge"] = knowledge
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "gpt", "messages": [{"role": "user", "content": question}]},
            headers=headers,
        )
        assert response.status == 200, await response.text()
        body = await response.json()
        await cache.drain()
        return response.headers, body["choices"][0]["message"]["content"]

    # Off first, then on: the answer without passages is not served to the request with them.
    fakes.openai.push(Ok(text="answer without the knowledge base"))
    headers, text = await ask(QUESTION, "off")
    assert headers["x-gateway-cache"] == "miss"
    assert headers["x-gateway-knowledge"] == "off"
    assert "fifth working day" not in str(fakes.openai.requests[-1].body)
    fakes.openai.push(Ok(text="answer from the finance notes"))
    headers, text = await ask(QUESTION, None)
    assert headers["x-gateway-cache"] == "miss", text
    assert headers["x-gateway-knowledge"].startswith("context;chunks=")
    assert "fifth working day" in str(fakes.openai.requests[-1].body)
    # Each mode is then served its own answer, from Redis's entries.
    headers, text = await ask(QUESTION, None)
    assert (headers["x-gateway-cache"], text) == ("hit", "answer from the finance notes")
    headers, text = await ask(QUESTION, " OFF ")
    assert (headers["x-gateway-cache"], text) == ("hit", "answer without the knowledge base")

    # On first, then off: the same, whichever mode came first.
    second = "Who reviews contracts above 250,000 EUR before revenue is recognised?"
    fakes.openai.push(Ok(text="built on passages"))
    headers, _ = await ask(second, None)
    assert headers["x-gateway-cache"] == "miss"
    assert headers["x-gateway-knowledge"].startswith("context;chunks=")
    assert "controller" in str(fakes.openai.requests[-1].body)
    headers, text = await ask(second.replace("Who", "who").replace("?", " ?"), None)
    assert (headers["x-gateway-cache"], text) == ("hit", "built on passages")  # same mode: hit
    sent = len(fakes.openai.requests)
    fakes.openai.push(Ok(text="built without passages"))
    headers, text = await ask(second, "off")
    assert headers["x-gateway-cache"] == "miss", text
    assert text == "built without passages"
    assert len(fakes.openai.requests) == sent + 1
    assert "controller" not in str(fakes.openai.requests[-1].body)


async def test_answers_made_while_the_knowledge_store_fails_are_kept_briefly(
    make_gateway: Any, fakes: Fakes, embedder: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    # Qdrant down: the request is answered without passages (fail-open). That answer is not what
    # a request with the store up gets: kept for the scope's TTL it would be replayed without the
    # company's context long after the store is back. It is kept for DEGRADED_TTL_S at most, so
    # the cache still absorbs repeats during the outage.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    down = open_store(collection="c", url=f"http://127.0.0.1:{port}", path=tmp_path)
    client, cache, knowledge = await finance_gateway(
        make_gateway, fakes, embedder, tmp_path, redis_server, down, retry_after_s=60
    )
    runtime = client.app[RUNTIME]

    async def ask() -> Any:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "gpt", "messages": [{"role": "user", "content": QUESTION}]},
            headers={"Authorization": "Bearer finance-key"},
        )
        assert response.status == 200, await response.text()
        await cache.drain()
        return response

    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        fakes.openai.push(Ok(text="answered without the knowledge base"))
        response = await ask()  # the failing lookup
        assert response.headers["x-gateway-cache"] == "miss"
        assert "x-gateway-knowledge" not in response.headers
        assert knowledge.errors == 1
        stored = next(
            e for e in runtime.decisions.recent(1)[0].events if e["type"] == "cache_store"
        )
        assert stored["degraded"] == "knowledge_unavailable"
        assert stored["ttl_s"] == DEGRADED_TTL_S  # not the scope's 86,400 s
        keys = [k async for k in redis.scan_iter(match=f"*:e:{stored['entry']}")]
        assert len(keys) == 1
        assert 0 < await redis.ttl(keys[0]) <= DEGRADED_TTL_S
        # Inside retry_after_s the store is left alone: the repeat is a hit, no provider call.
        response = await ask()
        assert response.headers["x-gateway-cache"] == "hit"
        assert len(fakes.openai.requests) == 1
    finally:
        await redis.aclose()
        await knowledge.close()
