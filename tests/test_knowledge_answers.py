"""The calibrated curated-answer decision: bands from ``max_error_rate``, the shared lexical guard,
the margin, verification by the cheapest allowed model (loopback fakes, real pool), feedback that
withdraws an entry for a kind of question, and what /metrics, the decision record and the admin
API show. Embedded Qdrant Edge with the sample knowledge base and the real embedding model
(the module fixture of test_knowledge_stage.py). The decision's pure parts (bands, ``decide``,
the verdict parser, the evaluation set): tests/test_knowledge_bands.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.api.app import knowledge_verifier
from gateway.core.runtime import RUNTIME
from gateway.policy.catalog import Catalog
from gateway.policy.model import Policy, hash_key
from gateway.stages.knowledge import KnowledgeStage
from gateway.stages.knowledge_verify import Verifier
from gateway.telemetry.metrics import Metrics
from providers.pool import ProviderPool
from tests.conftest import PROVIDER_KEYS, TEAM_KEY, Fakes
from tests.fakes.base import Fail, Hang, Ok
from tests.test_knowledge_stage import kb_store, make_ctx  # noqa: F401 - the module fixture

PARAPHRASE = "how many vacation days do we get a year"  # annual-leave-days, cosine ~0.6-0.8
NEAR_MISS_NUMBER = "Do I get 30 days of annual leave?"
NEAR_MISS_GROUP = "How many days of annual leave do part-time employees get?"
FAQ_QUESTION = "How many days of annual leave do I get?"
# Bands with a verified band from the context threshold to the ceiling: everything relevant and
# below near-verbatim is verified (a verifier measured perfect on many dev negatives).
WIDE = {
    "negatives_mean": 0.6,
    "negatives_sd": 0.17,
    "verifiers": {"mini": 0.0, "flash": 0.0},
    "samples": 5000,
}


def answers_policy(fakes: Fakes, **knowledge: Any) -> Policy:
    """A cheap US model on the OpenAI fake, a cheaper EU one on the Gemini fake, and teams whose
    regions allow both, the US only, or neither."""
    return Policy.model_validate(
        {
            "providers": [
                {"name": "openai", "kind": "openai", "base_url": fakes.openai.api_base,
                 "api_key_env": "FAKE_OPENAI_KEY", "region": "us"},
                {"name": "gemini", "kind": "gemini", "base_url": fakes.gemini.base_url,
                 "api_key_env": "FAKE_GEMINI_KEY", "region": "eu"},
            ],
            "models": [
                {"name": "mini", "provider": "openai", "id": "gpt-4o-mini-2024-07-18",
                 "price": {"input": 0.15, "output": 0.6}},
                {"name": "flash", "provider": "gemini", "id": "gemini-2.0-flash-001",
                 "price": {"input": 0.1, "output": 0.4}},
            ],
            "routes": [{"name": "default", "candidates": ["mini", "flash"]}],
            "teams": [
                {"name": "alpha", "key_sha256": hash_key(TEAM_KEY)},
                {"name": "us", "key_sha256": hash_key("us"), "regions": ["us"]},
                {"name": "onprem", "key_sha256": hash_key("onprem"), "regions": ["onprem"]},
            ],
            "knowledge": {"kbs": ["company"], "calibration": {"company": WIDE}, **knowledge},
        }
    )  # fmt: skip


@pytest.fixture
async def pool(fakes: Fakes) -> Any:
    policy = answers_policy(fakes)
    started = ProviderPool(Catalog(policy, PROVIDER_KEYS).endpoints)
    await started.start()
    yield started
    await started.close()


def stage_on(policy: Policy, store: Any, pool: Any, **kw: Any) -> KnowledgeStage:
    assert policy.knowledge is not None
    return KnowledgeStage(policy.knowledge, store, verifier=Verifier(lambda: pool), **kw)


def decision_event(ctx: Any) -> dict[str, Any]:
    return next(e for e in ctx.decision.events if e["type"] == "knowledge_decision")


# -- the stage, verifying through the pool -----------------------------------------------------
async def test_a_paraphrase_is_verified_by_the_cheapest_allowed_model(
    kb_store: Any,  # noqa: F811
    embedder: Any,
    fakes: Fakes,
    pool: Any,
) -> None:
    policy = answers_policy(fakes)
    metrics = Metrics()
    stage = stage_on(policy, kb_store, pool, metrics=metrics)
    fakes.openai.push(Ok(text="yes", prompt_tokens=120, completion_tokens=1))
    ctx = make_ctx(policy, "us", PARAPHRASE, embedder=embedder)  # the US only: the OpenAI fake
    answer = await stage.before(ctx)
    assert answer is not None
    assert "27 days" in answer.body["choices"][0]["message"]["content"]
    assert ctx.headers["x-gateway-knowledge"] == "answer;verified"
    [sent] = fakes.openai.requests
    assert sent.body["max_tokens"] == 1
    assert sent.body["temperature"] == 0
    assert PARAPHRASE in sent.body["messages"][-1]["content"]
    event = decision_event(ctx)
    assert event["outcome"] == "verify"
    assert event["verification"]["answer"] == "yes"
    assert event["verification"]["model"] == "mini"
    # Its cost is the request's: 120 prompt tokens at 0.15 and one at 0.6 per million.
    assert ctx.decision.prompt_tokens == 120
    assert ctx.decision.completion_tokens == 1
    assert ctx.decision.cost_usd == pytest.approx((120 * 0.15 + 0.6) / 1e6)
    assert stage.verifications == {"yes": 1}
    assert stage.decisions["verified"] == 1
    # A team allowed every region: the cheaper EU model is asked (the Gemini fake).
    fakes.gemini.push(Ok(text="yes"))
    ctx = make_ctx(policy, "alpha", PARAPHRASE, embedder=embedder)
    assert await stage.before(ctx) is not None
    assert decision_event(ctx)["verification"]["model"] == "flash"
    assert len(fakes.gemini.requests) == 1
    assert len(fakes.openai.requests) == 1


@pytest.mark.parametrize(
    ("behaviour", "verdict"), [(Ok(text="no"), "no"), (Ok(text="Perhaps"), "unclear"),
                               (Fail(500), "error")],
)  # fmt: skip
async def test_anything_but_yes_is_not_a_direct_answer(
    kb_store: Any,  # noqa: F811
    embedder: Any,
    fakes: Fakes,
    pool: Any,
    behaviour: Any,
    verdict: str,
) -> None:
    policy = answers_policy(fakes)
    stage = stage_on(policy, kb_store, pool)
    fakes.openai.push(behaviour, behaviour)  # a 500 is not retried; a second push is harmless
    ctx = make_ctx(policy, "us", PARAPHRASE, embedder=embedder)
    assert await stage.before(ctx) is None
    assert ctx.notes["knowledge"] == "context"  # the entry still helps the model, as context
    event = decision_event(ctx)
    assert event["verification"]["answer"] == verdict
    assert event["reason"] == f"verifier: {verdict}"
    assert stage.decisions == {"no_verifier": 1}


async def test_no_model_within_the_regions_means_no_verified_band(
    kb_store: Any,  # noqa: F811
    embedder: Any,
    fakes: Fakes,
    pool: Any,
) -> None:
    policy = answers_policy(fakes)
    stage = stage_on(policy, kb_store, pool)
    ctx = make_ctx(policy, "onprem", PARAPHRASE, embedder=embedder)
    assert await stage.before(ctx) is None
    event = decision_event(ctx)
    assert event["verify_at"] == event["direct_at"]
    assert "verification" not in event
    assert fakes.openai.requests == []
    assert fakes.gemini.requests == []
    # The curated question itself is still answered: no model needed.
    ctx = make_ctx(policy, "onprem", FAQ_QUESTION, embedder=embedder)
    assert await stage.before(ctx) is not None
    assert decision_event(ctx)["outcome"] == "direct"


@pytest.mark.parametrize("question", [NEAR_MISS_NUMBER, "Can I work from the US?"])
async def test_the_guard_refuses_near_misses_before_any_model_call(
    kb_store: Any,  # noqa: F811
    embedder: Any,
    fakes: Fakes,
    pool: Any,
    question: str,
) -> None:
    policy = answers_policy(fakes)
    stage = stage_on(policy, kb_store, pool)
    ctx = make_ctx(policy, "us", question, embedder=embedder)
    assert await stage.before(ctx) is None
    assert decision_event(ctx)["reason"].startswith("guard: ")
    assert fakes.openai.requests == []


async def test_a_near_miss_the_guard_misses_is_refused_by_the_verifier(
    kb_store: Any,  # noqa: F811
    embedder: Any,
    fakes: Fakes,
    pool: Any,
) -> None:
    """ "...for part-time employees?" has no number, name or negation: only a model tells it from
    a paraphrase, and a "no" keeps the full-time answer from being served."""
    policy = answers_policy(fakes)
    stage = stage_on(policy, kb_store, pool)
    fakes.openai.push(Ok(text="no"))
    ctx = make_ctx(policy, "us", NEAR_MISS_GROUP, embedder=embedder)
    assert await stage.before(ctx) is None
    assert decision_event(ctx)["verification"]["answer"] == "no"


async def test_a_restricting_word_keeps_a_near_miss_from_the_verifier(
    kb_store: Any,  # noqa: F811
    embedder: Any,
    fakes: Fakes,
    pool: Any,
) -> None:
    """With a novelty penalty, "...for part-time employees?" (the answer speaks of full-time
    ones: "part" is the word the entry lacks) falls below the verified band: no model is asked,
    and the record says which word; the plain paraphrase is still verified."""
    calibration = {**WIDE, "novelty_penalty": 0.4}
    policy = answers_policy(fakes, calibration={"company": calibration})
    stage = stage_on(policy, kb_store, pool)
    ctx = make_ctx(policy, "us", NEAR_MISS_GROUP, embedder=embedder)
    assert await stage.before(ctx) is None
    event = decision_event(ctx)
    assert (event["reason"], event["novel"]) == ("novel: part", ["part"])
    assert event["evidence"] == pytest.approx(event["score"] - 0.4, abs=1e-3)
    assert fakes.openai.requests == []
    fakes.openai.push(Ok(text="yes"))
    ctx = make_ctx(
        policy, "us", "How many days of annual leave do I get each year?", embedder=embedder
    )
    assert await stage.before(ctx) is not None
    event = decision_event(ctx)
    assert (event["novel"], event["verification"]["answer"]) == ([], "yes")


# -- through the gateway: feedback, metrics, decision record, admin ---------------------------
async def test_low_feedback_withdraws_the_entry_for_that_kind_of_question(
    make_gateway: Any,
    fakes: Fakes,
    embedder: Any,
    kb_store: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    admin_key = "admin-secret"
    policy = answers_policy(fakes)
    client = await make_gateway(
        policy,
        embedder=embedder,
        knowledge_path=tmp_path,
        stage_timeout_s=30.0,
        admin_key_sha256=hash_key(admin_key),
    )
    runtime = client.app[RUNTIME]
    assert policy.knowledge is not None
    runtime.interceptors = (
        KnowledgeStage(
            policy.knowledge,
            kb_store,
            metrics=runtime.metrics,
            verifier=knowledge_verifier(runtime),
        ),
    )
    auth = {"Authorization": f"Bearer {TEAM_KEY}"}
    body = {"model": "default", "messages": [{"role": "user", "content": PARAPHRASE}]}
    fakes.gemini.push(Ok(text="yes"))
    response = await client.post("/v1/chat/completions", json=body, headers=auth)
    assert response.status == 200
    assert response.headers["x-gateway-source"] == "knowledge"
    assert response.headers["x-gateway-knowledge"] == "answer;verified"
    request_id = response.headers["x-request-id"]
    record = runtime.decisions.find(request_id).to_dict()
    assert record["knowledge"]["answer_decision"]["verification"]["answer"] == "yes"
    assert record["cost_usd"] > 0  # the verification, charged to the request

    feedback = {"request_id": request_id, "score": 0.0}
    response = await client.post("/v1/feedback", json=feedback, headers=auth)
    assert response.status == 200
    assert (await response.json())["knowledge_withdrawn"] is True

    # The same kind of question is no longer answered from that entry: a model answers it.
    response = await client.post("/v1/chat/completions", json=body, headers=auth)
    assert response.status == 200
    assert "x-gateway-source" not in response.headers
    record = runtime.decisions.find(response.headers["x-request-id"]).to_dict()
    assert record["knowledge"]["answer_decision"]["reason"] == "withdrawn"
    # Another kind of question still gets it.
    other = {"model": "default", "messages": [{"role": "user", "content": FAQ_QUESTION}]}
    response = await client.post("/v1/chat/completions", json=other, headers=auth)
    assert response.headers["x-gateway-source"] == "knowledge"

    response = await client.get(
        "/admin/knowledge/answers", headers={"Authorization": f"Bearer {admin_key}"}
    )
    assert response.status == 200
    report = await response.json()
    assert report["withdrawn_total"] == 1
    [entry] = report["withdrawn"]
    assert entry["question"] == FAQ_QUESTION
    assert entry["withdrawn"] == 1
    assert report["decisions"]["no_withdrawn"] == 1
    assert report["verifications"] == {"yes": 1}
    assert report["bands"]["company"]["calibrated"] is True

    admin = {"Authorization": f"Bearer {admin_key}"}
    data = await (await client.get("/dashboard/data", headers=admin)).json()
    shown = data["knowledge_answers"]
    assert shown["direct"] == {"hits": 2, "lookups": 3, "rate": pytest.approx(2 / 3)}
    assert (shown["verified"], shown["verifications"], shown["withdrawn"]) == (1, {"yes": 1}, 1)
    page = await (await client.get("/dashboard", headers=admin)).text()
    assert 'data-chart="direct-answers-hit-rate"' in page
    assert "withdrawn by feedback: 1" in page

    text = await (await client.get("/metrics")).text()
    assert "gateway_knowledge_withdrawn_total 1.0" in text
    assert 'gateway_knowledge_verifications_total{answer="yes"} 1.0' in text
    assert 'gateway_knowledge_answer_decisions_total{outcome="verified"} 1.0' in text
    assert 'gateway_knowledge_answer_decisions_total{outcome="direct"} 1.0' in text


async def test_a_slow_verifier_is_a_no(
    kb_store: Any,  # noqa: F811
    embedder: Any,
    fakes: Fakes,
    pool: Any,
) -> None:
    policy = answers_policy(fakes, verify_timeout_s=0.2)
    stage = stage_on(policy, kb_store, pool)
    fakes.openai.push(Hang(2.0, then=Ok(text="yes")))
    ctx = make_ctx(policy, "us", PARAPHRASE, embedder=embedder)
    assert await stage.before(ctx) is None
    assert decision_event(ctx)["verification"]["answer"] == "error"
    assert ctx.decision.cost_usd == 0  # nothing came back: nothing charged
