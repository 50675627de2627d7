"""``gateway eval``: suites against loopback fakes through the real CLI entry, verdicts, errors."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web

from gateway.cli.evaluate import EXIT_BAD_INPUT, EXIT_HOLD, EXIT_PROMOTE
from gateway.cli.main import main
from gateway.quality.evaluation import load_suite
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.base import Behaviour, Fail, FakeProvider, Hang, Ok
from tests.fakes.openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]


class InFlight:
    """Requests being answered at once, across the fakes that share it."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0


class Answering:
    """Mixin: answer by the first key found in the request body (prompt-aware fakes)."""

    answers: dict[str, str]
    in_flight: InFlight | None = None

    async def record(self, request: web.Request) -> tuple[Any, Behaviour]:
        counter = self.in_flight or InFlight()
        counter.now += 1
        counter.peak = max(counter.peak, counter.now)
        try:
            body, behaviour = await super().record(request)  # type: ignore[misc]
        finally:
            counter.now -= 1
        if isinstance(behaviour, Ok):
            raw = orjson.dumps(body).decode()
            for key, text in self.answers.items():
                if key in raw:
                    return body, Ok(text=text)
        return body, behaviour


class AnsweringOpenAI(Answering, FakeOpenAI):
    def __init__(self, answers: dict[str, str], region: str = "us") -> None:
        super().__init__(region=region)
        self.answers = answers


class AnsweringAnthropic(Answering, FakeAnthropic):
    def __init__(self, answers: dict[str, str], region: str = "us") -> None:
        super().__init__(region=region)
        self.answers = answers


GOOD = {
    "capital of France": "Paris",
    "annual leave": "A full-time employee gets 27 days.",
    "Extract the ticket": '```json\n{"customer": "Dana W", "priority": "high"}\n```',
    "apology": "We are sorry your order arrived two days late.",
}
# Right on QA, wrong on extraction (no JSON) and a rambling apology the judge marks down.
BAD = {
    "capital of France": "Paris",
    "annual leave": "A full-time employee gets 27 days.",
    "Extract the ticket": "The customer is Dana and it is urgent.",
    "apology": "Sorry. Stuff happens. RAMBLING",
}
JUDGE = {"RAMBLING": '{"score": 0.2, "reason": "rude"}', "sorry": '{"score": 0.9, "reason": "ok"}'}

SUITE: dict[str, Any] = {
    "name": "smoke",
    "repeats": 3,
    "params": {"temperature": 0},
    "judge": {"model": "judge", "threshold": 0.7},
    "rule": {"tolerance": 0.05, "min_samples": 3},
    "tasks": [
        {
            "id": "capital",
            "task_type": "qa",
            "prompt": "What is the capital of France?",
            "checks": [{"type": "regex", "pattern": "^Paris$"}],
        },
        {
            "id": "leave",
            "task_type": "qa",
            "messages": [
                {"role": "system", "content": "Answer from the policy."},
                {"role": "user", "content": "How many days of annual leave?"},
            ],
            "checks": [{"type": "contains", "value": ["27", "days"]}],
        },
        {
            "id": "ticket",
            "task_type": "extraction",
            "params": {"response_format": {"type": "json_object"}},
            "prompt": "Extract the ticket as JSON.",
            "checks": [
                {
                    "type": "json_schema",
                    "schema": {
                        "type": "object",
                        "required": ["customer", "priority"],
                        "properties": {"priority": {"enum": ["high"]}},
                    },
                }
            ],
        },
        {
            "id": "apology",
            "task_type": "writing",
            "prompt": "Write an apology for a late order.",
            "checks": [
                {"type": "contains", "value": "sorry"},
                {"type": "judge", "rubric": "Polite, apologises for the delay."},
            ],
        },
    ],
}


class World:
    def __init__(self, tmp: Path, candidate: dict[str, str]) -> None:
        self.tmp = tmp
        self.baseline = AnsweringOpenAI(GOOD, region="us")
        self.candidate = AnsweringAnthropic(candidate, region="us")
        self.judge = AnsweringOpenAI(JUDGE, region="eu")
        self.fakes: list[FakeProvider] = [self.baseline, self.candidate, self.judge]

    async def start(self) -> None:
        for fake in self.fakes:
            await fake.start()
        policy = {
            "providers": [
                {"name": "base", "kind": "openai", "base_url": self.baseline.api_base},
                {"name": "cand", "kind": "anthropic", "base_url": self.candidate.base_url},
                {
                    "name": "judging",
                    "kind": "openai",
                    "base_url": self.judge.api_base,
                    "region": "eu",
                },
            ],
            "models": [
                {
                    "name": "baseline",
                    "provider": "base",
                    "id": "gpt-4o-2024-08-06",
                    "price": {"input": 2.5, "output": 10},
                },
                {
                    "name": "candidate",
                    "provider": "cand",
                    "id": "claude-3-5-haiku-20241022",
                    "price": {"input": 0.8, "output": 4},
                },
                {"name": "judge", "provider": "judging", "id": "gpt-4.1-2025-04-14"},
            ],
            "teams": [{"name": "t", "key_sha256": "0" * 64}],
        }
        self.policy = self.write("policy.yaml", policy)
        self.suite = self.write("suite.yaml", SUITE)

    def write(self, name: str, data: Any) -> Path:
        path = self.tmp / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    async def stop(self) -> None:
        for fake in self.fakes:
            await fake.stop()

    def argv(self, *extra: str, suite: Path | None = None) -> list[str]:
        return [
            "eval",
            str(suite or self.suite),
            "--candidate",
            "candidate",
            "--baseline",
            "baseline",
            "--config",
            str(self.policy),
            *extra,
        ]


