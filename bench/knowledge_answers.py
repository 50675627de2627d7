"""Curated answers: paraphrases served directly, must-not questions never (``--answers``).

The sample knowledge base (examples/kb/policies, 10 curated FAQ entries) is ingested with the real
embedding model into embedded Qdrant Edge; every question of the evaluation set
(bench/data/knowledge_eval.jsonl: paraphrases of the FAQ questions in varied styles, and
questions the FAQ must not answer: off-topic, same topic but unanswered, near-misses changing a
number, group of people, place or negation) goes through the real ``KnowledgeStage.before``, its
verifications through the real ``ProviderPool`` to one of:

- ``none``: no verifier (the unverified band only);
- ``fake``: a loopback OpenAI-compatible fake that answers yes exactly when the question is a
  paraphrase of the entry asked about: a perfect verifier, an oracle reading the labels, so its
  figures are an upper bound (what the guard and the bands allow), not the system's, and its
  latency is the gateway's and the wire's;
- ``noisy:FY/FN`` (e.g. ``noisy:0.05/0.10``): the same fake with a realistic error rate, standing
  for a cheap cloud model: it says yes to a must-not pair with probability FY and no to a
  paraphrase with probability FN, drawn per (question, FAQ question) pair from ``--seed``, so the
  same pair always gets the same answer (temperature 0) and the dev split measures FY as a real
  verifier's would be measured;
- ``local``: SmolLM2-135M-Instruct through llama.cpp (``gateway.cli.localmodel``).

It prints, per class and kind, the questions, direct answers (verified or not), wrong direct
answers (another entry's answer, or any answer to a must-not question) and verification calls,
then the added latency of a verified answer (p50/p95 of the verification call).

``--calibrate`` runs the dev split (bench/data/knowledge_dev.jsonl, disjoint from the evaluation
set) instead and prints the kb's ``calibration`` block (bench/knowledge_calibrate.py): the novelty
penalty fitted there, the mean and sd of the evidence of the dev negatives the guard lets through
and how many they are, and the verifier's false-yes rate on the dev negatives. ``--split dev``
runs ``--answers`` on the dev split (in-sample: for tuning, never the figure to report)::

    python -m bench.knowledge --answers [--verifier none,fake,noisy:0.05/0.10,local]
                                        [--max-error-rate 0.01] [--seed 0] [--split eval|dev]
    python -m bench.knowledge --calibrate [--verifier fake|noisy:FY/FN|local]
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from bench.knowledge_calibrate import calibrate
from gateway.core.context import RequestContext
from gateway.core.decision import Decision
from gateway.policy.catalog import Catalog
from gateway.policy.model import KnowledgeCalibration, Policy, hash_key
from gateway.routing.router import allowed_regions
from gateway.stages.knowledge import KnowledgeStage
from gateway.stages.knowledge_verify import Verifier
from providers.pool import ProviderPool
from providers.schema import ChatRequest
from retrieval.ingest import ingest
from retrieval.store import KnowledgeStore
from retrieval.stores import open_store

DATA = Path(__file__).resolve().parent / "data"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "kb"
FAQ = EXAMPLES / "policies" / "frequent-questions.jsonl"
FAKE_MODEL_ID = "verifier-fake-2024-01-01"


def load(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.strip()]


def faq_entries() -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in load(FAQ)}


def questions_of() -> dict[str, str]:
    """Each curated entry's question by id."""
    return {key: e["question"] for key, e in faq_entries().items()}


