"""``POST /v1/messages/count_tokens``: the gateway's own estimate, labelled as one.

Anthropic counts with Claude's tokenizer, which is not public; the gateway routes a model name to
any provider, each with its own tokenizer. What it can say honestly is the estimate its router
uses to check a request against each candidate's context window (``estimate_tokens``: about four
characters a token, over the messages, the system prompt and the tool definitions). The answer is
Anthropic's shape, ``{"input_tokens": n}``, and says what the number is in the
``x-gateway-token-count`` header (``estimate; method=chars/4``); a client that needs exact counts
must not rely on it.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.core.runtime import REQUEST_ID, RUNTIME
from gateway.routing.router import estimate_tokens

from .ingress.anthropic_messages import ANTHROPIC_MESSAGES
from .pipeline import read_json_body

TOKEN_COUNT_METHOD = "estimate; method=chars/4"


async def count_tokens(request: web.Request) -> web.Response:
    """The estimated input tokens of a Messages request, for a model the team may call."""
    runtime = request.app[RUNTIME]
    catalog = runtime.catalog
    team = ANTHROPIC_MESSAGES.authenticate(catalog, request.headers)
    chat = ANTHROPIC_MESSAGES.parse_count(
        await read_json_body(request, runtime.settings.max_body_bytes)
    )
    catalog.resolve_route(team, chat.model)  # a model the team may not call: 403/404 as usual
    prompt_tokens, _ = estimate_tokens(chat)
    return web.Response(
        body=orjson.dumps({"input_tokens": prompt_tokens}),
        content_type="application/json",
        headers={
            "x-request-id": request[REQUEST_ID],
            "request-id": request[REQUEST_ID],
            "x-gateway-token-count": TOKEN_COUNT_METHOD,
        },
    )