async def _world(tmp_path: Path, answers: dict[str, str]) -> AsyncIterator[World]:
    world = World(tmp_path, answers)
    await world.start()
    yield world
    await world.stop()


@pytest.fixture
async def good(tmp_path: Path) -> AsyncIterator[World]:
    async for world in _world(tmp_path, GOOD):
        yield world


@pytest.fixture
async def bad(tmp_path: Path) -> AsyncIterator[World]:
    async for world in _world(tmp_path, BAD):
        yield world


async def run_cli(argv: list[str]) -> int:
    # main() runs its own event loop; the fakes serve from this one.
    return await asyncio.to_thread(main, argv)


async def test_good_candidate_is_promoted(good: World, capsys: pytest.CaptureFixture[str]) -> None:
    code = await run_cli(good.argv("--concurrency", "3"))
    out = capsys.readouterr().out
    assert code == EXIT_PROMOTE, out
    assert "verdict: PROMOTE" in out
    assert "rule: promote when the candidate's pass rate is at least the baseline's minus 5" in out
    for task_type in ("qa", "extraction", "writing", "overall"):
        assert any(line.startswith(task_type) and "100.0%" in line for line in out.splitlines())
    # Every task ran 3 times on each model, through each model's own wire protocol.
    assert len(good.candidate.requests) == 12
    assert all(r.path == "/v1/messages" for r in good.candidate.requests)
    assert len(good.baseline.requests) == 12
    assert len(good.judge.requests) == 6  # one judge check per run of "apology"
    assert good.baseline.requests[0].body["model"] == "gpt-4o-2024-08-06"


