"""``POST /v1/embeddings``: OpenAI's embeddings API, routed by the same policy as chat.

auth -> validate -> resolve an embedding route -> team limits -> plan (residency, breakers,
embargoes, the route's order) -> attempts with fallback -> response -> charge and record.
There are no interceptors (a cached or curated *answer* means nothing here) and no tiers.

Each attempt sends the whole input list: ``ProviderPool.embed`` batches it through in the
provider's largest batches (OpenAI-compatible servers, Ollama's ``/api/embed``, Gemini's
``batchEmbedContents``); a candidate of the ``builtin`` provider is answered in-process by the
gateway's own embedding model (``settings.embedder``, all-MiniLM-L6-v2), so the embedded setup
serves embeddings with no provider at all. Token counts are the provider's where it reports them,
the builtin model's tokenizer for it, else the gateway's estimate (Gemini: ~4 characters a token;
the decision record says ``usage_estimated``). Vectors go back as floats or base64
(``encoding_format``) whatever the provider sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from aiohttp import web
from pydantic import ValidationError

from cache.embedder import Embedder
from gateway.core.context import RequestContext
from gateway.core.errors import GatewayError, InvalidRequest
from gateway.core.runtime import RUNTIME
from gateway.core.validation import describe
from gateway.policy.catalog import Candidate
from gateway.routing.attempts import Outcome, run_attempts
from gateway.routing.fairness import admitted
from gateway.telemetry.cost import charge
from providers.base import Completion, Usage
from providers.embeddings import (
    EmbeddingRequest,
    Embeddings,
    Rows,
    Vectors,
    estimate_tokens,
    render_rows,
)
from providers.errors import UnsupportedRequest, UpstreamConnectionError, UpstreamError
from providers.schema import ChatRequest

from .pipeline import failed, new_context, read_json_body, settle
from .responses import gateway_headers

API = "openai.embeddings"


async def embeddings(request: web.Request) -> web.Response:
    """``POST /v1/embeddings``."""
    runtime = request.app[RUNTIME].snapshot()  # a reload mid-request does not change it
    catalog = runtime.catalog
    team = catalog.authenticate(request.headers.get("Authorization"))
    embed = parse_embedding_request(await read_json_body(request, runtime.settings.max_body_bytes))
    route = catalog.resolve_route(team, embed.model, kind="embedding")
    chat = as_chat(embed)
    ctx = new_context(request, runtime, team, route, chat, API)
    try:
        if runtime.limits is not None:
            ctx.headers.update(await runtime.limits.admit(team))
        plan = runtime.router.plan(
            route,
            team,
            chat,
            task_type=ctx.task_type,
            regions=ctx.notes["requested_regions"],
            strategy=route.strategy,
        )
        ctx.decision.candidates = plan.verdicts

        async def attempt(candidate: Candidate) -> Outcome[Embeddings]:
            if candidate.provider.kind == "builtin":
                result = await embed_builtin(runtime.embedder, candidate, embed)
            else:
                result = await runtime.pool.embed(candidate.target, embed)
            return Outcome(result, result.served_model, wire_s=result.wire_s)

        with admitted(runtime.concurrency, team):  # max_in_flight, the team's slot queue
            result, candidate = await run_attempts(runtime, ctx, plan, attempt)
        response = _respond(ctx, embed, result, candidate)
    except GatewayError as exc:
        failed(ctx, exc)
        raise
    finally:
        settle(runtime, ctx, chat)
    return response


def parse_embedding_request(body: dict[str, Any]) -> EmbeddingRequest:
    """``body`` validated; ``InvalidRequest`` names the first field at fault."""
    try:
        return EmbeddingRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]["loc"]
        param = ".".join(str(p) for p in first) if first else None
        raise InvalidRequest(describe(exc), param=param) from exc


def as_chat(embed: EmbeddingRequest) -> ChatRequest:
    """The request the router plans with and the decision record keeps.

    The router checks the longest input against each candidate's window (an embedding model's
    window applies to each input, not to their sum) with one output token; ``raw`` holds every
    input as a user message, which is what the record hashes (and keeps, for a team that logs
    prompts). (Validating this small body is cheaper than pydantic's ``model_construct``.)
    """
    texts = embed.texts
    longest = max(texts, key=len)
    chat = ChatRequest.from_body(
        {"model": embed.model, "messages": [{"role": "user", "content": longest}], "max_tokens": 1}
    )
    chat._raw = {"model": embed.model, "messages": [{"role": "user", "content": t} for t in texts]}
    return chat


async def embed_builtin(
    embedder: Embedder | None, candidate: Candidate, embed: EmbeddingRequest
) -> Embeddings:
    """The gateway's own model, in-process: each text through the embedder's worker (the same
    vectors the cache computes, whatever else is in the batch); its time counts as upstream."""
    provider = candidate.provider.name
    if embedder is None:
        raise UpstreamConnectionError(
            "the gateway's embedding model is not loaded (it loads at start when the policy has "
            "a builtin provider: restart after adding one)",
            provider=provider,
        )
    if embed.dimensions is not None and embed.dimensions != embedder.dim:
        raise UnsupportedRequest(
            f"{embedder.name} makes {embedder.dim}-dimensional vectors; it cannot make "
            f"{embed.dimensions}",
            param="dimensions",
        )
    texts = embed.texts
    started = time.perf_counter()
    try:
        rows = await asyncio.gather(*(embedder.embed(text) for text in texts))
        tokens = await asyncio.to_thread(_count_tokens, embedder, texts)
    except Exception as exc:  # the model failed (closed, out of memory): try the next candidate
        raise UpstreamError(
            f"the gateway's embedding model failed: {type(exc).__name__}: {exc}", provider=provider
        ) from exc
    vectors: Vectors = np.stack(rows).astype(np.float32, copy=False)
    return Embeddings(vectors, embedder.name, tokens, wire_s=time.perf_counter() - started)


def _count_tokens(embedder: Embedder, texts: Sequence[str]) -> int:
    """Word pieces by the model's own tokenizer, when it can count; else the estimate."""
    window = getattr(embedder, "window", None)
    if window is None:
        return estimate_tokens(texts)
    return sum(int(window.count(text)) for text in texts)


def _respond(
    ctx: RequestContext, embed: EmbeddingRequest, result: Embeddings, candidate: Candidate
) -> web.Response:
    usage = Usage(prompt_tokens=result.prompt_tokens)
    charge(ctx.decision, candidate.model, usage)
    if result.estimated:
        ctx.decision.events.append({"type": "usage_estimated", "method": "chars/4"})
    served = Completion(body={}, served_model=result.served_model, usage=usage, finish_reason=None)
    body = render_embeddings(
        result.vectors,
        model=result.served_model,
        prompt_tokens=result.prompt_tokens,
        encoding=embed.encoding_format,
    )
    return web.Response(
        body=body, content_type="application/json", headers=gateway_headers(ctx, served, candidate)
    )


def render_embeddings(
    vectors: Vectors | Rows, *, model: str, prompt_tokens: int, encoding: str
) -> bytes:
    """OpenAI's ``list`` of ``embedding`` objects; base64 is little-endian float32, as OpenAI
    sends it. Rows already in the client's encoding pass through as the provider sent them."""
    data = [
        {"object": "embedding", "index": index, "embedding": row}
        for index, row in enumerate(render_rows(vectors, encoding))
    ]
    body = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
