"""``POST /v1/feedback``: a client grades an answer it received.

``{"request_id": "...", "score": 0..1, "comment": "..."}``, authorised for the team that made the
request (looked up in the recent decision records). A low score is negative feedback to the
cache: a semantic hit's entry stops hitting at that similarity and its scope learns from it; an
exact hit's entry, or the entry the request's own answer was stored as, is removed (a wrong
answer, e.g. from a cheap model, is not replayed to every repeat of the question). A curated
answer the knowledge base gave directly is withdrawn for that kind of question: its entry no
longer answers questions close to this one without a model (gateway/stages/knowledge_answer.py).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.core.body import read_body
from gateway.core.errors import InvalidRequest, ModelNotFound
from gateway.core.runtime import RUNTIME
from gateway.stages.cache import CacheStage
from gateway.stages.knowledge import KnowledgeStage

WRONG_BELOW = 0.5


async def post_feedback(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    team = runtime.catalog.authenticate(request.headers.get("Authorization"))
    try:
        body: Any = orjson.loads(await read_body(request, runtime.settings.body_timeout_s))
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    request_id, score = body.get("request_id"), body.get("score")
    if not isinstance(request_id, str) or not request_id:
        raise InvalidRequest("request_id is required.", param="request_id")
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
        raise InvalidRequest("score must be a number from 0 to 1.", param="score")
    # This replica's ring, else the shared decision stream (the request may have gone elsewhere).
    decision = await runtime.decisions.lookup(request_id)
    if decision is None or decision.team != team.name:
        # Another team's request is reported as unknown: ids are not an oracle.
        raise ModelNotFound(f"No recent request {request_id!r} of yours.", code="request_not_found")
    decision.events.append({"type": "feedback", "score": score})
    # The per-(model version, task type) quality statistics; the first grade per request counts.
    quality_counted = runtime.quality.observe_feedback(decision, float(score))
    if runtime.tiers is not None:  # the tier router learns from the grade of the tier it chose
        learnt = runtime.tiers.observe(request_id, float(score))
        if not learnt and runtime.tier_sync is not None and decision.tiering:
            # Another replica answered: the grade goes to it through the outcome stream.
            runtime.tier_sync.relay_grade(
                decision.route, request_id, decision.tiering, float(score)
            )
    cache_corrected = False
    stage = next((s for s in runtime.interceptors if isinstance(s, CacheStage)), None)
    if score < WRONG_BELOW and stage is not None:
        for event in decision.events:
            kind = event.get("type")
            if kind == "cache_hit" and event.get("kind") == "semantic":
                # Another question's answer: wrong here, maybe right there. It stops hitting
                # at this similarity (the scope's policy learns from it).
                cache_corrected |= await stage.feedback(
                    event["entry"], event["scope"], event["similarity"]
                )
            elif kind == "cache_store" or (kind == "cache_hit" and event.get("kind") == "exact"):
                # The answer to this very question: no longer served to anyone.
                cache_corrected |= await stage.forget(event["entry"], event["scope"])
    # A curated answer given directly: its entry stops answering that kind of question.
    knowledge = next((s for s in runtime.interceptors if isinstance(s, KnowledgeStage)), None)
    withdrawn = False
    direct = any(event.get("type") == "knowledge_answer" for event in decision.events)
    if score < WRONG_BELOW and knowledge is not None and direct:
        withdrawn = knowledge.withdraw(request_id)
        if withdrawn:
            decision.events.append({"type": "knowledge_withdrawn"})
    return web.Response(
        body=orjson.dumps(
            {
                "ok": True,
                "cache_corrected": cache_corrected,
                "knowledge_withdrawn": withdrawn,
                "quality_counted": quality_counted,
            }
        ),
        content_type="application/json",
    )
