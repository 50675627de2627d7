"""The chaos suite at CI size: 600 requests under a seeded fault schedule (``harness.py``).

``python -m bench.chaos`` runs the same with >= 5,000 requests and prints the tallies.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chaos.harness import run_chaos
from tests.conftest import RedisServer

REQUESTS = 600
SEED = 20261127


@pytest.mark.timeout(300)
async def test_chaos(embedder: Any, redis_server: RedisServer) -> None:
    tally = await run_chaos(REQUESTS, seed=SEED, embedder=embedder, redis=redis_server)
    print("\n".join(tally.lines()))
    assert tally.requests == REQUESTS
    assert tally.lost == []
    assert tally.cross_team_hits == []
    assert tally.residency_violations == []
    assert tally.late == []
    # The run meant something: faults of every kind happened, most requests were still
    # answered, clients saw errors, the cache served hits, Redis went away and came back.
    assert set(tally.faults) == {
        "Fail503",
        "Drop",
        "Fail429",
        "Hang",
        "CutStream",
        "Malformed",
        "Blocked",
        "VersionSwap",
    }
    assert tally.answered > REQUESTS // 3
    assert sum(tally.errors.values()) > 0
    assert tally.cache_hits > 0
    assert len(tally.events) == 2