# -- the loopback label verifiers ---------------------------------------------------------------
def draw(seed: int, user: str, faq_question: str) -> float:
    """A uniform number in [0, 1) fixed by the seed and the pair: the same pair always gets the
    same answer, as from a model at temperature 0, and no draw depends on the order asked."""
    digest = hashlib.blake2b(f"{seed}\0{user}\0{faq_question}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class LabelVerifier:
    """An OpenAI-compatible fake on 127.0.0.1 that answers from the labels of the question set it
    is given: yes to a paraphrase of the asked entry, no otherwise; then, with ``false_yes`` and
    ``false_no`` > 0, wrong on that share of the no and the yes pairs (a noisy cheap model).
    With both 0 it is the oracle (a perfect verifier)."""

    def __init__(
        self,
        questions: list[dict[str, Any]],
        false_yes: float = 0.0,
        false_no: float = 0.0,
        seed: int = 0,
    ) -> None:
        faq = faq_entries()
        self._yes = {
            (q["question"], faq[q["entry"]]["question"])
            for q in questions
            if q["class"] == "paraphrase"
        }
        self.false_yes, self.false_no, self.seed = false_yes, false_no, seed
        self.calls = 0
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def says_yes(self, user: str, faq_question: str) -> bool:
        """The verdict on one pair: the label, flipped with the configured error rate."""
        truth = (user, faq_question) in self._yes
        flip = draw(self.seed, user, faq_question) < (self.false_no if truth else self.false_yes)
        return truth != flip

    async def _complete(self, request: web.Request) -> web.Response:
        body = await request.json()
        text = body["messages"][-1]["content"]
        user = text.split("User question: ", 1)[1].split("\n\nFAQ question: ", 1)[0]
        faq_question = text.split("FAQ question: ", 1)[1].split("\n", 1)[0]
        self.calls += 1
        word = "yes" if self.says_yes(user, faq_question) else "no"
        reply = {
            "id": f"chatcmpl-{self.calls}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": word},
                    "finish_reason": "length",
                }
            ],
            "usage": {
                "prompt_tokens": len(text) // 4 + 40,
                "completion_tokens": 1,
                "total_tokens": len(text) // 4 + 41,
            },
        }
        return web.json_response(reply)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def noisy_rates(kind: str) -> tuple[float, float]:
    """(false_yes, false_no) of ``noisy:FY/FN``; ``fake`` is (0, 0)."""
    if kind == "fake":
        return 0.0, 0.0
    try:
        fy, fn = (float(x) for x in kind.removeprefix("noisy:").split("/"))
    except ValueError:
        raise SystemExit(f"bad verifier {kind!r}: noisy:FY/FN, e.g. noisy:0.05/0.10") from None
    if not (0 <= fy <= 1 and 0 <= fn <= 1):
        raise SystemExit(f"bad verifier {kind!r}: rates between 0 and 1")
    return fy, fn


@asynccontextmanager
async def verifier_endpoint(
    kind: str, questions: list[dict[str, Any]], root: Path, seed: int = 0
) -> AsyncIterator[tuple[str, str] | None]:
    """(base_url, model id) of the verifier ``kind``, or None for ``none``."""
    if kind == "none":
        yield None
    elif kind == "fake" or kind.startswith("noisy:"):
        fy, fn = noisy_rates(kind)
        fake = LabelVerifier(questions, false_yes=fy, false_no=fn, seed=seed)
        await fake.start()
        try:
            yield fake.base_url, FAKE_MODEL_ID
        finally:
            await fake.stop()
    elif kind == "local":
        from gateway.cli.localmodel import MODEL_ALIAS, LocalModelServer, free_port

        server = LocalModelServer(root / "local-model", port=free_port(), n_ctx=2048)
        (root / "local-model").mkdir(exist_ok=True)
        await asyncio.to_thread(server.start)
        try:
            yield server.base_url, MODEL_ALIAS
        finally:
            await asyncio.to_thread(server.stop)
    else:
        raise SystemExit(f"unknown verifier {kind!r}: none, fake, noisy:FY/FN or local")


def bench_policy(endpoint: tuple[str, str] | None, **knowledge: Any) -> Policy:
    base_url, model = endpoint or ("http://127.0.0.1:9/v1", "unused-2024-01-01")
    return Policy.model_validate(
        {
            "providers": [
                {
                    "name": "verifier",
                    "kind": "openai",
                    "base_url": base_url,
                    "region": "onprem",
                    "timeouts": {"connect": 2, "first_byte": 60},
                }
            ],
            "models": [{"name": "cheap", "provider": "verifier", "id": model}],
            "routes": [{"name": "default", "candidates": ["cheap"]}],
            "teams": [{"name": "bench", "key_sha256": hash_key("bench"), "regions": ["onprem"]}],
            "knowledge": {"kbs": ["company"], **knowledge},
        }
    )


