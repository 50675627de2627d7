"""The optional judge: a fake provider grades sampled answers in the background."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from gateway.core.runtime import RUNTIME, Runtime
from gateway.quality.grading import parse_grade
from gateway.quality.judge import Judge
from tests.conftest import EU_TEAM_KEY, TEAM_KEY, Fakes, policy_for
from tests.fakes.base import Fail, Hang, Ok

RUBRIC = "Does the answer resolve the customer's question completely?"


def judged_policy(fakes: Fakes, **judge: Any) -> Any:
    # gpt (openai fake) answers; claude (anthropic fake) judges every "general" answer.
    settings = {"model": "claude", "rubric": RUBRIC, "sample": 1.0, **judge}
    return policy_for(fakes, quality={"task_types": {"general": {"judge": settings}}})


def judge_of(client: Any) -> tuple[Runtime, Judge]:
    runtime: Runtime = client.app[RUNTIME]
    judge = runtime.quality.judge
    assert judge is not None
    return runtime, judge


async def ask(client: Any, key: str = TEAM_KEY, model: str = "gpt") -> Any:
    response = await client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Where is my parcel?"}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status == 200
    return response


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ('{"score": 0.25, "reason": "partial"}', 0.25),
        ('```json\n{"score": 1, "reason": "ok"}\n```', 1.0),
        ("Score: 0.7 - mostly right", 0.7),
        ('{"score": 7}', None),
        ("I cannot grade this.", None),
    ],
)
def test_parse_grade(text: str, score: float | None) -> None:
    assert parse_grade(text) == score


async def test_the_judge_grades_in_the_background_and_its_grade_is_a_signal(
    make_gateway: Callable[..., Any], fakes: Fakes
) -> None:
    fakes.anthropic.default = Ok(text='{"score": 0.2, "reason": "It does not say where."}')
    client = await make_gateway(judged_policy(fakes))
    runtime, judge = judge_of(client)
    response = await ask(client)
    request_id = response.headers["x-request-id"]
    await judge.drain()
    decision = runtime.decisions.find(request_id)
    assert decision is not None
    assert decision.quality["judge"]["score"] == 0.2
    assert decision.quality["judge"]["model"] == "claude"
    assert decision.quality["judge"]["cost_usd"] == 0.0  # the test policy's models are free
    metrics = await (await client.get("/metrics")).text()
    assert (
        'gateway_tokens_total{kind="prompt",model="claude",task_type="general",team="alpha"} 11.0'
        in metrics
    )
    assert decision.quality["heuristic"]["passed"] is True
    (graded,) = fakes.anthropic.requests
    sent = orjson.dumps(graded.body).decode()
    assert RUBRIC in sent
    assert "Where is my parcel?" in sent
    assert "Hello from the fake provider." in sent
    (row,) = [r for r in runtime.quality.snapshot()["stats"] if r["model"] == "gpt"]
    assert row["signals"]["judge"] == {**row["signals"]["judge"], "n": 1, "mean": 0.2}
    # The judge's low grade pulls the combined score below the heuristics' 1.0.
    assert row["score"] < 1.0


async def test_the_judge_never_delays_the_client(
    make_gateway: Callable[..., Any], fakes: Fakes
) -> None:
    fakes.anthropic.default = Hang(1.0, then=Ok(text='{"score": 1}'))
    client = await make_gateway(judged_policy(fakes))
    _, judge = judge_of(client)
    await ask(client)
    # The answer is back while its grading is still waiting on the slow judge.
    assert judge.pending == 1
    assert judge.graded == 0


async def test_a_failing_judge_is_logged_not_raised(
    make_gateway: Callable[..., Any], fakes: Fakes, caplog: pytest.LogCaptureFixture
) -> None:
    fakes.anthropic.default = Fail(500)
    client = await make_gateway(judged_policy(fakes))
    runtime, judge = judge_of(client)
    response = await ask(client)
    await judge.drain()
    decision = runtime.decisions.find(response.headers["x-request-id"])
    assert decision is not None
    assert decision.quality["judge"] == {"error": "upstream_overloaded"}
    assert judge.failed == 1
    assert any("judge claude failed" in r.getMessage() for r in caplog.records)
    fakes.anthropic.default = Ok(text="no number here")
    await ask(client)
    await judge.drain()
    assert judge.failed == 2
    assert judge.graded == 0


async def test_sampling_and_residency_bound_what_the_judge_sees(
    make_gateway: Callable[..., Any], fakes: Fakes
) -> None:
    fakes.anthropic.default = Ok(text='{"score": 1}')
    client = await make_gateway(judged_policy(fakes, sample=0.0))
    _, judge = judge_of(client)
    for _ in range(5):
        await ask(client)
    await judge.drain()
    assert fakes.anthropic.requests == []
    # The eu team's prompts may not leave eu/onprem: the us judge is not asked.
    client = await make_gateway(judged_policy(fakes))
    runtime, judge = judge_of(client)
    response = await ask(client, key=EU_TEAM_KEY, model="gemini")
    await judge.drain()
    assert fakes.anthropic.requests == []
    decision = runtime.decisions.find(response.headers["x-request-id"])
    assert decision is not None
    assert decision.quality["judge"] == {"skipped": "residency"}


def test_a_judge_naming_an_unknown_model_is_refused(fakes: Fakes) -> None:
    with pytest.raises(ValueError, match=r"quality.task_types.general.judge.model"):
        judged_policy(fakes, model="nope")
