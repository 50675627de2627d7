"""The eval report: pass rates per task type, cost, latency, errors, and the verdict.

Verdict rule (``VerdictRule``): **promote** when the candidate's overall pass rate is at least the
baseline's minus ``tolerance``, and so is its pass rate on every task type where both sides have
at least ``min_samples`` runs; otherwise **hold**, naming each task type (or the overall rate)
that broke the rule. Task types with fewer runs are reported and marked as not judged: a couple
of runs cannot tell a regression from noise, so they neither block nor excuse a candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.core.percentiles import nearest_rank

from .evaluation import Run, VerdictRule

_EPS = 1e-9


@dataclass(slots=True)
class Side:
    """One alias's runs over some task type (or all)."""

    runs: int = 0
    passed: int = 0
    errors: int = 0
    cost_usd: float = 0.0
    judge_cost_usd: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    versions: set[str] = field(default_factory=set)  # upstream versions that answered

    def add(self, run: Run) -> None:
        self.runs += 1
        self.passed += run.passed
        self.errors += run.error is not None
        self.cost_usd += run.cost_usd
        self.judge_cost_usd += run.judge_cost_usd
        if run.latency_ms is not None:
            self.latencies_ms.append(run.latency_ms)
        if run.served_model:
            self.versions.add(run.served_model)

    @property
    def pass_rate(self) -> float:
        return self.passed / self.runs if self.runs else 0.0

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile of successful calls' latency."""
        return nearest_rank(self.latencies_ms, q)

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "passed": self.passed,
            "pass_rate": round(self.pass_rate, 4),
            "errors": self.errors,
            "cost_usd": round(self.cost_usd, 8),
            "judge_cost_usd": round(self.judge_cost_usd, 8),
            "latency_p50_ms": _round(self.percentile(0.5)),
            "latency_p95_ms": _round(self.percentile(0.95)),
            "served_versions": sorted(self.versions),
        }


@dataclass(slots=True)
class Report:
    suite: str
    candidate: str
    baseline: str
    rule: VerdictRule
    by_type: dict[str, tuple[Side, Side]]  # task type -> (candidate, baseline)
    overall: tuple[Side, Side]
    verdict: str  # "promote" | "hold"
    reasons: list[str]
    not_judged: list[str]
    failures: dict[str, list[str]]  # "alias task_id" -> distinct failure reasons

    @property
    def rule_text(self) -> str:
        return (
            f"promote when the candidate's pass rate is at least the baseline's minus "
            f"{self.rule.tolerance * 100:g} points overall and on every task type with at "
            f"least {self.rule.min_samples} runs per model; otherwise hold"
        )


def build_report(
    suite: str, candidate: str, baseline: str, runs: Sequence[Run], rule: VerdictRule
) -> Report:
    by_type: dict[str, tuple[Side, Side]] = {}
    overall = (Side(), Side())
    failures: dict[str, list[str]] = {}
    for run in runs:
        sides = by_type.setdefault(run.task_type, (Side(), Side()))
        index = 0 if run.alias == candidate else 1
        sides[index].add(run)
        overall[index].add(run)
        for reason in run.failures:
            found = failures.setdefault(f"{run.alias} {run.task_id}", [])
            if reason not in found:
                found.append(reason)
    reasons: list[str] = []
    not_judged: list[str] = []
    for task_type, (cand, base) in sorted(by_type.items()):
        if min(cand.runs, base.runs) < rule.min_samples:
            not_judged.append(task_type)
        elif cand.pass_rate + rule.tolerance < base.pass_rate - _EPS:
            reasons.append(_shortfall(task_type, cand, base, rule))
    if overall[0].pass_rate + rule.tolerance < overall[1].pass_rate - _EPS:
        reasons.append(_shortfall("overall", *overall, rule))
    return Report(
        suite=suite,
        candidate=candidate,
        baseline=baseline,
        rule=rule,
        by_type=dict(sorted(by_type.items())),
        overall=overall,
        verdict="hold" if reasons else "promote",
        reasons=reasons,
        not_judged=not_judged,
        failures=failures,
    )


def _shortfall(name: str, cand: Side, base: Side, rule: VerdictRule) -> str:
    return (
        f"{name}: candidate {cand.pass_rate:.1%} < baseline {base.pass_rate:.1%} "
        f"- {rule.tolerance * 100:g} pts (n={cand.runs}/{base.runs})"
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def render_table(report: Report) -> str:
    """The side-by-side table a person reads."""
    cand, base = report.candidate, report.baseline
    width = max([len("task type"), len("overall"), *(len(t) for t in report.by_type)])
    head = f"{'task type':<{width}}  {'runs':>9}  {cand[:12]:>12}  {base[:12]:>12}  {'delta':>7}"
    lines = [
        f"suite {report.suite}: candidate {cand} vs baseline {base}",
        "",
        head,
        "-" * len(head),
    ]
    rows = [*report.by_type.items(), ("overall", report.overall)]
    for name, (c, b) in rows:
        mark = "  (not judged: too few runs)" if name in report.not_judged else ""
        lines.append(
            f"{name:<{width}}  {f'{c.runs}/{b.runs}':>9}  {c.pass_rate:>12.1%}  "
            f"{b.pass_rate:>12.1%}  {(c.pass_rate - b.pass_rate) * 100:>+7.1f}{mark}"
        )
    c, b = report.overall
    lines += [
        "",
        f"{'':<18}{cand[:12]:>12}  {base[:12]:>12}",
        f"{'cost (USD)':<18}{c.cost_usd:>12.6f}  {b.cost_usd:>12.6f}",
        f"{'judge cost (USD)':<18}{c.judge_cost_usd:>12.6f}  {b.judge_cost_usd:>12.6f}",
        f"{'latency p50 (ms)':<18}{_ms(c.percentile(0.5)):>12}  {_ms(b.percentile(0.5)):>12}",
        f"{'latency p95 (ms)':<18}{_ms(c.percentile(0.95)):>12}  {_ms(b.percentile(0.95)):>12}",
        f"{'errors':<18}{c.errors:>12}  {b.errors:>12}",
        f"served versions: {cand}: {', '.join(sorted(c.versions)) or '-'}; "
        f"{base}: {', '.join(sorted(b.versions)) or '-'}",
    ]
    if report.failures:
        lines += ["", "failures:"]
        for key, why in sorted(report.failures.items()):
            lines.append(f"  {key}: {'; '.join(why)[:200]}")
    lines += ["", f"verdict: {report.verdict.upper()}"]
    lines += [f"  {reason}" for reason in report.reasons]
    lines.append(f"rule: {report.rule_text}")
    return "\n".join(lines)


def report_json(report: Report) -> dict[str, Any]:
    """The report for machines (``gateway eval --json``)."""
    return {
        "suite": report.suite,
        "candidate": report.candidate,
        "baseline": report.baseline,
        "verdict": report.verdict,
        "reasons": report.reasons,
        "rule": {**report.rule.model_dump(), "text": report.rule_text},
        "task_types": {
            name: {
                "candidate": c.to_dict(),
                "baseline": b.to_dict(),
                "judged": name not in report.not_judged,
            }
            for name, (c, b) in report.by_type.items()
        },
        "overall": {
            "candidate": report.overall[0].to_dict(),
            "baseline": report.overall[1].to_dict(),
        },
        "failures": report.failures,
    }
