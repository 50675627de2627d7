"""Property test: under any fault schedule the routing promises hold.

Random schedules of outages, 429 storms, hangs, cuts, garbage, blocks, drops and version swaps
over fakes in two regions; for every request: an answer or a documented error (never lost, never
a 500), no prompt outside the team's regions (from the fakes' own request logs), attempts within
the budget, and the deadline kept.
"""

from __future__ import annotations

import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.runtime import RUNTIME
from gateway.policy.model import Policy
from tests.fakes.base import Behaviour, Blocked, CutStream, Drop, Fail, Hang, Malformed, Ok
from tests.worlds import EU_KEY, HELLO, KEY, Region, policy

MAX_ATTEMPTS = 3
DEADLINE_MS = 800
SLACK_S = 0.8
# Statuses a client may see: success and the documented client/upstream errors.
DOCUMENTED = {200, 400, 429, 502, 503, 504}

behaviours = st.one_of(
    st.just(Ok()),
    st.builds(Ok, served_model=st.just("swapped-version-2099-01-01")),
    st.builds(
        Fail,
        status=st.sampled_from([429, 500, 503, 529, 401, 404]),
        retry_after=st.sampled_from([None, 0.05]),
    ),
    st.just(Malformed()),
    st.just(Blocked()),
    st.just(CutStream()),
    st.just(Drop()),
    st.builds(Hang, seconds=st.sampled_from([0.05, 2.0])),
)
requests = st.lists(
    st.tuples(
        st.sampled_from([KEY, EU_KEY]),  # team
        st.booleans(),  # stream
        st.lists(behaviours, min_size=4, max_size=4),  # next behaviour of each fake
    ),
    min_size=1,
    max_size=4,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(schedule=requests)
async def test_routing_promises_hold_under_any_fault_schedule(
    schedule: list[tuple[str, bool, list[Behaviour]]], make_gateway: Any, world: Region
) -> None:
    data = policy(world, max_attempts=MAX_ATTEMPTS).model_dump()
    for provider in data["providers"]:
        provider["timeouts"] = {"first_byte": 0.5}
    client = await make_gateway(Policy.model_validate(data))
    fakes = list(world.all().values())
    for team_key, stream, script in schedule:
        for fake in fakes:
            fake.requests.clear()
            fake.script.clear()
        for fake, behaviour in zip(fakes, script, strict=True):
            fake.push(behaviour)
        started = time.perf_counter()
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "main", "messages": HELLO, "stream": stream},
            headers={
                "Authorization": f"Bearer {team_key}",
                "x-gateway-deadline-ms": str(DEADLINE_MS),
            },
        )
        text = await response.text()
        elapsed = time.perf_counter() - started
        # Never lost: an answer or a documented, OpenAI-shaped error.
        assert response.status in DOCUMENTED, text
        if response.status != 200:
            assert '"error"' in text
        # Residency, from the fakes' own logs.
        if team_key == EU_KEY:
            assert not world.gpt_us.requests
            assert not world.claude_us.requests
        # Attempts bounded, deadline kept. The slack covers the event loop and the fakes on a
        # loaded 2-core CI host (0.4 s once fell short there: 1.41 s, passing on hypothesis'
        # rerun); it stays under the 2 s hang, so a deadline not enforced still fails here.
        assert sum(len(f.requests) for f in fakes) <= MAX_ATTEMPTS
        assert elapsed < DEADLINE_MS / 1000 + SLACK_S
        decision = client.app[RUNTIME].decisions.recent(1)[0]
        assert len(decision.attempts) <= MAX_ATTEMPTS
    await client.close()
