"""``gateway eval SUITE.yaml --candidate A --baseline B``: exit 0 promote, 3 hold, 2 bad input."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from gateway.policy.catalog import Catalog
from gateway.policy.model import PolicyError, load_policy
from gateway.policy.settings import Settings
from gateway.quality.eval_report import build_report, render_table, report_json
from gateway.quality.evaluation import EvalPlan, SuiteError, load_suite, resolve_aliases, run_suite

EXIT_PROMOTE = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_HOLD = 3


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "eval",
        help="run a task suite against a candidate and a baseline model; promote or hold",
        description="Runs every task of SUITE against both aliases through the providers of the "
        "policy (the same adapters as live traffic) and prints pass rates per task type, cost, "
        "latency p50/p95, errors and a verdict. Exit status: 0 promote, 3 hold, 2 bad input, "
        "1 when the run could not be made.",
    )
    parser.add_argument("suite", type=Path, metavar="SUITE.yaml")
    parser.add_argument("--candidate", required=True, help="model alias under evaluation")
    parser.add_argument("--baseline", required=True, help="model alias it must not fall behind")
    parser.add_argument("--config", type=Path, help="policy YAML (default: GATEWAY_CONFIG)")
    parser.add_argument(
        "--concurrency", type=_positive, default=4, help="calls in flight at once (default 4)"
    )
    parser.add_argument("--repeats", type=_positive, help="runs per task and model (overrides)")
    parser.add_argument("--tolerance", type=float, help="overrides the suite's rule.tolerance")
    parser.add_argument("--min-samples", type=_positive, help="overrides rule.min_samples")
    parser.add_argument(
        "--regions", help="comma-separated: refuse any model (judges included) outside them"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds per call (default 120)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _positive(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    config = args.config or Settings().config
    try:
        policy = load_policy(config)
        suite = load_suite(args.suite)
        rule = suite.rule.model_copy(
            update={
                k: v
                for k, v in {"tolerance": args.tolerance, "min_samples": args.min_samples}.items()
                if v is not None
            }
        )
        if not 0 <= rule.tolerance <= 1:
            raise SuiteError("--tolerance: must be between 0 and 1")
        regions = None
        if args.regions is not None:
            regions = frozenset(r.strip() for r in args.regions.split(",") if r.strip())
        plan = EvalPlan(
            suite=suite,
            candidate=args.candidate,
            baseline=args.baseline,
            repeats=args.repeats,
            concurrency=args.concurrency,
            timeout_s=args.timeout,
            regions=regions,
        )
        catalog = Catalog(policy, os.environ)
        resolve_aliases(plan, policy, catalog)
    except (PolicyError, SuiteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for name, state in catalog.credentials.items():
        if state == "missing":
            print(f"warning: provider {name!r} has no API key in its env variable", file=sys.stderr)
    runs = asyncio.run(run_suite(plan, catalog))
    report = build_report(str(args.suite), args.candidate, args.baseline, runs, rule)
    if args.json:
        print(orjson.dumps(report_json(report), option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_table(report))
    if all(run.error is not None for run in runs):
        print("error: every call failed; nothing was evaluated", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_PROMOTE if report.verdict == "promote" else EXIT_HOLD
