"""Candidate evaluation: a task suite (YAML) with checks, run against two model aliases.

A suite is data validated with pydantic (errors name the file and the field)::

    name: support-smoke
    repeats: 2                       # runs of each task per model (a task may override)
    params: {temperature: 0, max_tokens: 256}   # OpenAI request fields for every task
    judge: {model: smart, threshold: 0.7}       # defaults of the judge checks
    rule: {tolerance: 0.05, min_samples: 5}     # the verdict rule (see eval_report)
    tasks:
      - id: capital
        task_type: qa
        prompt: "What is the capital of France? One word."   # or messages: [...]
        checks:
          - {type: contains, value: Paris}
          - {type: regex, pattern: "^\\\\W*Paris\\\\W*$"}
          - {type: exact, value: "Paris"}
          - {type: json_schema, schema: {...}}   # the answer parsed as JSON (one ``` fence ok)
          - {type: judge, rubric: "Names Paris and nothing else."}

Each run sends the task to one alias through the same ``ProviderPool`` and adapters as live
traffic (targets from the policy's catalog); a run passes when every check passes. An upstream
failure is a failed run counted as an error. ``eval_report`` turns runs into the verdict.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import jsonschema
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.core.validation import describe, load_yaml_model
from gateway.policy.catalog import Candidate, Catalog
from gateway.policy.model import Policy
from gateway.telemetry.cost import usage_cost
from providers.base import Completion
from providers.errors import ProviderError
from providers.pool import ProviderPool
from providers.schema import ChatRequest

from .grading import conversation_text, grade


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExactCheck(_Model):
    """The answer, stripped, equals ``value``."""

    type: Literal["exact"]
    value: str
    case_sensitive: bool = True


class ContainsCheck(_Model):
    """The answer contains ``value`` (every one of them, for a list)."""

    type: Literal["contains"]
    value: str | list[str] = Field(min_length=1)
    case_sensitive: bool = False


class RegexCheck(_Model):
    """``pattern`` is found in the answer (``re.search``)."""

    type: Literal["regex"]
    pattern: str
    ignore_case: bool = False

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


class JsonSchemaCheck(_Model):
    """The answer is JSON (optionally inside one ```json fence) valid against ``schema``."""

    type: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(alias="schema")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from exc
        return value


class JudgeCheck(_Model):
    """A judge model grades the answer against ``rubric`` (0..1); passes at ``threshold``."""

    type: Literal["judge"]
    rubric: str = Field(min_length=1)
    model: str | None = None  # default: the suite's judge.model
    threshold: float | None = Field(default=None, ge=0, le=1)  # default: judge.threshold


Check = Annotated[
    ExactCheck | ContainsCheck | RegexCheck | JsonSchemaCheck | JudgeCheck,
    Field(discriminator="type"),
]


class JudgeDefaults(_Model):
    model: str | None = None
    threshold: float = Field(default=0.7, ge=0, le=1)


class VerdictRule(_Model):
    """Promote when the candidate's pass rate is at least the baseline's minus ``tolerance``
    overall and on every task type with ``min_samples`` runs on each side."""

    tolerance: float = Field(default=0.05, ge=0, le=1)
    min_samples: int = Field(default=5, ge=1)


class Task(_Model):
    id: str = Field(min_length=1, max_length=128)
    task_type: str = Field(default="general", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    checks: list[Check] = Field(min_length=1)
    repeats: int | None = Field(default=None, ge=1, le=100)

    @model_validator(mode="after")
    def _one_input(self) -> Task:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self

    def body(self, defaults: Mapping[str, Any], alias: str) -> dict[str, Any]:
        """The OpenAI chat body sent for this task to ``alias`` (never streamed)."""
        messages = self.messages or [{"role": "user", "content": self.prompt}]
        return {**defaults, **self.params, "model": alias, "messages": messages, "stream": False}


class Suite(_Model):
    name: str | None = None
    repeats: int = Field(default=1, ge=1, le=100)
    params: dict[str, Any] = Field(default_factory=dict)
    judge: JudgeDefaults = Field(default_factory=JudgeDefaults)
    rule: VerdictRule = Field(default_factory=VerdictRule)
    tasks: list[Task] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Suite:
        seen: set[str] = set()
        for i, task in enumerate(self.tasks):
            if task.id in seen:
                raise ValueError(f"tasks[{i}].id: duplicate task id {task.id!r}")
            seen.add(task.id)
            try:
                ChatRequest.from_body(task.body(self.params, "eval"))
            except ValidationError as exc:
                raise ValueError(
                    f"tasks[{i}] is not a valid chat request: {describe(exc)}"
                ) from exc
            for j, check in enumerate(task.checks):
                if isinstance(check, JudgeCheck) and (check.model or self.judge.model) is None:
                    raise ValueError(
                        f"tasks[{i}].checks[{j}].model: a judge check needs a model "
                        "(here or in the suite's judge.model)"
                    )
        return self

    def judge_models(self) -> list[tuple[str, str]]:
        """(field path, alias) of every judge model the suite uses."""
        found = [("judge.model", self.judge.model)] if self.judge.model else []
        for i, task in enumerate(self.tasks):
            for j, check in enumerate(task.checks):
                if isinstance(check, JudgeCheck) and check.model:
                    found.append((f"tasks[{i}].checks[{j}].model", check.model))
        return found


class SuiteError(Exception):
    """A suite (or its aliases) that cannot be run; the message names the file and the field."""


def load_suite(path: Path) -> Suite:
    return load_yaml_model(path, Suite, SuiteError, "a suite must be a mapping with a tasks list")


# -- checks -------------------------------------------------------------------------------------


def answer_text(completion: Completion) -> str:
    """The assistant text of a completion ('' without one)."""
    choices = completion.body.get("choices") or [{}]
    content = (choices[0].get("message") or {}).get("content")
    return content if isinstance(content, str) else ""


_FENCE = re.compile(r"^\s*```[A-Za-z]*\s*\n(.*?)\n?```\s*$", re.S)


def parse_json_answer(text: str) -> Any:
    """The answer as JSON, unwrapping one Markdown code fence; raises ``ValueError``."""
    if fenced := _FENCE.match(text):
        text = fenced.group(1)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc


def check_text(check: Check, text: str) -> tuple[bool, str]:
    """A non-judge check on the answer text: (passed, why not)."""
    if isinstance(check, ExactCheck):
        got, want = text.strip(), check.value.strip()
        if not check.case_sensitive:
            got, want = got.casefold(), want.casefold()
        return got == want, "" if got == want else f"exact: not {check.value!r}"
    if isinstance(check, ContainsCheck):
        values = [check.value] if isinstance(check.value, str) else check.value
        hay = text if check.case_sensitive else text.casefold()
        missing = [v for v in values if (v if check.case_sensitive else v.casefold()) not in hay]
        return not missing, f"contains: missing {missing}" if missing else ""
    if isinstance(check, RegexCheck):
        flags = re.I if check.ignore_case else 0
        found = re.search(check.pattern, text, flags) is not None
        return found, "" if found else f"regex: no match for {check.pattern!r}"
    if isinstance(check, JsonSchemaCheck):
        try:
            value = parse_json_answer(text)
            jsonschema.validate(value, check.json_schema)
        except ValueError as exc:
            return False, f"json_schema: {exc}"
        except jsonschema.ValidationError as exc:
            return False, f"json_schema: {exc.message}"
        return True, ""
    raise TypeError(f"not a text check: {check.type}")


# -- runs ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    """One task sent once to one alias."""

    task_id: str
    task_type: str
    alias: str
    repeat: int
    passed: bool = False
    error: str | None = None  # the upstream error code, when the call failed
    failures: list[str] = field(default_factory=list)
    latency_ms: float | None = None
    cost_usd: float = 0.0
    judge_cost_usd: float = 0.0
    served_model: str | None = None


@dataclass(frozen=True, slots=True)
class EvalPlan:
    suite: Suite
    candidate: str
    baseline: str
    repeats: int | None = None  # overrides the suite's and every task's
    concurrency: int = 4
    timeout_s: float = 120.0
    regions: frozenset[str] | None = None  # every model called must be in one of them


def resolve_aliases(plan: EvalPlan, policy: Policy, catalog: Catalog) -> None:
    """Refuse unknown aliases and models outside ``plan.regions`` before any call."""
    names = [("--candidate", plan.candidate), ("--baseline", plan.baseline)]
    for where, alias in names + plan.suite.judge_models():
        candidate = catalog.by_alias.get(alias)
        if candidate is None:
            known = ", ".join(m.name for m in policy.models)
            raise SuiteError(f"{where}: unknown model alias {alias!r} (the policy has: {known})")
        if plan.regions is not None and candidate.region not in plan.regions:
            raise SuiteError(
                f"{where}: {alias!r} is served in region {candidate.region!r}, outside "
                f"--regions {','.join(sorted(plan.regions))}"
            )


async def run_suite(plan: EvalPlan, catalog: Catalog) -> list[Run]:
    """Every (task, repeat, alias) run; candidate and baseline runs interleave."""
    suite = plan.suite
    pool = ProviderPool(catalog.endpoints)
    await pool.start()
    gate = asyncio.Semaphore(plan.concurrency)
    jobs = []
    try:
        for task in suite.tasks:
            repeats = plan.repeats or task.repeats or suite.repeats
            for repeat in range(repeats):
                for alias in (plan.candidate, plan.baseline):
                    jobs.append(_run_one(plan, catalog, pool, gate, task, alias, repeat))
        return list(await asyncio.gather(*jobs))
    finally:
        await pool.close()


async def _run_one(
    plan: EvalPlan,
    catalog: Catalog,
    pool: ProviderPool,
    gate: asyncio.Semaphore,
    task: Task,
    alias: str,
    repeat: int,
) -> Run:
    run = Run(task.id, task.task_type, alias, repeat)
    candidate = catalog.by_alias[alias]
    chat = ChatRequest.from_body(task.body(plan.suite.params, alias))
    async with gate:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(plan.timeout_s):
                completion = await pool.complete(candidate.target, chat)
        except ProviderError as exc:
            run.error = exc.code
            run.failures.append(f"error: {exc.code}")
            return run
        except TimeoutError:
            run.error = "timeout"
            run.failures.append(f"error: no answer within {plan.timeout_s:g} s")
            return run
        run.latency_ms = (time.perf_counter() - started) * 1000
    run.served_model = completion.served_model
    run.cost_usd = usage_cost(candidate.model, completion.usage)
    text = answer_text(completion)
    question = conversation_text(chat)
    for check in task.checks:
        if isinstance(check, JudgeCheck):
            ok, why = await _judge(plan, catalog, pool, gate, check, question, text, run)
        else:
            ok, why = check_text(check, text)
        if not ok:
            run.failures.append(why)
    run.passed = not run.failures
    return run


async def _judge(
    plan: EvalPlan,
    catalog: Catalog,
    pool: ProviderPool,
    gate: asyncio.Semaphore,
    check: JudgeCheck,
    question: str,
    answer: str,
    run: Run,
) -> tuple[bool, str]:
    defaults = plan.suite.judge
    alias = check.model or defaults.model
    threshold = check.threshold if check.threshold is not None else defaults.threshold
    assert alias is not None  # the suite validator guarantees one
    judge: Candidate = catalog.by_alias[alias]
    async with gate:
        try:
            async with asyncio.timeout(plan.timeout_s):
                graded = await grade(pool, judge, check.rubric, question, answer)
        except (ProviderError, TimeoutError) as exc:
            code = exc.code if isinstance(exc, ProviderError) else "timeout"
            return False, f"judge: {alias} failed ({code})"
    run.judge_cost_usd += graded.cost_usd
    if graded.score is None:
        return False, f"judge: unreadable grade from {alias}"
    ok = graded.score >= threshold
    return ok, "" if ok else f"judge: {graded.score:.2f} < {threshold:g}"