async def test_failing_candidate_is_held_with_reasons(
    bad: World, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run_cli(bad.argv("--json"))
    report = orjson.loads(capsys.readouterr().out)
    assert code == EXIT_HOLD
    assert report["verdict"] == "hold"
    types = report["task_types"]
    assert types["qa"]["candidate"]["pass_rate"] == 1.0
    assert types["extraction"]["candidate"]["pass_rate"] == 0.0
    assert types["extraction"]["baseline"]["pass_rate"] == 1.0
    assert types["writing"]["candidate"]["pass_rate"] == 0.0
    assert [r.split(":")[0] for r in report["reasons"]] == ["extraction", "writing", "overall"]
    assert report["overall"]["candidate"]["runs"] == 12
    assert report["overall"]["candidate"]["passed"] == 6
    failures = report["failures"]
    assert any("json_schema" in why for why in failures["candidate ticket"])
    assert failures["candidate apology"] == ["judge: 0.20 < 0.7"]
    # Cost from usage x price: the fake reports 11 prompt and 7 completion tokens per call.
    assert report["overall"]["baseline"]["cost_usd"] == pytest.approx(
        12 * (11 * 2.5 + 7 * 10) / 1e6
    )
    assert report["overall"]["candidate"]["latency_p95_ms"] is not None
    # The upstream version that answered (the fakes echo the pinned id).
    assert report["overall"]["candidate"]["served_versions"] == ["claude-3-5-haiku-20241022"]


async def test_few_samples_do_not_decide(bad: World, capsys: pytest.CaptureFixture[str]) -> None:
    """With --min-samples above the runs per type, only the overall rate is judged."""
    code = await run_cli(bad.argv("--json", "--repeats", "1", "--min-samples", "5"))
    report = orjson.loads(capsys.readouterr().out)
    assert code == EXIT_HOLD
    assert [r.split(":")[0] for r in report["reasons"]] == ["overall"]
    assert not any(t["judged"] for t in report["task_types"].values())
    code = await run_cli(bad.argv("--repeats", "1", "--min-samples", "5", "--tolerance", "0.6"))
    assert code == EXIT_PROMOTE


async def test_concurrency_is_bounded(good: World, capsys: pytest.CaptureFixture[str]) -> None:
    shared = InFlight()
    for fake in (good.candidate, good.baseline):
        fake.in_flight = shared
        fake.default = Hang(0.05, Ok())
    code = await run_cli(good.argv("--concurrency", "2", "--repeats", "2"))
    assert code in (EXIT_PROMOTE, EXIT_HOLD), capsys.readouterr().err
    assert len(good.candidate.requests) + len(good.baseline.requests) == 16
    assert shared.peak == 2


async def test_upstream_errors_count_as_failures(
    good: World, capsys: pytest.CaptureFixture[str]
) -> None:
    good.candidate.default = Fail(529, "overloaded")
    code = await run_cli(good.argv("--json", "--repeats", "1"))
    report = orjson.loads(capsys.readouterr().out)
    assert code == EXIT_HOLD
    assert report["overall"]["candidate"]["errors"] == 4
    assert report["overall"]["baseline"]["errors"] == 0
    assert report["failures"]["candidate capital"] == ["error: upstream_overloaded"]


async def test_regions_refuse_an_out_of_region_judge_before_any_call(
    good: World, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run_cli(good.argv("--regions", "us"))
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert "judge.model: 'judge' is served in region 'eu', outside --regions us" in err
    assert not good.candidate.requests
    assert not good.baseline.requests
    assert not good.judge.requests


async def test_unknown_alias(good: World, capsys: pytest.CaptureFixture[str]) -> None:
    argv = good.argv()
    argv[argv.index("candidate")] = "nope"
    assert await run_cli(argv) == EXIT_BAD_INPUT
    assert "--candidate: unknown model alias 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tasks": []}, "tasks: List should have at least 1 item"),
        (
            {"tasks": [{"id": "a", "prompt": "x", "checks": [{"type": "fuzzy"}]}]},
            "tasks[0].checks[0]: Input tag 'fuzzy' found using 'type' does not match",
        ),
        (
            {"tasks": [{"id": "a", "prompt": "x", "checks": [{"type": "regex", "pattern": "("}]}]},
            "tasks[0].checks[0].regex.pattern: not a valid regular expression",
        ),
        (
            {
                "tasks": [
                    {
                        "id": "a",
                        "prompt": "x",
                        "checks": [{"type": "json_schema", "schema": {"type": "nope"}}],
                    }
                ]
            },
            "tasks[0].checks[0].json_schema.schema: not a valid JSON Schema",
        ),
        (
            {"tasks": [{"id": "a", "checks": [{"type": "exact", "value": "x"}]}]},
            "tasks[0]: give exactly one of prompt or messages",
        ),
        (
            {
                "judge": {},
                "tasks": [{"id": "a", "prompt": "x", "checks": [{"type": "judge", "rubric": "r"}]}],
            },
            "tasks[0].checks[0].model: a judge check needs a model",
        ),
        (
            {
                "tasks": [
                    {"id": "a", "prompt": "x", "checks": [{"type": "exact", "value": "x"}]},
                    {"id": "a", "prompt": "y", "checks": [{"type": "exact", "value": "y"}]},
                ]
            },
            "tasks[1].id: duplicate task id 'a'",
        ),
        (
            {
                "tasks": [
                    {
                        "id": "a",
                        "messages": [{"role": "robot", "content": "x"}],
                        "checks": [{"type": "exact", "value": "x"}],
                    }
                ]
            },
            "tasks[0] is not a valid chat request: messages[0]",
        ),
        ({"taks": []}, "taks: Extra inputs are not permitted"),
    ],
)
async def test_invalid_suites_name_file_and_field(
    good: World, capsys: pytest.CaptureFixture[str], change: dict[str, Any], message: str
) -> None:
    suite = good.write("broken.yaml", {**SUITE, **change})
    assert await run_cli(good.argv(suite=suite)) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith(f"error: {suite}: "), err
    assert message in err, err
    assert not good.candidate.requests


async def test_unreadable_suite(good: World, capsys: pytest.CaptureFixture[str]) -> None:
    broken = good.tmp / "bad.yaml"
    broken.write_text("tasks: [unclosed")
    assert await run_cli(good.argv(suite=broken)) == EXIT_BAD_INPUT
    assert f"{broken}: not valid YAML" in capsys.readouterr().err
    assert await run_cli(good.argv(suite=good.tmp / "missing.yaml")) == EXIT_BAD_INPUT
    assert "missing.yaml: cannot read" in capsys.readouterr().err


async def test_the_installed_command_exits_with_the_verdict(bad: World) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *bad.argv("--repeats", "1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out, err = await asyncio.wait_for(process.communicate(), 50)
    assert process.returncode == EXIT_HOLD, err.decode()
    assert b"verdict: HOLD" in out


def test_example_suite_is_valid() -> None:
    suite = load_suite(ROOT / "examples" / "eval" / "support-smoke.yaml")
    assert {t.task_type for t in suite.tasks} == {"qa", "extraction", "classification", "writing"}
