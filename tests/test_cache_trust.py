"""No wrong answer from the cache, through the API: real Redis, the real embedder, loopback fakes.

A sample of the guard's labelled pairs (tests/data/guard_pairs.tsv) is asked in turn, each pair
in its own scope, with a low static threshold so that only the guard stands between them: pairs
that must not share never hit, paraphrases do. Then the issue's scenario (40 consignment ids
under the learned policy), answers that must not be stored, and negative feedback on exact hits.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cache.guard import conflict
from gateway.core.runtime import RUNTIME
from tests.conftest import TEAM_KEY, Fakes, policy_for
from tests.fakes.base import Ok
from tests.guard_pairs import load_pairs

SHARED_REDIS = "redis://127.0.0.1:6379/0"
PAIRS = load_pairs()
# Every class (identifier kinds, roles and the rest), about one pair in seven: the whole suite
# runs through the guard in tests/test_guard_suite.py; this checks the API applies it.
SAMPLE_DIFFER = [p for p in PAIRS if p.expect == "conflict"][::7]
SAMPLE_SHARE = [p for p in PAIRS if p.expect == "share" and conflict(p.a, p.b) is None][::9]


def redis_settings() -> dict[str, Any]:
    return {
        "redis_url": SHARED_REDIS,
        "redis_prefix": f"gw-test-{uuid.uuid4().hex[:8]}",
        "stage_timeout_s": 30.0,  # a busy machine must not skip the lookups these tests are about
    }


async def ask(
    client: TestClient[Any, Any], text: str, *, system: str | None = None, **body: Any
) -> tuple[dict[str, Any], Any]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "gpt", "messages": messages, **body},
        headers={"Authorization": f"Bearer {TEAM_KEY}"},
    )
    assert response.status == 200, await response.text()
    if body.get("stream"):
        return {"sse": await response.text()}, response.headers
    return await response.json(), response.headers


async def settle(client: TestClient[Any, Any]) -> None:
    for stage in client.app[RUNTIME].interceptors:
        await stage.drain()  # type: ignore[attr-defined]


async def flag_wrong(client: TestClient[Any, Any], request_id: str) -> dict[str, Any]:
    response = await client.post(
        "/v1/feedback",
        json={"request_id": request_id, "score": 0.0},
        headers={"Authorization": f"Bearer {TEAM_KEY}"},
    )
    assert response.status == 200
    result: dict[str, Any] = await response.json()
    return result


@pytest.mark.timeout(900)
async def test_a_sample_of_the_suite_through_the_api(
    make_gateway: Any, fakes: Fakes, embedder: Any
) -> None:
    assert len(SAMPLE_DIFFER) >= 30
    assert len(SAMPLE_SHARE) >= 20
    assert {p.kind for p in SAMPLE_DIFFER} == {p.kind for p in PAIRS if p.expect == "conflict"}
    client = await make_gateway(
        policy_for(fakes, cache={"static_threshold": 0.5}), embedder=embedder, **redis_settings()
    )
    wrong, shared = [], 0
    for number, pair in enumerate(SAMPLE_DIFFER + SAMPLE_SHARE):
        system = f"Pair {number}: answer briefly."  # a scope of its own
        fakes.openai.push(Ok(text=f"About: {pair.a}"))
        await ask(client, pair.a, system=system)
        await settle(client)
        fakes.openai.push(Ok(text=f"About: {pair.b}"))
        body, headers = await ask(client, pair.b, system=system)
        await settle(client)
        fakes.openai.script.clear()  # a hit left its answer unused
        hit = headers["x-gateway-cache"] == "hit"
        if pair.expect == "conflict" and hit:
            wrong.append((pair.kind, pair.a, pair.b, headers["x-gateway-cache-similarity"]))
        if pair.expect == "share" and hit:
            assert body["choices"][0]["message"]["content"] == f"About: {pair.a}"
            shared += 1
    assert wrong == []
    assert shared >= 0.9 * len(SAMPLE_SHARE)


@pytest.mark.timeout(300)
async def test_forty_consignments_never_share_an_answer(
    make_gateway: Any, fakes: Fakes, embedder: Any
) -> None:
    """The issue's scenario, under the default learned policy: 40 ids, 0 hits."""
    client = await make_gateway(
        policy_for(fakes, cache={"max_error_rate": 0.01}), embedder=embedder, **redis_settings()
    )
    rng = random.Random(40)
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
    hits = []
    for _ in range(40):
        consignment = "".join(rng.choice(alphabet) for _ in range(8)) + str(rng.randrange(10, 99))
        question = f"What is the delivery status of consignment {consignment}?"
        fakes.openai.push(Ok(text=f"Consignment {consignment} is in transit."))
        body, headers = await ask(client, question)
        await settle(client)
        if headers["x-gateway-cache"] == "hit":
            hits.append((question, body["choices"][0]["message"]["content"]))
    assert hits == []
    _, headers = await ask(client, question)  # the cache works: the same question is a hit
    assert headers["x-gateway-cache"] == "hit"


