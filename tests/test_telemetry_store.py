"""Decision records in the shared Redis stream, the JSON-lines file and the admin API."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from gateway.core.decision import Attempt, Decision
from gateway.core.runtime import RUNTIME
from gateway.policy.model import hash_key
from gateway.telemetry.decision_store import DecisionSinks
from tests.conftest import PROVIDER_KEYS, TEAM_KEY, Fakes, RedisServer
from tests.fakes.base import Fail
from tests.test_telemetry import MESSAGES, OPEN_KEY, PROMPT, ask, priced_policy

REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN_KEY = "admin-telemetry-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def prefix() -> str:
    return f"gw-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def replicas(
    make_gateway: Any, fakes: Fakes, prefix: str
) -> AsyncIterator[tuple[TestClient[Any, Any], TestClient[Any, Any]]]:
    """Two gateways sharing one Redis (one deployment, two replicas)."""
    settings = {"redis_url": REDIS_URL, "redis_prefix": prefix, "admin_key_sha256": ADMIN_HASH}
    first = await make_gateway(priced_policy(fakes), **settings)
    second = await make_gateway(priced_policy(fakes), **settings)
    yield first, second
    client = aioredis.Redis.from_url(REDIS_URL)
    await client.delete(f"{prefix}:decisions")
    await client.aclose()


ADMIN_HASH = hash_key(ADMIN_KEY)


async def written(*clients: TestClient[Any, Any]) -> None:
    """Wait for the replicas' background writers (they run every 0.2 s) to reach Redis."""
    for client in clients:
        sinks = client.app[RUNTIME].decisions.sinks
        assert sinks is not None
        assert await sinks.written(5.0)


async def decisions(client: TestClient[Any, Any], query: str = "") -> tuple[list[Any], str]:
    response = await client.get(f"/admin/decisions{query}", headers=ADMIN)
    assert response.status == 200
    return await response.json(), response.headers["x-gateway-decisions"]


async def test_a_decision_is_visible_to_another_replica(
    replicas: tuple[TestClient[Any, Any], TestClient[Any, Any]],
) -> None:
    first, second = replicas
    response = await ask(first)
    assert response.status == 200
    request_id = response.headers["x-request-id"]
    assert second.app[RUNTIME].decisions.find(request_id) is None  # not in its own ring
    await written(first)

    found = await second.get(f"/admin/decisions/{request_id}", headers=ADMIN)
    assert found.status == 200
    record = await found.json()
    assert (record["request_id"], record["team"], record["served_by"]) == (
        request_id,
        "alpha",
        "gpt",
    )
    assert record["attempts"][0]["provider"] == "openai"
    assert PROMPT not in orjson.dumps(record).decode()

    listed, origin = await decisions(second, "?team=alpha")
    assert origin == "redis"
    assert [r["request_id"] for r in listed] == [request_id]

    missing = await second.get(f"/admin/decisions/{uuid.uuid4().hex}", headers=ADMIN)
    assert missing.status == 404


async def test_feedback_reaches_a_request_served_by_another_replica(
    replicas: tuple[TestClient[Any, Any], TestClient[Any, Any]],
) -> None:
    first, second = replicas
    request_id = (await ask(first)).headers["x-request-id"]
    await written(first)
    headers = {"Authorization": f"Bearer {TEAM_KEY}"}
    response = await second.post(
        "/v1/feedback", json={"request_id": request_id, "score": 0.9}, headers=headers
    )
    assert response.status == 200
    # Another team cannot grade it: the id is reported as unknown.
    response = await second.post(
        "/v1/feedback",
        json={"request_id": request_id, "score": 0.1},
        headers={"Authorization": f"Bearer {OPEN_KEY}"},
    )
    assert response.status == 404


