"""The dashboard's knowledge hit rate, after real lookups in the sample knowledge base."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.core.runtime import RUNTIME
from gateway.policy.model import hash_key
from gateway.stages.knowledge import KnowledgeStage
from retrieval.ingest import ingest
from retrieval.store import KnowledgeStore
from retrieval.stores import open_store
from tests.conftest import TEAM_KEY, Fakes, policy_for
from tests.test_dashboard import ADMIN, ADMIN_KEY, marks

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "kb"
ANSWERED = "How many days of annual leave do I get?"  # a curated answer
WITH_CONTEXT = "Can I expense a parking ticket?"  # chunks attached as context
OFF_TOPIC = "What is the capital of France?"  # nothing relevant


@pytest.fixture
def policies_store(tmp_path: Path, embedder: Any) -> Iterator[KnowledgeStore]:
    store = open_store(collection="company-kb", url=None, path=tmp_path / "kb")
    asyncio.run(
        ingest(
            [EXAMPLES / "policies"],
            kb="company",
            teams=["*"],
            store=store,
            embedder=embedder,
            root=EXAMPLES,
        )
    )
    yield store
    asyncio.run(store.close())


async def test_knowledge_hit_rate(
    make_gateway: Any, fakes: Fakes, embedder: Any, policies_store: Any, tmp_path: Path
) -> None:
    policy = policy_for(fakes, knowledge={"kbs": ["company"]})
    client = await make_gateway(
        policy, embedder=embedder, knowledge_path=tmp_path, admin_key_sha256=hash_key(ADMIN_KEY)
    )
    assert policy.knowledge is not None
    client.app[RUNTIME].interceptors = (KnowledgeStage(policy.knowledge, policies_store),)
    verdicts = []
    for question in (ANSWERED, WITH_CONTEXT, OFF_TOPIC):
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "gpt", "messages": [{"role": "user", "content": question}]},
            headers={"Authorization": f"Bearer {TEAM_KEY}"},
        )
        assert response.status == 200
        verdicts.append(response.headers.get("x-gateway-knowledge", ""))
    assert verdicts[0] == "answer"
    assert verdicts[1].startswith("context")

    data = await (await client.get("/dashboard/data", headers=ADMIN)).json()
    assert data["hit_rates"]["knowledge"] == {"hits": 2, "lookups": 3, "rate": pytest.approx(2 / 3)}
    assert data["traffic"]["totals"]["by_source"] == {"knowledge": 1, "provider": 2}
    assert data["cost"]["by_team"] == []  # the policy's models have no price: nothing charged
    page = marks(await (await client.get("/dashboard", headers=ADMIN)).text())
    [rate] = page.select("svg", chart="knowledge-hit-rate")
    assert (rate["data-hits"], rate["data-lookups"]) == ("2", "3")
    assert float(rate["data-value"]) == pytest.approx(2 / 3)
