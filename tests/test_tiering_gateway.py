"""Task types and tier choice through the real gateway, on loopback fakes with the real embedder:
the classifier, its confidence threshold, the client's header, a task type's route and tiers,
the x-gateway-tier header, the decision record, and learning from feedback."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.core.runtime import RUNTIME
from gateway.policy.model import hash_key
from tests.conftest import MODELS, TEAM_KEY, Fakes, RedisServer, policy_for
from tests.test_reload import write_policy

AUTH = {"Authorization": f"Bearer {TEAM_KEY}"}
ADMIN = "admin-secret-key"

PROOFS = [
    "Prove that the square root of 2 is irrational.",
    "Prove that there are infinitely many prime numbers.",
    "Show by induction that the sum of the first n odd numbers is n squared.",
    "Prove that every bounded monotone sequence of real numbers converges.",
]
GREETINGS = [
    "Say hello to my team.",
    "Write a friendly good morning message for my colleagues.",
    "Greet the new hires warmly.",
    "Send a cheerful hi to everyone in the channel.",
]
LOOKUPS = [
    "What is the capital of France?",
    "What is the capital city of Japan?",
    "Which city is the capital of Canada?",
]


def tiered_policy(fakes: Fakes, **tiering: Any) -> Any:
    tiers = {"gpt": "cheap", "claude": "frontier"}
    return policy_for(
        fakes,
        models=[
            {"name": alias, "provider": provider, "id": upstream, "tier": tiers.get(alias, "cheap")}
            for alias, (provider, upstream) in MODELS.items()
        ],
        routes=[
            {
                "name": "default",
                "candidates": ["gpt", "claude"],
                "tiering": {"max_frontier_share": 1.0, "exploration": 0.0, **tiering},
            },
            {"name": "smalltalk", "candidates": ["gpt"]},
        ],
        task_types={
            "proof": {"frontier_gain": 0.5, "examples": PROOFS},
            "greeting": {"frontier_gain": 0.0, "examples": GREETINGS},
            "lookup": {"frontier_gain": 0.9, "tiers": ["cheap"], "examples": LOOKUPS},
        },
        task_classifier={"min_confidence": 0.6},
    )


async def ask(
    client: TestClient[Any, Any], text: str, model: str = "default", **headers: str
) -> Any:
    response = await client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": text}]},
        headers={**AUTH, **headers},
    )
    assert response.status == 200, await response.text()
    return response


async def test_a_classified_hard_prompt_goes_to_the_frontier(
    make_gateway: Any, fakes: Fakes, embedder: Any
) -> None:
    client = await make_gateway(tiered_policy(fakes), embedder=embedder)
    # Cold start: each task type's prior decides (no outcome yet to move the estimates).
    easy = await ask(client, "Say a warm hello to the support team.")
    assert easy.headers["x-gateway-task"] == "greeting"
    assert easy.headers["x-gateway-tier"] == "cheap"
    assert easy.headers["x-gateway-provider"] == "openai"
    hard = await ask(client, "Prove that the square root of 3 is irrational.")
    assert hard.headers["x-gateway-task"] == "proof"
    assert hard.headers["x-gateway-tier"] == "frontier"
    assert hard.headers["x-gateway-provider"] == "anthropic"
    decision = client.app[RUNTIME].decisions.find(hard.headers["x-request-id"])
    assert decision is not None
    assert decision.tiering["tier"] == "frontier"
    assert decision.tiering["served_tier"] == "frontier"
    assert decision.tiering["predicted_gain"] > 0
    classified = next(e for e in decision.events if e["type"] == "task_classified")
    assert classified["source"] == "classifier"
    assert classified["confidence"] >= 0.6


async def test_an_unfamiliar_prompt_keeps_the_routes_default_type(
    make_gateway: Any, fakes: Fakes, embedder: Any
) -> None:
    client = await make_gateway(tiered_policy(fakes), embedder=embedder)
    response = await ask(client, "Translate 'la pomme est rouge' into German, please.")
    assert response.headers["x-gateway-task"] == "general"
    decision = client.app[RUNTIME].decisions.find(response.headers["x-request-id"])
    assert decision is not None
    classified = next(e for e in decision.events if e["type"] == "task_classified")
    assert classified["source"] == "default"
    assert classified["confidence"] < 0.6
    # No prior gain for "general": the cheap tier.
    assert response.headers["x-gateway-tier"] == "cheap"


async def test_the_clients_header_wins_over_the_classifier(
    make_gateway: Any, fakes: Fakes, embedder: Any
) -> None:
    client = await make_gateway(tiered_policy(fakes), embedder=embedder)
    response = await ask(client, PROOFS[0], **{"x-gateway-task": "greeting"})
    assert response.headers["x-gateway-task"] == "greeting"
    assert response.headers["x-gateway-tier"] == "cheap"


async def test_a_task_types_tiers_bound_the_choice(
    make_gateway: Any, fakes: Fakes, embedder: Any
) -> None:
    client = await make_gateway(tiered_policy(fakes), embedder=embedder)
    response = await ask(client, "What is the capital of Italy?")
    assert response.headers["x-gateway-task"] == "lookup"
    assert response.headers["x-gateway-tier"] == "cheap"
    assert response.headers["x-gateway-provider"] == "openai"
    assert fakes.anthropic.requests == []


async def test_a_task_type_can_move_a_request_to_its_route(
    make_gateway: Any, fakes: Fakes, embedder: Any
) -> None:
    policy = tiered_policy(fakes)
    task_types = dict(policy.task_types)
    task_types["greeting"] = task_types["greeting"].model_copy(update={"route": "smalltalk"})
    client = await make_gateway(
        policy.model_copy(update={"task_types": task_types}), embedder=embedder
    )
    moved = await ask(client, "Say hello to my team, please.")
    assert moved.headers["x-gateway-route"] == "smalltalk"
    assert "x-gateway-tier" not in moved.headers  # smalltalk has no tiering
    # A pinned model alias is the client's explicit choice: it never moves.
    pinned = await ask(client, "Say hello to my team, please.", model="claude")
    assert pinned.headers["x-gateway-route"] == "claude"


async def test_bad_grades_for_the_frontier_send_similar_prompts_to_the_cheap_tier(
    make_gateway: Any, fakes: Fakes, embedder: Any
) -> None:
    client = await make_gateway(tiered_policy(fakes), embedder=embedder)
    tiers = client.app[RUNTIME].tiers
    assert tiers is not None
    first = await ask(client, PROOFS[0])
    assert first.headers["x-gateway-tier"] == "frontier"
    # The answer's own heuristic score counts at once; the client's grade replaces it.
    assert tiers.outcomes("default") == 1
    graded = await client.post(
        "/v1/feedback",
        json={"request_id": first.headers["x-request-id"], "score": 0.0},
        headers=AUTH,
    )
    assert graded.status == 200
    assert tiers.outcomes("default") == 1
    after = await ask(client, "Prove that the square root of 5 is irrational.")
    assert after.headers["x-gateway-tier"] == "cheap"
    decision = client.app[RUNTIME].decisions.find(after.headers["x-request-id"])
    assert decision is not None
    assert decision.tiering["predicted_gain"] < 0


async def test_a_reload_applies_the_routes_tiering_and_keeps_what_it_learnt(
    make_gateway: Any, fakes: Fakes, embedder: Any, tmp_path: Path
) -> None:
    """Ops turn the frontier share down at run time (``POST /admin/reload``): the next request
    stays on the cheap tier, and the outcomes learnt before the reload are still there."""
    path = tmp_path / "policy.yaml"
    write_policy(path, tiered_policy(fakes))
    client = await make_gateway(
        tiered_policy(fakes), embedder=embedder, config=path, admin_key_sha256=hash_key(ADMIN)
    )
    tiers = client.app[RUNTIME].tiers
    assert tiers is not None
    assert (await ask(client, PROOFS[0])).headers["x-gateway-tier"] == "frontier"
    assert tiers.outcomes("default") == 1
    write_policy(path, tiered_policy(fakes, max_frontier_share=0.0))
    reload = await client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
    assert reload.status == 200
    assert (await reload.json())["changed"] == ["routes"]
    assert client.app[RUNTIME].tiers is tiers
    assert tiers.outcomes("default") == 1
    after = await ask(client, PROOFS[1])
    assert after.headers["x-gateway-tier"] == "cheap"
    decision = client.app[RUNTIME].decisions.find(after.headers["x-request-id"])
    assert decision is not None
    assert decision.tiering["reason"] == "frontier share at the 0% cap"
    assert tiers.outcomes("default") == 2


async def test_a_reload_can_add_the_first_tiered_route(
    make_gateway: Any, fakes: Fakes, embedder: Any, tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    untiered = tiered_policy(fakes).model_dump()
    untiered["routes"][0].pop("tiering")
    write_policy(path, untiered)
    client = await make_gateway(
        policy_for(fakes, **untiered),
        embedder=embedder,
        config=path,
        admin_key_sha256=hash_key(ADMIN),
    )
    assert client.app[RUNTIME].tiers is None
    assert "x-gateway-tier" not in (await ask(client, PROOFS[0])).headers
    write_policy(path, tiered_policy(fakes))
    reload = await client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
    assert (await reload.json())["restart_required"] == []
    assert (await ask(client, PROOFS[1])).headers["x-gateway-tier"] == "frontier"


@pytest.mark.parametrize("graded_on", ["the replica that answered", "the other replica"])
async def test_a_grade_given_on_one_replica_steers_the_other(
    make_gateway: Any, fakes: Fakes, embedder: Any, redis_server: RedisServer, graded_on: str
) -> None:
    """Two gateways on one Redis: the frontier's answer graded 0 sends a similar prompt to the
    cheap tier on the other replica (the outcome and its grade travel through the route's
    outcome stream), whichever replica the client's feedback reached."""
    one, two = [
        await make_gateway(
            tiered_policy(fakes), embedder=embedder, redis_url=redis_server.url, redis_prefix="tg"
        )
        for _ in range(2)
    ]
    first = await ask(one, PROOFS[0])
    assert first.headers["x-gateway-tier"] == "frontier"
    grader = one if graded_on == "the replica that answered" else two
    grade = {"request_id": first.headers["x-request-id"], "score": 0.0}
    async with asyncio.timeout(10):  # the other replica finds the request in the shared stream
        while (await grader.post("/v1/feedback", json=grade, headers=AUTH)).status != 200:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    metrics = two.app[RUNTIME].metrics

    def learnt() -> float:
        samples = metrics.samples("gateway_tier_outcomes_total")
        return sum(v for labels, v in samples if labels["result"] == "learnt")

    async with asyncio.timeout(10):
        while learnt() < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    tiers = two.app[RUNTIME].tiers
    assert tiers is not None
    assert tiers.outcomes("default") == 1  # the answer, then its grade: one outcome
    after = await ask(two, "Prove that the square root of 5 is irrational.")
    assert after.headers["x-gateway-tier"] == "cheap"