async def test_admin_filters(
    replicas: tuple[TestClient[Any, Any], TestClient[Any, Any]], fakes: Fakes
) -> None:
    first, second = replicas
    before = time.time()
    assert (await ask(first)).status == 200
    assert (await ask(second, key=OPEN_KEY)).status == 200
    fakes.openai.push(Fail(400, "bad request"))
    assert (await ask(first)).status == 400
    fakes.openai.push(Fail(503))
    fakes.anthropic.push(Fail(503))
    assert (await ask(second)).status == 503
    await written(first, second)

    everything, _ = await decisions(first, f"?since={before}")
    assert len(everything) == 4
    started = [r["started_at"] for r in everything]
    assert started == sorted(started)  # newest last
    assert len((await decisions(first, "?team=open"))[0]) == 1
    assert [r["status"] for r in (await decisions(first, "?status=error"))[0]] == [400, 503]
    assert [r["status"] for r in (await decisions(first, "?status=5xx"))[0]] == [503]
    assert len((await decisions(first, "?status=200&team=alpha"))[0]) == 1
    assert len((await decisions(first, "?source=error"))[0]) == 2
    assert len((await decisions(first, "?route=default&limit=1"))[0]) == 1
    assert (await decisions(first, f"?since={time.time() + 60}"))[0] == []
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(before - 1))
    assert len((await decisions(first, f"?since={iso}"))[0]) == 4
    bad = await first.get("/admin/decisions?status=teapot", headers=ADMIN)
    assert bad.status == 400
    bad = await first.get("/admin/decisions?since=yesterday", headers=ADMIN)
    assert bad.status == 400


async def test_json_lines_log_and_redis_outage(
    make_gateway: Any, fakes: Fakes, redis_server: RedisServer, tmp_path: Path
) -> None:
    log = tmp_path / "decisions" / "decisions.jsonl"
    client: TestClient[Any, Any] = await make_gateway(
        priced_policy(fakes),
        redis_url=redis_server.url,
        decision_log=log,
        admin_key_sha256=ADMIN_HASH,
    )
    runtime = client.app[RUNTIME]
    sinks = runtime.decisions.sinks
    assert sinks is not None
    assert (await ask(client)).status == 200
    assert await sinks.written(5.0)
    assert (await decisions(client))[1] == "redis"

    redis_server.stop()
    for _ in range(3):  # Redis is down: requests are answered as before
        assert (await ask(client)).status == 200
    assert await sinks.written(5.0)
    listed, origin = await decisions(client)
    assert origin == "local"  # the ring answers while Redis is away
    assert len(listed) == 4

    assert (await ask(client, key=OPEN_KEY)).status == 200
    assert await sinks.written(5.0)
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert len(lines) == 5
    assert {line["team"] for line in lines} == {"alpha", "open"}
    text = log.read_text()
    assert text.count(PROMPT) == 1  # only the opted-in team's record carries it
    assert lines[-1]["prompt"] == MESSAGES
    for secret in (TEAM_KEY, OPEN_KEY, *PROVIDER_KEYS.values()):
        assert secret not in text
    metrics = await (await client.get("/metrics")).text()
    assert 'gateway_decision_records_total{result="ok",sink="file"} 5.0' in metrics
    # The four records written while Redis was down missed the stream (not the ring or file).
    assert 'gateway_decision_records_total{result="error",sink="redis"} 4.0' in metrics

    redis_server.start()  # back (empty: it keeps nothing on disk): records stream again
    response = await ask(client)
    assert await sinks.written(5.0)
    listed, origin = await decisions(client)
    assert origin == "redis"
    assert [r["request_id"] for r in listed] == [response.headers["x-request-id"]]


async def test_the_request_path_never_waits_for_the_sinks(
    make_gateway: Any, fakes: Fakes, tmp_path: Path
) -> None:
    log = tmp_path / "decisions.jsonl"
    client: TestClient[Any, Any] = await make_gateway(priced_policy(fakes), decision_log=log)
    sinks = client.app[RUNTIME].decisions.sinks
    assert sinks is not None
    sinks.interval_s = 3600  # after its current wait, the background writer sleeps
    await asyncio.sleep(1)
    for _ in range(3):
        assert (await ask(client)).status == 200
    assert log.read_bytes() == b""  # answered before anything was written
    assert await sinks.written(5.0)
    assert len(log.read_bytes().splitlines()) == 3


async def test_the_log_follows_a_rotation(make_gateway: Any, fakes: Fakes, tmp_path: Path) -> None:
    """logrotate's default (``create``) moves the file away: later records go to a new file at
    the configured path, not into the moved one; a removed file is created again."""
    log = tmp_path / "decisions.jsonl"
    client: TestClient[Any, Any] = await make_gateway(priced_policy(fakes), decision_log=log)
    sinks = client.app[RUNTIME].decisions.sinks
    assert sinks is not None

    async def answered(n: int) -> list[str]:
        ids = []
        for _ in range(n):
            response = await ask(client)
            assert response.status == 200
            ids.append(response.headers["x-request-id"])
        assert await sinks.written(5.0)
        return ids

    def request_ids(path: Path) -> list[str]:
        return [orjson.loads(line)["request_id"] for line in path.read_bytes().splitlines()]

    first = await answered(2)
    log.rename(tmp_path / "decisions.jsonl.1")
    second = await answered(3)
    assert request_ids(tmp_path / "decisions.jsonl.1") == first
    assert request_ids(log) == second
    log.unlink()
    third = await answered(1)
    assert request_ids(log) == third


