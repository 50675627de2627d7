"""``gateway router history``: TRAIN lines from the gateway's own decision records and feedback.

    gateway router history --decisions FILE [FILE ...] --out TRAIN.jsonl [--route NAME]
                           [--min-weight 1.0]

Each FILE holds decision records: the decision log (``GATEWAY_DECISION_LOG``, one JSON record a
line) or the body of ``GET /admin/decisions`` (a JSON array; it carries the feedback clients
posted after the request, which the log written when the request ended does not). Copies of one
request (by ``request_id``) are merged, its latest feedback winning.

A record counts when the tier router chose its tier (``tiering.served_tier``), it holds the
prompt (only a team with ``log_prompts: true`` has it recorded: others' requests are skipped and
counted, never guessed) and it is graded: the client's feedback, else the quality stage's signal
when its weight reaches ``--min-weight`` (1: feedback and judge; 0.2 lets heuristics in). The
prompt is the final user turn, as the tier router reads it. Grades of one prompt are averaged
per tier, and a TRAIN line (``{"prompt", "quality": {"cheap", "frontier"}, "graded": {...}}``)
is written for each prompt graded on both tiers; how many were graded on one tier only is
printed (exploration and repeats are what grade a prompt on both).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from gateway.tiering.router import quality_signal

TIERS = ("cheap", "frontier")


def add_parser(actions: Any) -> None:
    history = actions.add_parser(
        "history",
        help="write TRAIN lines from decision records and feedback",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    history.add_argument(
        "--decisions", type=Path, nargs="+", required=True, help="decision records (JSONL or array)"
    )
    history.add_argument("--out", type=Path, required=True, help="the TRAIN file to write")
    history.add_argument("--route", help="only this route's requests")
    history.add_argument(
        "--min-weight",
        type=float,
        default=1.0,
        help="the least trusted quality signal to use: 1 feedback and judge, 0.2 heuristics too",
    )


class HistoryError(Exception):
    """A decision file that cannot be read; the message names it."""


def _records(path: Path) -> Iterator[dict[str, Any]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HistoryError(f"{path}: cannot read: {exc.strerror}") from exc
    if data.lstrip().startswith(b"["):
        try:
            items = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise HistoryError(f"{path}: not JSON: {exc}") from exc
        yield from (item for item in items if isinstance(item, dict))
        return
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise HistoryError(f"{path}:{number}: not JSON: {exc}") from exc
        if isinstance(item, dict):
            yield item


def _final_user_text(prompt: Any) -> str | None:
    """The final user turn's text (string content, or the text parts of a list)."""
    if not isinstance(prompt, list):
        return None
    for message in reversed(prompt):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                parts = [p.get("text", "") for p in content if isinstance(p, dict)]
                return "".join(p for p in parts if isinstance(p, str))
            return None
    return None


def _feedback(record: dict[str, Any]) -> float | None:
    scores = [
        e["score"]
        for e in record.get("events") or []
        if isinstance(e, dict)
        and e.get("type") == "feedback"
        and isinstance(e.get("score"), int | float)
    ]
    return float(scores[-1]) if scores else None


def run(args: argparse.Namespace) -> int:
    try:
        return _history(args)
    except HistoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _history(args: argparse.Namespace) -> int:
    merged: dict[str, dict[str, Any]] = {}
    feedback: dict[str, float] = {}
    read = 0
    for path in args.decisions:
        for record in _records(path):
            read += 1
            request_id = record.get("request_id")
            if not isinstance(request_id, str):
                continue
            merged.setdefault(request_id, record)
            score = _feedback(record)
            if score is not None:
                feedback[request_id] = score  # the later file's, e.g. the admin export's
    counts = dict.fromkeys(("untiered", "no_prompt", "ungraded", "used"), 0)
    grades: dict[str, dict[str, list[float]]] = {}
    for request_id, record in merged.items():
        tiering = record.get("tiering") or {}
        tier = tiering.get("served_tier")
        if tier not in TIERS or (args.route and record.get("route") != args.route):
            counts["untiered"] += 1
            continue
        text = _final_user_text(record.get("prompt"))
        if text is None:
            counts["no_prompt"] += 1
            continue
        score = feedback.get(request_id)
        if score is None:
            signal = quality_signal(record.get("quality") or {})
            if signal is not None and signal[1] >= args.min_weight:
                score = signal[0]
        if score is None or not 0 <= score <= 1:
            counts["ungraded"] += 1
            continue
        counts["used"] += 1
        grades.setdefault(text, {t: [] for t in TIERS})[tier].append(score)
    written = one_tier = 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("wb") as out:
        for text, by_tier in grades.items():
            if not all(by_tier.values()):
                one_tier += 1
                continue
            line = {
                "prompt": text,
                "quality": {t: round(sum(v) / len(v), 6) for t, v in by_tier.items()},
                "graded": {t: len(v) for t, v in by_tier.items()},
            }
            out.write(orjson.dumps(line) + b"\n")
            written += 1
    print(
        f"{read} records ({len(merged)} requests): {counts['used']} graded tier choices used, "
        f"{counts['no_prompt']} without the prompt (the team does not log prompts), "
        f"{counts['ungraded']} ungraded, {counts['untiered']} without a tier choice"
        f"{' on ' + args.route if args.route else ''}; {len(grades)} prompts, {one_tier} graded "
        f"on one tier only; wrote {written} TRAIN lines to {args.out}",
        file=sys.stderr,
    )
    return 0
