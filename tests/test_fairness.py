"""Fair shares: a team saturating a provider does not open its breaker nor starve other teams.

The pool's slots (``providers.slots``) are served round-robin across teams with a bounded wait;
waiting for a slot is local saturation (``pool_saturated``), never a breaker's business; a team's
``max_in_flight`` caps its requests in flight (429) and its share of a provider's slots.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.core.runtime import RUNTIME
from gateway.policy.model import Policy, PolicyError, hash_key
from providers.errors import PoolSaturated
from providers.slots import FairSlots, Share, use_share
from tests.conftest import TEAM_KEY, Fakes, policy_for
from tests.fakes.base import Hang, Ok

NOISY_KEY = "sk-team-noisy-0123456789"
HELLO = [{"role": "user", "content": "hello"}]


# -- the slots themselves ----------------------------------------------------------------------
async def _hold(slots: FairSlots, share: str, order: list[str], release: asyncio.Event) -> None:
    with use_share(Share(share)):
        async with slots.slot("p", wait_s=5):
            order.append(share)
            await release.wait()


async def test_waiting_shares_are_served_round_robin() -> None:
    slots = FairSlots(1)
    order: list[str] = []
    gates = [asyncio.Event() for _ in range(6)]
    tasks = [asyncio.create_task(_hold(slots, "noisy", order, gates[0]))]
    await asyncio.sleep(0)
    # The noisy share queues four more, then another share queues its first request.
    for i in range(1, 5):
        tasks.append(asyncio.create_task(_hold(slots, "noisy", order, gates[i])))
        await asyncio.sleep(0)
    tasks.append(asyncio.create_task(_hold(slots, "quiet", order, gates[5])))
    await asyncio.sleep(0)
    assert slots.waiting() == 5
    for gate in gates:
        gate.set()
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    # The quiet share's only request goes right after the one in flight, not behind the backlog.
    assert order == ["noisy", "quiet", "noisy", "noisy", "noisy", "noisy"]
    assert slots.in_use == 0
    assert slots.waiting() == 0


async def test_a_share_cap_leaves_slots_to_others_and_a_wait_ends_in_pool_saturated() -> None:
    slots = FairSlots(3)
    capped = Share("noisy", {"p": 1})
    release = asyncio.Event()

    async def hold(share: Share) -> None:
        with use_share(share):
            async with slots.slot("p", wait_s=5):
                await release.wait()

    first = asyncio.create_task(hold(capped))
    await asyncio.sleep(0)
    assert slots.in_use == 1
    with use_share(capped), pytest.raises(PoolSaturated) as caught:
        async with slots.slot("p", wait_s=0.05):
            pass
    assert caught.value.code == "pool_saturated"
    assert "its share" in caught.value.message
    # Another share takes the free slots at once.
    with use_share(Share("quiet")):
        async with slots.slot("p", wait_s=0.05):
            assert slots.held_by("quiet") == 1
    release.set()
    await first
    assert slots.in_use == 0
    assert slots.waiting() == 0


async def test_a_cancelled_waiter_does_not_leak_its_slot() -> None:
    slots = FairSlots(1)
    release = asyncio.Event()
    holder = asyncio.create_task(_hold(slots, "a", [], release))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(_hold(slots, "b", [], asyncio.Event()))
    await asyncio.sleep(0)
    assert slots.waiting() == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await holder
    assert slots.in_use == 0
    assert slots.waiting() == 0


# -- through the gateway -----------------------------------------------------------------------
def _policy(
    fakes: Fakes, noisy_limit: Any, *, connections: int = 2, slot_wait: float = 0.3
) -> Policy:
    base = policy_for(fakes).model_dump()
    openai = base["providers"][0]
    openai["max_connections"] = connections
    openai["timeouts"]["slot_wait"] = slot_wait
    base["routes"] = [{"name": "default", "candidates": ["gpt", "claude"]}]
    base["teams"].append(
        {"name": "noisy", "key_sha256": hash_key(NOISY_KEY), "max_in_flight": noisy_limit}
    )
    return Policy.model_validate(base)


async def _chat(client: TestClient[Any, Any], key: str, model: str) -> tuple[int, dict[str, Any]]:
    response = await client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": HELLO},
        headers={"Authorization": f"Bearer {key}"},
    )
    return response.status, await response.json()


async def test_a_saturating_team_opens_no_breaker_and_others_go_on_to_their_fallback(
    make_gateway: Any, fakes: Fakes
) -> None:
    fakes.openai.default = Hang(3.0)  # slow but healthy: every answer takes 3 s
    gateway = await make_gateway(_policy(fakes, noisy_limit=None))
    runtime = gateway.app[RUNTIME]
    noisy = [asyncio.create_task(_chat(gateway, NOISY_KEY, "gpt")) for _ in range(12)]
    await asyncio.sleep(0.1)
    assert runtime.pool.slots("openai").in_use == 2
    status, body = await _chat(gateway, TEAM_KEY, "default")
    assert status == 200, body  # on claude, after a short wait for an openai slot
    results = await asyncio.gather(*noisy)
    codes = sorted(s for s, _ in results)
    assert codes.count(200) == 2  # the two that got a slot were answered
    saturated = [b for s, b in results if s != 200]
    assert all(b["error"]["code"] == "pool_saturated" for b in saturated), saturated
    assert {s for s, _ in results if s != 200} == {503}
    # Twelve failures of one provider, none its fault: every breaker stays closed.
    assert set(runtime.board.states().values()) <= {"closed"}
    assert runtime.board.blocked("provider:openai") is None


async def test_within_its_share_another_team_is_served_by_the_saturated_provider(
    make_gateway: Any, fakes: Fakes
) -> None:
    fakes.openai.push(Hang(3.0))  # the noisy team's one request that gets a slot hangs
    fakes.openai.default = Ok()
    gateway = await make_gateway(_policy(fakes, noisy_limit={"per_provider": {"openai": 1}}))
    runtime = gateway.app[RUNTIME]
    noisy = [asyncio.create_task(_chat(gateway, NOISY_KEY, "gpt")) for _ in range(5)]
    await asyncio.sleep(0.1)
    assert runtime.pool.slots("openai").held_by("noisy") == 1
    status, body = await _chat(gateway, TEAM_KEY, "gpt")  # gpt only: openai must serve it
    assert status == 200, body
    results = await asyncio.gather(*noisy)
    assert sorted(s for s, _ in results) == [200, 503, 503, 503, 503]
    assert set(runtime.board.states().values()) <= {"closed"}


async def test_a_slot_wait_longer_than_the_deadline_yields_to_the_fallback_in_time(
    make_gateway: Any, fakes: Fakes
) -> None:
    # slot_wait (5 s) is longer than the client's deadline (2 s): the wait is cut to the
    # attempt's share of the deadline (1 s) and ends as pool_saturated, so claude answers in time.
    fakes.openai.push(Hang(4.0))  # holds openai's only slot
    fakes.openai.default = Ok()
    gateway = await make_gateway(_policy(fakes, None, connections=1, slot_wait=5.0))
    runtime = gateway.app[RUNTIME]
    holder = asyncio.create_task(_chat(gateway, NOISY_KEY, "gpt"))
    await asyncio.sleep(0.1)
    assert runtime.pool.slots("openai").in_use == 1
    started = time.perf_counter()
    response = await gateway.post(
        "/v1/chat/completions",
        json={"model": "default", "messages": HELLO},
        headers={"Authorization": f"Bearer {TEAM_KEY}", "x-gateway-deadline-ms": "2000"},
    )
    elapsed = time.perf_counter() - started
    assert response.status == 200, await response.text()
    assert response.headers["x-gateway-provider"] == "anthropic"
    assert elapsed < 3.0  # the 200 itself says within the deadline; slack for a busy machine
    decision = runtime.decisions.recent(1)[0]
    assert [a.outcome for a in decision.attempts] == ["pool_saturated", "ok"]
    assert 0.7 < decision.attempts[0].latency_ms / 1000 < 1.4  # its share, not the 5 s wait
    assert runtime.board.blocked("provider:openai") is None  # saturation: no breaker
    assert runtime.pool.slots("openai").waiting() == 0
    assert (await holder)[0] == 200


async def test_the_last_candidate_saturated_ends_in_503_within_the_deadline(
    make_gateway: Any, fakes: Fakes
) -> None:
    fakes.openai.push(Hang(3.0))
    fakes.openai.default = Ok()
    gateway = await make_gateway(_policy(fakes, None, connections=1, slot_wait=5.0))
    runtime = gateway.app[RUNTIME]
    holder = asyncio.create_task(_chat(gateway, NOISY_KEY, "gpt"))
    await asyncio.sleep(0.1)
    response = await gateway.post(
        "/v1/chat/completions",
        json={"model": "gpt", "messages": HELLO},  # gpt alone: no other candidate
        headers={"Authorization": f"Bearer {TEAM_KEY}", "x-gateway-deadline-ms": "1000"},
    )
    body = await response.json()
    # Not a 504 with nothing to show: the saturated attempt is recorded and named.
    assert response.status == 503, body
    assert body["error"]["code"] == "pool_saturated"
    assert response.headers["Retry-After"] == "1"
    decision = runtime.decisions.recent(1)[0]
    assert [a.outcome for a in decision.attempts] == ["pool_saturated"]
    assert (await holder)[0] == 200


async def test_max_in_flight_refuses_the_next_request_in_the_clients_format(
    make_gateway: Any, fakes: Fakes
) -> None:
    fakes.openai.default = Hang(1.0)
    gateway = await make_gateway(_policy(fakes, noisy_limit=2))
    held = [asyncio.create_task(_chat(gateway, NOISY_KEY, "gpt")) for _ in range(2)]
    await asyncio.sleep(0.1)
    status, body = await _chat(gateway, NOISY_KEY, "gpt")
    assert status == 429
    assert body["error"]["code"] == "concurrency_limit_exceeded"
    assert "max_in_flight" in body["error"]["message"]
    messages = await gateway.post(
        "/v1/messages",
        json={"model": "gpt", "max_tokens": 16, "messages": HELLO},
        headers={"x-api-key": NOISY_KEY, "anthropic-version": "2023-06-01"},
    )
    assert messages.status == 429
    assert messages.headers["Retry-After"] == "1"
    assert (await messages.json())["type"] == "error"  # Anthropic's error shape
    # Another team is not limited by it.
    other = asyncio.create_task(_chat(gateway, TEAM_KEY, "default"))
    answered = await asyncio.gather(*held, other)
    assert [s for s, _ in answered] == [200, 200, 200], answered
    # Places are given back: the team may send again.
    assert (await _chat(gateway, NOISY_KEY, "gpt"))[0] == 200


def test_max_in_flight_is_validated(fakes: Fakes) -> None:
    with pytest.raises(PolicyError, match="unknown provider 'nope'"):
        _load(_policy(fakes, noisy_limit=None), {"per_provider": {"nope": 1}})
    with pytest.raises(PolicyError, match="max_in_flight"):
        _load(_policy(fakes, noisy_limit=None), {"total": 0})
    with pytest.raises(PolicyError, match="max_in_flight"):
        _load(_policy(fakes, noisy_limit=None), {"totl": 3})


def _load(policy: Policy, limit: Any) -> None:
    from pydantic import ValidationError

    data = policy.model_dump()
    data["teams"][-1]["max_in_flight"] = limit
    try:
        Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(str(exc)) from exc