def test_a_record_from_another_version_reads_back() -> None:
    """Rolling deploys: fields this version does not know are ignored, not an error."""
    record = Decision(request_id="r1", team="alpha", route="default", task_type="chat")
    record.attempts = [Attempt("gpt", "openai", "us", "ok", 1.0)]
    data = record.to_dict()
    data["new_field"] = 1
    data["attempts"][0]["new_attempt_field"] = 2
    read = Decision.from_dict(data)
    assert (read.request_id, read.attempts[0].provider) == ("r1", "openai")


async def test_closing_during_a_write_keeps_that_batch(tmp_path: Path) -> None:
    """Shutdown while the background writer is mid-batch: the batch is still written (cancelling
    the writer there used to drop it, and close the file under the write)."""
    writing, release = threading.Event(), threading.Event()

    class SlowFile(DecisionSinks):
        def _append(self, blob: bytes) -> None:
            writing.set()
            release.wait(5)
            super()._append(blob)

    log = tmp_path / "decisions.jsonl"
    sinks = SlowFile(path=log, interval_s=0.01)
    await sinks.start()
    for i in range(3):
        sinks.submit(Decision(request_id=f"r{i}", team="alpha", route="default", task_type="chat"))
    assert await asyncio.to_thread(writing.wait, 5)
    closing = asyncio.create_task(sinks.close())
    await asyncio.sleep(0.1)  # close is waiting for the batch in progress
    release.set()
    await closing
    assert [orjson.loads(line)["request_id"] for line in log.read_bytes().splitlines()] == [
        "r0",
        "r1",
        "r2",
    ]


async def test_a_batch_streams_each_record_with_its_request_id(prefix: str) -> None:
    """The stream write sends a batch as two arguments (request ids, JSON lines) that a Lua
    script splits: every record must come back whole, paired with its own request id, in order,
    whatever its text holds (newlines, quotes, non-ASCII are escaped by the JSON encoder)."""
    sinks = DecisionSinks(redis_url=REDIS_URL, prefix=prefix, batch_size=300)
    await sinks.start()
    awkward = 'line one\nline "two"\r\n\tété ✓ \\n'
    sent = []
    for i in range(700):  # three batches, the last one partial
        decision = Decision(request_id=f"{i:032x}", team="alpha", route="default", task_type="t")
        decision.error = awkward if i % 2 else None
        sinks.submit(decision)
        sent.append(decision)
    assert await sinks.written(5.0)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        entries = await client.xrange(f"{prefix}:decisions")
    finally:
        await client.delete(f"{prefix}:decisions")
        await client.aclose()
        await sinks.close()
    assert len(entries) == len(sent)
    for (_, values), decision in zip(entries, sent, strict=True):
        assert values[b"rid"].decode() == decision.request_id
        record = orjson.loads(values[b"d"])
        assert (record["request_id"], record["error"]) == (decision.request_id, decision.error)


async def test_a_redis_failure_stops_the_batch_and_counts_every_record(tmp_path: Path) -> None:
    """A batch goes to Redis in chunks; when one fails, the rest of the batch is not tried (each
    try would wait out the socket timeout) and every record of it is counted as not streamed,
    while the file still gets them all."""
    from gateway.telemetry.metrics import Metrics

    metrics = Metrics()
    log = tmp_path / "decisions.jsonl"
    sinks = DecisionSinks(
        redis_url="redis://127.0.0.1:9/0", path=log, metrics=metrics, batch_size=200
    )
    await sinks.start()
    for i in range(200):
        sinks.submit(Decision(request_id=f"r{i}", team="alpha", route="default", task_type="t"))
    assert await sinks.written(5.0)
    await sinks.close()
    errors = metrics.registry.get_sample_value(
        "gateway_decision_records_total", {"sink": "redis", "result": "error"}
    )
    assert errors == 200
    assert len(log.read_bytes().splitlines()) == 200