def context_for(catalog: Catalog, question: str, embedder: Any, n: int) -> RequestContext:
    team = catalog.policy.teams[0]
    chat = ChatRequest.from_body(
        {"model": "default", "messages": [{"role": "user", "content": question}]}
    )
    route = catalog.resolve_route(team, "default")
    return RequestContext(
        request_id=f"bench-{n}",
        started=time.perf_counter(),
        team=team,
        route=route,
        chat=chat,
        task_type=route.task_type,
        deadline=asyncio.get_running_loop().time() + 60,
        deadline_s=60,
        decision=Decision(request_id=f"bench-{n}", team=team.name, route=route.name, task_type=""),
        allowed_regions=allowed_regions(team.regions, None),
        embedder=embedder,
    )


@dataclass
class Tally:
    """One class/kind row."""

    questions: int = 0
    direct: int = 0
    verified: int = 0  # of the direct answers, those a model confirmed
    wrong: int = 0
    verifications: int = 0
    verify_yes: int = 0
    verify_ms: list[float] = field(default_factory=list)


def entry_of(content: str, faq: dict[str, dict[str, Any]]) -> str | None:
    return next((k for k, e in faq.items() if content.startswith(e["answer"])), None)


async def run_set(
    store: KnowledgeStore,
    embedder: Any,
    questions: list[dict[str, Any]],
    endpoint: tuple[str, str] | None,
    knowledge: dict[str, Any],
) -> tuple[dict[tuple[str, str], Tally], dict[str, Any]]:
    policy = bench_policy(endpoint, **knowledge)
    catalog = Catalog(policy, {})
    pool = ProviderPool(catalog.endpoints)
    await pool.start()
    verifier = Verifier(lambda: pool) if endpoint is not None else None
    assert policy.knowledge is not None
    stage = KnowledgeStage(policy.knowledge, store, verifier=verifier)
    faq = faq_entries()
    tallies: dict[tuple[str, str], Tally] = defaultdict(Tally)
    try:
        for n, q in enumerate(questions):
            ctx = context_for(catalog, q["question"], embedder, n)
            answer = await stage.before(ctx)
            for key in ((q["class"], "all"), (q["class"], q["kind"])):
                t = tallies[key]
                t.questions += 1
                event = next(
                    (e for e in ctx.decision.events if e["type"] == "knowledge_decision"), {}
                )
                check = event.get("verification")
                if check:
                    t.verifications += 1
                    t.verify_yes += check["answer"] == "yes"
                    t.verify_ms.append(check["ms"])
                if answer is None:
                    continue
                t.direct += 1
                t.verified += bool(check)
                content = answer.body["choices"][0]["message"]["content"]
                served = entry_of(content, faq)
                t.wrong += q["class"] == "must_not" or served != q["entry"]
    finally:
        await pool.close()
    return tallies, stage.answer_report()


def render(name: str, tallies: dict[tuple[str, str], Tally]) -> str:
    header = (
        f"{'class':<11}{'kind':<12}{'n':>4}{'direct':>8}{'rate':>7}{'verified':>9}{'wrong':>7}"
        f"{'verify calls':>13}{'yes':>5}"
    )
    lines = [f"verifier: {name}", header, "-" * len(header)]
    order = sorted(tallies, key=lambda k: (k[0] != "paraphrase", k[1] != "all", k[1]))
    for cls, kind in order:
        t = tallies[(cls, kind)]
        rate = f"{100 * t.direct / t.questions:5.1f}%" if t.questions else "-"
        lines.append(
            f"{cls:<11}{kind:<12}{t.questions:>4}{t.direct:>8}{rate:>7}{t.verified:>9}"
            f"{t.wrong:>7}{t.verifications:>13}{t.verify_yes:>5}"
        )
    return "\n".join(lines)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def ingested(root: Path, embedder: Any) -> KnowledgeStore:
    store = open_store(collection="answers", url=None, path=root / "kb")
    await ingest(
        [EXAMPLES / "policies"], store=store, embedder=embedder, kb="company", teams=["*"],
        root=EXAMPLES,
    )  # fmt: skip
    return store


