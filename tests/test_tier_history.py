"""``gateway router history``: TRAIN lines from the gateway's own decision records and feedback,
prompts only from teams that log them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.main import main
from gateway.cli.router import read_rows
from gateway.policy.model import hash_key
from tests.conftest import MODELS, TEAM_KEY, Fakes, policy_for

ADMIN_KEY = "admin-secret-key"
QUIET_KEY = "quiet-team-key"


# Run alone, the session's embedder loads inside this test (a minute on a busy 2-core host).
@pytest.mark.timeout(240)
async def test_history_writes_train_lines_from_graded_tier_choices(
    make_gateway: Any,
    fakes: Fakes,
    embedder: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tiers = {"gpt": "cheap", "claude": "frontier"}
    policy = policy_for(
        fakes,
        models=[
            {"name": alias, "provider": provider, "id": upstream, "tier": tiers.get(alias, "cheap")}
            for alias, (provider, upstream) in MODELS.items()
        ],
        routes=[{"name": "default", "candidates": ["gpt", "claude"], "tiering": {}}],
        # A task type per tier: the client's x-gateway-task header picks the tier here.
        task_types={"c": {"tiers": ["cheap"]}, "f": {"tiers": ["frontier"]}},
        teams=[
            {"name": "alpha", "key_sha256": hash_key(TEAM_KEY), "log_prompts": True},
            {"name": "quiet", "key_sha256": hash_key(QUIET_KEY)},
        ],
    )
    log = tmp_path / "decisions.jsonl"
    client = await make_gateway(
        policy,
        embedder=embedder,
        decision_log=log,
        telemetry_process=False,  # the log written in-process: no exporter to start
        admin_key_sha256=hash_key(ADMIN_KEY),
    )

    async def graded(text: str, task: str, score: float | None, key: str = TEAM_KEY) -> None:
        auth = {"Authorization": f"Bearer {key}"}
        body = {"model": "default", "messages": [{"role": "user", "content": text}]}
        response = await client.post(
            "/v1/chat/completions", json=body, headers={**auth, "x-gateway-task": task}
        )
        assert response.status == 200, await response.text()
        assert response.headers["x-gateway-tier"] == {"c": "cheap", "f": "frontier"}[task]
        if score is not None:
            grade = {"request_id": response.headers["x-request-id"], "score": score}
            assert (await client.post("/v1/feedback", json=grade, headers=auth)).status == 200

    hard, easy, once = "Prove that 17 is prime.", "Say hi to Ann.", "Name a colour."
    await graded(hard, "c", 0.0)
    await graded(hard, "f", 1.0)
    await graded(easy, "c", 1.0)
    await graded(easy, "f", 1.0)
    await graded(easy, "f", 0.0)
    await graded(once, "c", 1.0)  # one tier only: no line
    await graded(hard, "f", None)  # ungraded (heuristics alone do not count by default)
    await graded(hard, "c", 1.0, key=QUIET_KEY)  # a team that does not log prompts
    # The log is written in batches as requests end (feedback that comes later may miss it);
    # the admin export holds every grade given so far.
    for _ in range(100):
        if log.exists() and len(log.read_text().splitlines()) >= 8:
            break
        await asyncio.sleep(0.05)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    export = tmp_path / "export.json"
    export.write_bytes(await (await client.get("/admin/decisions?limit=100", headers=admin)).read())
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert not any("prompt" in r and r["prompt"] for r in logged if r["team"] == "quiet")

    out = tmp_path / "train.jsonl"
    args = ["router", "history", "--decisions", str(log), str(export), "--out", str(out)]
    assert main(args) == 0
    report = capsys.readouterr().err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {line["prompt"]: line["quality"] for line in lines} == {
        hard: {"cheap": 0.0, "frontier": 1.0},
        easy: {"cheap": 1.0, "frontier": 0.5},
    }
    assert {line["prompt"]: line["graded"] for line in lines}[easy] == {"cheap": 1, "frontier": 2}
    assert "6 graded tier choices used" in report
    assert "1 without the prompt" in report
    assert "1 ungraded" in report
    assert "1 graded on one tier only" in report
    # The file is TRAIN for `gateway router train` / `replay`.
    rows = read_rows(out, ("cheap", "frontier"), require_quality=True)
    assert sorted(rows.prompts) == sorted([hard, easy])
    assert main(["router", "history", "--decisions", str(tmp_path / "nope"), "--out", "x"]) == 2
    assert "cannot read" in capsys.readouterr().err