@pytest.mark.parametrize(
    ("answer", "body", "stored"),
    [
        (Ok(text="The answer is forty-"), {}, True),  # control: a clean answer is stored
        (Ok(text="Step one: open the settings and", finish="length"), {}, False),
        (Ok(text="I'm sorry, but I can't help with that."), {}, False),
        (Ok(text="Sure! {'status': 'ok'"), {"response_format": {"type": "json_object"}}, False),
        (Ok(text='{"status": "ok"}'), {"response_format": {"type": "json_object"}}, True),
        (Ok(text="I cannot assist with that request."), {"stream": True}, False),
        (Ok(text="Truncated strea", finish="length"), {"stream": True}, False),
    ],
    ids=[
        "clean",
        "length",
        "refusal",
        "invalid-json",
        "valid-json",
        "stream-refusal",
        "stream-length",
    ],
)
async def test_answers_failing_the_quality_check_are_not_stored(
    make_gateway: Any, fakes: Fakes, embedder: Any, answer: Ok, body: dict[str, Any], stored: bool
) -> None:
    client = await make_gateway(
        policy_for(fakes, cache={"static_threshold": 0.85}), embedder=embedder, **redis_settings()
    )
    fakes.openai.push(answer)
    _, headers = await ask(client, "What is the status of the migration?", **body)
    assert headers["x-gateway-cache"] == "miss"
    await settle(client)
    _, headers = await ask(client, "What is the status of the migration?", **body)
    assert (headers["x-gateway-cache"] == "hit") is stored
    assert len(fakes.openai.requests) == (1 if stored else 2)


@pytest.mark.timeout(120)
async def test_negative_feedback_on_an_exact_hit_stops_it_on_every_replica(
    make_gateway: Any, fakes: Fakes, embedder: Any
) -> None:
    settings = redis_settings()
    policy = policy_for(fakes, cache={"max_error_rate": 0.01})
    first = await make_gateway(policy, embedder=embedder, **settings)
    second = await make_gateway(policy, embedder=embedder, **settings)
    question = "Which gate does flight BA2490 leave from?"
    fakes.openai.push(Ok(text="Gate 12."))
    await ask(first, question)
    await settle(first)
    _, headers = await ask(second, question)  # an exact hit on the other replica
    assert headers["x-gateway-cache"] == "hit"
    assert (await flag_wrong(second, headers["x-request-id"]))["cache_corrected"] is True
    for replica in (first, second):
        fakes.openai.push(Ok(text="Gate 14."))
        body, headers = await ask(replica, question)
        assert headers["x-gateway-cache"] == "miss"
        assert body["choices"][0]["message"]["content"] == "Gate 14."
        await settle(replica)
        # The fresh answer is stored anew: flag it too, so the next replica misses as well.
        assert (await flag_wrong(replica, headers["x-request-id"]))["cache_corrected"] is True


@pytest.mark.timeout(120)
async def test_feedback_faster_than_the_background_store_keeps_the_answer_out(
    make_gateway: Any, fakes: Fakes, embedder: Any
) -> None:
    client = await make_gateway(
        policy_for(fakes, cache={"max_error_rate": 0.01}), embedder=embedder, **redis_settings()
    )
    question = "Who approved invoice INV-2024-0098?"
    fakes.openai.push(Ok(text="Nobody yet."))
    _, headers = await ask(client, question)
    # No settle: the answer may still be on its way to Redis when the client flags it.
    result = await flag_wrong(client, headers["x-request-id"])
    assert result["cache_corrected"] is True
    await settle(client)
    await asyncio.sleep(0.05)
    _, headers = await ask(client, question)
    assert headers["x-gateway-cache"] == "miss"


@pytest.mark.timeout(300)
async def test_a_stored_entry_is_read_by_the_guard_when_stored(
    make_gateway: Any, fakes: Fakes, embedder: Any
) -> None:
    """The stage reads a new entry's query for the guard as it stores it: the first lookup that
    meets the entry reads only its own query (cache.guard.remember)."""
    from cache import guard

    client = await make_gateway(
        policy_for(fakes, cache={"static_threshold": 0.85}), embedder=embedder, **redis_settings()
    )
    question = f"Where is parcel {uuid.uuid4().hex[:6]} right now, please?"
    fakes.openai.push(Ok(text="On its way."))
    await ask(client, question)
    await settle(client)
    before = guard._features.cache_info()
    guard._features(question)  # already read: a hit, not a new reading
    after = guard._features.cache_info()
    assert (after.hits - before.hits, after.misses - before.misses) == (1, 0)