def label(name: str) -> str:
    """A verifier's name in the summary: the oracle is never presented as the system's figure."""
    if name == "fake":
        return "perfect verifier (upper bound)"
    if name.startswith("noisy:"):
        fy, fn = noisy_rates(name)
        return f"noisy fake, {100 * fy:g} % false yes / {100 * fn:g} % false no"
    return {"none": "none", "local": "SmolLM2-135M"}.get(name, name)


async def main(args: Any) -> int:
    from cache.embedder import SentenceEmbedder

    embedder = SentenceEmbedder()
    verifiers = [v for v in args.verifier.split(",") if v]
    questions = load(DATA / f"knowledge_{args.split}.jsonl")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-answers-") as tmp:
            root = Path(tmp)
            store = await ingested(root, embedder)
            try:
                dev = load(DATA / "knowledge_dev.jsonl")
                if args.calibrate:
                    async with verifier_endpoint(verifiers[0], dev, root, args.seed) as end:
                        found = await calibrate(
                            store, embedder, end, dev, bench_policy(end), questions_of(),
                            args.max_error_rate,
                        )  # fmt: skip
                    print("knowledge:\n  calibration:\n    company:")
                    print("      " + orjson.dumps(found.model_dump()).decode())
                    return 0
                summary: list[str] = []
                for name in verifiers:
                    knowledge: dict[str, Any] = {
                        "max_error_rate": args.max_error_rate,
                        "verify_timeout_s": args.verify_timeout,
                        "timeout_s": 10.0,  # a shared machine: never skip a lookup here
                        "retry_after_s": 0.0,
                    }
                    print(f"... verifier {name}", file=sys.stderr, flush=True)
                    async with verifier_endpoint(name, dev + questions, root, args.seed) as end:
                        if args.calibration:
                            found = KnowledgeCalibration.model_validate_json(args.calibration)
                        else:  # the dev split, with this verifier
                            found = await calibrate(
                                store, embedder, end, dev, bench_policy(end), questions_of(),
                                args.max_error_rate,
                            )  # fmt: skip
                        print(f"calibration (dev split): {found.model_dump_json()}")
                        knowledge["calibration"] = {"company": found.model_dump()}
                        tallies, report = await run_set(store, embedder, questions, end, knowledge)
                    print(render(name, tallies))
                    row = report["bands"]["company"]
                    bands = row["verifier:cheap"] if end else row["no_verifier"]
                    print(f"bands at max_error_rate {args.max_error_rate}: {bands}")
                    calls = [
                        ms for (cls, kind), t in tallies.items() if kind == "all"
                        for ms in t.verify_ms
                    ]  # fmt: skip
                    if calls:
                        p50, p95 = percentile(calls, 50), percentile(calls, 95)
                        print(
                            f"added latency of a verification ({len(calls)} calls): "
                            f"p50 {p50:.1f} ms, p95 {p95:.1f} ms"
                        )
                    para = tallies[("paraphrase", "all")]
                    bad = tallies[("must_not", "all")]
                    rate = para.direct / para.questions
                    wrong = para.wrong + bad.wrong
                    verdict = "met" if rate >= 0.7 and wrong == 0 and bad.direct == 0 else "MISSED"
                    print(
                        f"target: >= 70 % paraphrases direct ({100 * rate:.1f} %), 0 wrong "
                        f"({wrong}), 0 must-not direct ({bad.direct}): {verdict}"
                        + (" (upper bound: a perfect verifier)" if name == "fake" else "")
                        + "\n"
                    )
                    summary.append(
                        f"| {label(name)} | {found.verifiers.get('cheap', '-')} | "
                        f"{bands['verify_at']} | {para.direct} / {para.questions} "
                        f"({100 * rate:.1f} %) | {wrong} | {bad.direct} / {bad.questions} | "
                        f"{para.verifications} / {bad.verifications} | {verdict} |"
                    )
                print(f"summary (seed {args.seed}, max_error_rate {args.max_error_rate}):")
                print(
                    "| verifier | false-yes (dev) | verify_at | paraphrases direct | wrong direct"
                    " | must-not direct | verification calls (para / must-not) | target |"
                )
                print("|---|---|---|---|---|---|---|---|")
                print("\n".join(summary))
            finally:
                await store.close()
    finally:
        await embedder.close()
    return 0
