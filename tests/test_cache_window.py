"""Long final user turns and the semantic cache, through the HTTP API on real Redis.

The embedder sees at most its model's window (256 word pieces for all-MiniLM-L6-v2) and drops
the rest: two turns that share that much and differ after it embed identically. Such a turn must
never be answered, nor stored, by similarity; an exact repeat still is.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cache.guard import conflict
from gateway.core.decision import Decision
from gateway.core.runtime import RUNTIME
from tests.conftest import Fakes
from tests.fakes.base import Ok
from tests.test_cache import PARAPHRASE, QUESTION, ask, cached_policy, settle

SHARED_REDIS = "redis://127.0.0.1:6379/0"

# A pasted document of ~560 word pieces: the model sees only its first 256.
DOCUMENT = " ".join(
    [
        "The quarterly incident review covers the outages of the payment service.",
        "During the first week the queue of settlement jobs grew faster than the workers",
        "could drain it, because a configuration change had halved the pool of database",
        "connections available to each worker. The on-call engineer noticed the latency",
        "alarm an hour later, rolled the change back and drained the backlog by hand.",
        "The second outage began when a certificate expired on the internal gateway that",
        "signs requests to the card network; renewals had been automated, but the job that",
        "renews them ran on a host that was retired the month before, and it was left behind.",
        "Customers saw declined payments for most of an hour until a new certificate was",
        "issued and deployed. The third incident was smaller: a slow disk on a replica of",
        "the ledger database made reads time out for a share of requests, and the client",
        "library retried them against the same replica instead of a healthy replica.",
    ]
    * 3
)
SUMMARISE = f"{DOCUMENT}\n\nSummarise the document above in plain words."
RISKS = f"{DOCUMENT}\n\nList the risks the document above leaves open."


@pytest.fixture
async def shared(make_gateway: Any, fakes: Fakes, embedder: Any) -> TestClient[Any, Any]:
    """A gateway with a semantic cache on the shared Redis, in a prefix of its own.

    The stage budget is generous: embedding 256 word pieces on torch takes a while on a busy
    machine, and a lookup cut off by its budget would be a miss for the wrong reason."""
    client: TestClient[Any, Any] = await make_gateway(
        cached_policy(fakes),
        embedder=embedder,
        redis_url=SHARED_REDIS,
        redis_prefix=f"gw-test-{uuid.uuid4().hex[:8]}",
        stage_timeout_s=30.0,
    )
    return client


def decision(client: TestClient[Any, Any], headers: Any) -> Decision:
    """The decision record of the request answered with ``headers``; the cache stage ran whole."""
    found = client.app[RUNTIME].decisions.find(headers["x-request-id"])
    assert found is not None
    assert not [e for e in found.events if e["type"] == "stage_timeout"]
    return found


async def test_long_turns_that_differ_past_the_window_are_not_a_cache_hit(
    shared: TestClient[Any, Any], fakes: Fakes, embedder: Any
) -> None:
    summarise, risks = embedder.encode([SUMMARISE, RISKS])
    assert float(summarise @ risks) > 0.9999  # what the model sees of them is the same
    assert conflict(SUMMARISE, RISKS) is None  # and no lexical guard tells them apart
    fakes.openai.push(Ok(text="A summary of three outages."), Ok(text="Three open risks."))
    _, _, headers = await ask(shared, SUMMARISE)
    assert headers["x-gateway-cache"] == "miss"
    await settle(shared)
    status, body, headers = await ask(shared, RISKS)
    assert status == 200
    assert headers["x-gateway-cache"] == "miss"
    assert "x-gateway-source" not in headers
    assert body["choices"][0]["message"]["content"] == "Three open risks."
    assert len(fakes.openai.requests) == 2
    decision(shared, headers)
    record = decision(shared, headers).to_dict()
    assert record["cache"] == {"result": "miss", "semantic_skipped": "query_exceeds_window"}
    metrics = await (await shared.get("/metrics")).text()
    assert 'gateway_cache_lookups_total{result="semantic_skipped"} 2.0' in metrics


async def test_a_long_turn_stores_no_vector_for_a_short_turn_to_hit(
    shared: TestClient[Any, Any], fakes: Fakes, embedder: Any
) -> None:
    """A long turn's entry has no vector: the truncated one would be the vector of the
    document's beginning, and a short question about that beginning would hit it."""
    beginning = DOCUMENT[: DOCUMENT.index(" The second outage")]
    beginning_vector, long_vector = embedder.encode([beginning, SUMMARISE])
    assert float(beginning_vector @ long_vector) > 0.85  # a hit, had the vector been indexed
    fakes.openai.push(Ok(text="A summary of three outages."), Ok(text="About the first outage."))
    await ask(shared, SUMMARISE)
    await settle(shared)
    _, body, headers = await ask(shared, beginning)
    assert headers["x-gateway-cache"] == "miss"
    assert body["choices"][0]["message"]["content"] == "About the first outage."
    assert "semantic_skipped" not in decision(shared, headers).to_dict()["cache"]


async def cached(shared: TestClient[Any, Any], fakes: Fakes, prompt: str, answer: str) -> None:
    """Ask ``prompt`` once, answered ``answer`` by the upstream, and wait for the cache to store
    it."""
    fakes.openai.push(Ok(text=answer))
    await ask(shared, prompt)
    await settle(shared)


async def test_an_exact_repeat_of_a_long_turn_is_still_an_exact_hit(
    shared: TestClient[Any, Any], fakes: Fakes
) -> None:
    await cached(shared, fakes, SUMMARISE, "A summary of three outages.")
    status, body, headers = await ask(shared, f"  {SUMMARISE.upper()}  ")
    assert status == 200
    assert headers["x-gateway-cache"] == "hit"
    assert headers["x-gateway-cache-similarity"] == "1.0000"
    assert body["choices"][0]["message"]["content"] == "A summary of three outages."
    assert decision(shared, headers).to_dict()["cache"]["kind"] == "exact"
    assert len(fakes.openai.requests) == 1


async def test_short_turns_still_hit_by_similarity(
    shared: TestClient[Any, Any], fakes: Fakes
) -> None:
    await cached(shared, fakes, QUESTION, "Use the reset link on the sign-in page.")
    _, body, headers = await ask(shared, PARAPHRASE)
    assert headers["x-gateway-cache"] == "hit"
    assert 0.85 <= float(headers["x-gateway-cache-similarity"]) < 1
    assert body["choices"][0]["message"]["content"] == "Use the reset link on the sign-in page."
    record = decision(shared, headers).to_dict()
    assert record["cache"]["kind"] == "semantic"
    assert "semantic_skipped" not in record["cache"]
    assert len(fakes.openai.requests) == 1