async def test_ops_see_each_routes_tier_router(
    make_gateway: Any, fakes: Fakes, embedder: Any
) -> None:
    """``GET /admin/tiering`` and ``gateway_tier_decisions_total``: the knobs, what the route
    learnt, and why its requests went where they did."""
    client = await make_gateway(
        tiered_policy(fakes), embedder=embedder, admin_key_sha256=hash_key(ADMIN)
    )
    tiers = [
        (await ask(client, text)).headers["x-gateway-tier"]
        for text in (
            PROOFS[0],  # the proof type's prior gain: the frontier
            "Say a warm hello to the support team.",
            "What is the capital of Italy?",  # lookups may only use the cheap tier
        )
    ]
    assert tiers[0] == "frontier"
    assert tiers[2] == "cheap"
    response = await client.get("/admin/tiering", headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status == 200
    state = await response.json()
    assert state["enabled"] is True
    assert state["sharing"] == {"enabled": False, "healthy": None, "replica": None, "queued": 0}
    route = state["routes"]["default"]
    assert route["config"]["max_frontier_share"] == 1.0
    assert route["outcomes"]["learnt"] == 3  # each answer's heuristic grade
    assert route["outcomes"]["frontier"] == tiers.count("frontier")
    assert route["recent"]["decisions"] == 2  # the ones that had a choice to make
    assert route["recent"]["frontier_share"] == tiers[:2].count("frontier") / 2
    decided = {code: n for code, n in route["decisions"].items() if n}
    assert decided["top_share"] >= 1
    assert decided["only_tier"] == 1
    assert sum(decided.values()) == 3
    samples = client.app[RUNTIME].metrics.samples("gateway_tier_decisions_total")
    by_code: dict[str, float] = {}
    for labels, value in samples:
        assert labels["route"] == "default"
        by_code[labels["code"]] = by_code.get(labels["code"], 0) + value
    assert by_code == decided
    refused = await client.get("/admin/tiering", headers=AUTH)
    assert refused.status == 401


async def test_the_dashboard_shows_each_routes_tier_routing(
    make_gateway: Any, fakes: Fakes, embedder: Any
) -> None:
    client = await make_gateway(
        tiered_policy(fakes), embedder=embedder, admin_key_sha256=hash_key(ADMIN)
    )
    admin = {"Authorization": f"Bearer {ADMIN}"}
    panels = await (await client.get("/dashboard/panels", headers=admin)).text()
    assert 'data-tier-route="default" data-frontier-share=""' in panels  # nothing decided yet
    await ask(client, "Say a warm hello to the support team.")  # cold start: no gain, cheap
    await ask(client, PROOFS[0])  # the proof type's prior: the frontier
    data = await (await client.get("/dashboard/data", headers=admin)).json()
    assert data["tiering"]["default"]["recent"]["frontier_share"] == 0.5
    panels = await (await client.get("/dashboard/panels", headers=admin)).text()
    row = re.search(r'<tr data-tier-route="default"[^>]*>(.*?)</tr>', panels)
    assert row is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))
    assert cells == [
        "default",
        "100%",
        "2",
        "50%",
        cells[4],
        "1 / 1",
        "0",
        "none (live outcomes only)",
        "no_gain 1, top_share 1",
    ]


async def test_a_reload_that_ends_tiering_leaves_a_shared_gateway_serving(
    make_gateway: Any, fakes: Fakes, embedder: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    """With outcomes shared through Redis, a reload that takes ``tiering`` off every route
    leaves the follower with nothing to read: requests are still answered (it once spun)."""
    path = tmp_path / "policy.yaml"
    write_policy(path, tiered_policy(fakes))
    client = await make_gateway(
        tiered_policy(fakes),
        embedder=embedder,
        config=path,
        admin_key_sha256=hash_key(ADMIN),
        redis_url=redis_server.url,
        redis_prefix="untier",
    )
    assert (await ask(client, PROOFS[0])).headers["x-gateway-tier"] == "frontier"
    untiered = tiered_policy(fakes).model_dump()
    untiered["routes"][0].pop("tiering")
    write_policy(path, untiered)
    reload = await client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
    assert reload.status == 200
    await asyncio.sleep(0.5)  # the follower's next rounds
    async with asyncio.timeout(5):
        answered = await ask(client, PROOFS[1])
    assert "x-gateway-tier" not in answered.headers
