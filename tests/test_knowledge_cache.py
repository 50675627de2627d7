"""Knowledge and cache together: an answer built on one team's chunks never reaches another team."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.core.runtime import RUNTIME
from gateway.policy.model import hash_key
from gateway.stages.cache import CacheStage
from gateway.stages.knowledge import KnowledgeStage
from tests.conftest import Fakes, policy_for
from tests.test_knowledge_stage import kb_store

__all__ = ["kb_store"]  # the sample knowledge base fixture, ingested once per module

QUESTION = "When do the books close after quarter end?"


async def test_answers_built_on_team_chunks_stay_with_the_team(
    make_gateway: Any, fakes: Fakes, embedder: Any, kb_store: Any, tmp_path: Path
) -> None:
    policy = policy_for(
        fakes,
        teams=[
            {"name": "finance", "key_sha256": hash_key("finance-key")},
            {"name": "support", "key_sha256": hash_key("support-key")},
        ],
        knowledge={"kbs": ["company", "finance"], "context_threshold": 0.3},
        cache={"static_threshold": 0.5},
    )
    client = await make_gateway(policy, embedder=embedder, knowledge_path=tmp_path)
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
