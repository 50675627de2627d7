"""OpenAI chat completions, and every server that speaks it.

OpenAI, xAI Grok, Moonshot Kimi, OpenRouter, vLLM and llama.cpp's server are configuration of this
one adapter (base URL, key, extra headers), not copies. The client already speaks this format, so
the request is the client's own body with the pinned model id put in (and, by the model's
policy, a default ``max_tokens`` and system turns folded into user turns: providers/shaping.py);
the answer is checked for shape and handed back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from .base import (
    Completion,
    Framing,
    StreamEvent,
    StreamState,
    Target,
    UpstreamRequest,
    Usage,
    classify_status,
    load_json,
    new_completion_id,
    parse_retry_after,
)
from .embeddings import MAX_INPUTS, EmbeddingRequest, Embeddings, check_rows, estimate_tokens
from .errors import ContentBlocked, UpstreamError, UpstreamProtocolError
from .schema import ChatRequest
from .shaping import fold_system_messages, folds_system

# Error codes OpenAI (and Azure OpenAI) use for a moderation refusal.
_BLOCK_CODES = frozenset({"content_policy_violation", "content_filter"})
_DONE = b"[DONE]"


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
    )


def _error_fields(payload: Any) -> tuple[str, str | None]:
    """(message, code) out of ``{"error": {...}}``; vLLM and llama.cpp use the same shape."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            return str(error.get("message") or ""), str(code) if code is not None else None
        if isinstance(error, str):  # some compatible servers send {"error": "text"}
            return error, None
    return "", None


class OpenAIAdapter:
    """Pass-through translation for OpenAI-compatible chat completions."""

    framing: Framing = "sse"

    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        body = dict(request.raw)
        body["model"] = target.model
        options = target.options
        if request.output_limit is None and (limit := options.get("default_max_tokens")):
            # max_tokens, not max_completion_tokens: what every compatible server reads.
            body["max_tokens"] = limit
        if folds_system(options):
            body["messages"] = fold_system_messages(body["messages"])
        if request.stream and target.options.get("stream_usage", True):
            # Always ask for usage: cost accounting needs it whether or not the client does.
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            body["stream_options"] = options
        headers = {"Content-Type": "application/json", **target.headers}
        if target.api_key:
            headers["Authorization"] = f"Bearer {target.api_key}"
        if request.stream:
            headers["Accept"] = "text/event-stream"
        return UpstreamRequest(
            url=f"{target.base_url}/chat/completions",
            headers=headers,
            body=orjson.dumps(body),
            stream=request.stream,
        )

    def parse_response(self, body: bytes, target: Target) -> Completion:
        payload = load_json(body, target.provider)
        try:
            choice = payload["choices"][0]
            message = choice["message"]
            finish_reason = choice.get("finish_reason")
            served = str(payload.get("model") or target.model)
        except (KeyError, IndexError, TypeError) as exc:
            raise UpstreamProtocolError(
                f"{target.provider} returned a completion without choices[0].message",
                provider=target.provider,
            ) from exc
        if finish_reason == "content_filter" and not message.get("content"):
            raise ContentBlocked(f"{target.provider} filtered the answer", provider=target.provider)
        usage = _usage(payload.get("usage"))
        if "id" not in payload:
            payload["id"] = new_completion_id()
        payload["object"] = "chat.completion"
        payload["usage"] = usage.to_openai()
        return Completion(
            body=payload, served_model=served, usage=usage, finish_reason=finish_reason
        )

    def new_stream(self, target: Target) -> StreamState:
        return StreamState(id=new_completion_id(), model=target.model, provider=target.provider)

    def parse_stream_event(self, event: StreamEvent, state: StreamState) -> list[dict[str, Any]]:
        data = event.data
        if data == _DONE:
            state.done = True
            return []
        payload = load_json(data, state.provider)
        if not isinstance(payload, dict):
            raise UpstreamProtocolError(
                "stream event is not a JSON object", provider=state.provider
            )
        if "error" in payload:
            message, code = _error_fields(payload)
            raise _classify(500, message, code, provider=state.provider, retry_after=None)
        if payload.get("usage"):
            state.usage = _usage(payload["usage"])
        if model := payload.get("model"):
            state.served_model = str(model)
        if chunk_id := payload.get("id"):
            state.id = str(chunk_id)
        choices = payload.get("choices")
        if not choices:
            return []  # the usage-only chunk: the gateway emits its own when asked
        if not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise UpstreamProtocolError(
                "stream chunk has malformed choices", provider=state.provider
            )
        finish = choices[0].get("finish_reason")
        if finish:
            state.finish_reason = str(finish)
        if not state.role_sent:
            state.role_sent = bool((choices[0].get("delta") or {}).get("role"))
        payload["object"] = "chat.completion.chunk"
        payload.pop("usage", None)
        return [payload]

    # -- embeddings (providers.embeddings.EmbeddingAdapter) ----------------------------------
    max_batch = MAX_INPUTS

    def build_embedding_request(
        self, texts: Sequence[str], request: EmbeddingRequest, target: Target
    ) -> UpstreamRequest:
        """``POST {base_url}/embeddings`` in the client's encoding (base64 needs no float parse)."""
        body: dict[str, Any] = {
            "model": target.model,
            "input": list(texts),
            "encoding_format": request.encoding_format,
        }
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        if request.user is not None:
            body["user"] = request.user
        headers = {"Content-Type": "application/json", **target.headers}
        if target.api_key:
            headers["Authorization"] = f"Bearer {target.api_key}"
        return UpstreamRequest(
            url=f"{target.base_url}/embeddings",
            headers=headers,
            body=orjson.dumps(body),
            stream=False,
        )

    def parse_embeddings(self, body: bytes, target: Target, texts: Sequence[str]) -> Embeddings:
        """An OpenAI ``list`` of ``embedding`` objects (floats or base64), in ``index`` order."""
        provider = target.provider
        payload = load_json(body, provider)
        try:
            data = sorted(payload["data"], key=lambda item: int(item.get("index", 0)))
            rows = [item["embedding"] for item in data]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UpstreamProtocolError(
                f"{provider} returned embeddings without data[].embedding", provider=provider
            ) from exc
        vectors = check_rows(rows, len(texts), provider)
        usage = payload.get("usage")
        tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        served = str(payload.get("model") or target.model)
        if isinstance(tokens, int):
            return Embeddings(vectors, served, tokens)
        # Some compatible servers leave usage out: the gateway's estimate, said to be one.
        return Embeddings(vectors, served, estimate_tokens(texts), estimated=True)

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, target: Target
    ) -> UpstreamError:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        message, code = _error_fields(payload)
        return _classify(
            status, message, code, provider=target.provider, retry_after=parse_retry_after(headers)
        )


def _classify(
    status: int, message: str, code: str | None, *, provider: str, retry_after: float | None
) -> UpstreamError:
    if code in _BLOCK_CODES:
        return ContentBlocked(
            message or f"{provider} refused the request", provider=provider, upstream_status=status
        )
    return classify_status(status, message, provider=provider, retry_after=retry_after)
