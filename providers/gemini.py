"""Google Gemini ``generateContent`` (the Gemini Developer API, ``v1beta`` by default).

Requests go to ``models/{model}:generateContent``; streams to
``models/{model}:streamGenerateContent?alt=sse``, where every SSE ``data:`` line is a complete
``GenerateContentResponse``, no ``[DONE]`` sentinel follows, and the chunk carrying a
``finishReason`` is the last one. Errors are Google's ``{"error": {"code", "message", "status",
"details"}}``, whose ``details`` may carry a ``google.rpc.RetryInfo`` (rate limits) or a
``google.rpc.ErrorInfo`` (``API_KEY_INVALID`` arrives as a 400, not a 401).

References: https://ai.google.dev/api/generate-content, https://ai.google.dev/api/caching#Content,
https://ai.google.dev/gemini-api/docs/troubleshooting.
"""

from __future__ import annotations

import re
import time
import uuid
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
from .embeddings import EmbeddingRequest, Embeddings, check_rows, estimate_tokens
from .errors import (
    ContentBlocked,
    UpstreamAuthError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from .gemini_request import (
    calling_config,
    contents_of,
    declaration,
    generation_config,
)
from .schema import (
    ChatRequest,
)
from .shaping import output_limit

# Gemini ``Candidate.finishReason`` -> OpenAI ``finish_reason``. Reasons not listed (OTHER,
# LANGUAGE, MALFORMED_FUNCTION_CALL, ...) end the answer without a better OpenAI word: "stop".
FINISH_REASONS: dict[str, str] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    "MODEL_ARMOR": "content_filter",
}

# ``google.rpc.ErrorInfo`` reasons that mean the gateway's own key is bad (sent as HTTP 400).
_KEY_REASONS = frozenset({"API_KEY_INVALID"})
_RETRY_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")  # protobuf Duration JSON: "30s", "1.5s"


class GeminiAdapter:
    """Translation between OpenAI chat completions and Gemini ``generateContent``."""

    framing: Framing = "sse"

    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        """The ``generateContent`` (or ``streamGenerateContent?alt=sse``) call for ``request``."""
        system, contents = contents_of(request.messages)
        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
        config = generation_config(request, output_limit(request, target.options))
        if config:
            body["generationConfig"] = config
        if request.tools:
            declarations = [declaration(tool.function) for tool in request.tools]
            body["tools"] = [{"functionDeclarations": declarations}]
            if request.tool_choice is not None:
                body["toolConfig"] = {"functionCallingConfig": calling_config(request.tool_choice)}
        # ``user`` has no counterpart in the Developer API's generateContent: it is not sent.
        version = target.options.get("api_version", "v1beta")
        model = target.model.removeprefix("models/")
        action = "streamGenerateContent?alt=sse" if request.stream else "generateContent"
        headers = {"Content-Type": "application/json", **target.headers}
        if target.api_key is not None:
            headers["x-goog-api-key"] = target.api_key
        return UpstreamRequest(
            url=f"{target.base_url}/{version}/models/{model}:{action}",
            headers=headers,
            body=orjson.dumps(body),
            stream=request.stream,
        )

    def parse_response(self, body: bytes, target: Target) -> Completion:
        """Translate a ``GenerateContentResponse``; a prompt or answer blocked for safety raises."""
        provider = target.provider
        payload = load_json(body, provider)
        try:
            candidate = _first_candidate(payload, provider)
            text, calls = _read_parts(candidate)
            reason = _finish_reason(candidate.get("finishReason"), bool(calls))
            usage = _usage(payload.get("usageMetadata"))
            served = str(payload.get("modelVersion") or target.model)
            completion_id = str(payload.get("responseId") or new_completion_id())
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise UpstreamProtocolError(
                f"{provider} returned an unexpected generateContent body ({exc!r})",
                provider=provider,
            ) from exc
        if reason == "content_filter" and not text and not calls:
            raise ContentBlocked(
                f"{provider} blocked the answer ({candidate.get('finishReason')})",
                provider=provider,
            )
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if calls and not text else text,
        }
        if calls:
            message["tool_calls"] = calls
        openai_body = {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
            ],
            "usage": usage.to_openai(),
        }
        return Completion(body=openai_body, served_model=served, usage=usage, finish_reason=reason)

    def new_stream(self, target: Target) -> StreamState:
        """Fresh state; ``scratch["tools"]`` counts the tool calls emitted so far."""
        return StreamState(
            id=new_completion_id(),
            model=target.model,
            provider=target.provider,
            scratch={"tools": 0},
        )

    def parse_stream_event(self, event: StreamEvent, state: StreamState) -> list[dict[str, Any]]:
        """OpenAI chunks for one streamed ``GenerateContentResponse``."""
        if not event.data.strip():
            return []
        payload = load_json(event.data, state.provider)
        try:
            return _stream_chunks(payload, state)
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise UpstreamProtocolError(
                f"{state.provider} sent an unexpected stream chunk ({exc!r})",
                provider=state.provider,
            ) from exc

    # -- embeddings (providers.embeddings.EmbeddingAdapter) ----------------------------------
    max_batch = 100  # batchEmbedContents takes at most 100 requests

    def build_embedding_request(
        self, texts: Sequence[str], request: EmbeddingRequest, target: Target
    ) -> UpstreamRequest:
        """``models/{model}:batchEmbedContents``, one ``EmbedContentRequest`` per text
        (``dimensions`` is ``outputDimensionality``; ``user`` has no counterpart)."""
        model = f"models/{target.model.removeprefix('models/')}"
        requests: list[dict[str, Any]] = []
        for text in texts:
            one: dict[str, Any] = {"model": model, "content": {"parts": [{"text": text}]}}
            if request.dimensions is not None:
                one["outputDimensionality"] = request.dimensions
            requests.append(one)
        version = target.options.get("api_version", "v1beta")
        headers = {"Content-Type": "application/json", **target.headers}
        if target.api_key is not None:
            headers["x-goog-api-key"] = target.api_key
        return UpstreamRequest(
            url=f"{target.base_url}/{version}/{model}:batchEmbedContents",
            headers=headers,
            body=orjson.dumps({"requests": requests}),
            stream=False,
        )

    def parse_embeddings(self, body: bytes, target: Target, texts: Sequence[str]) -> Embeddings:
        """``{"embeddings": [{"values": [...]}]}``; Gemini reports no token count here, so the
        usage is the gateway's estimate (``estimated``)."""
        provider = target.provider
        payload = load_json(body, provider)
        try:
            rows = [item["values"] for item in payload["embeddings"]]
        except (KeyError, TypeError) as exc:
            raise UpstreamProtocolError(
                f"{provider} returned embeddings without embeddings[].values", provider=provider
            ) from exc
        vectors = check_rows(rows, len(texts), provider)
        return Embeddings(vectors, target.model, estimate_tokens(texts), estimated=True)

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, target: Target
    ) -> UpstreamError:
        """The gateway error for Google's error body (or, if not JSON, for the status alone)."""
        try:
            payload = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            payload = None
        return _classify(status, headers, payload, target.provider)


# -- request ---------------------------------------------------------------------------------


def _first_candidate(payload: Any, provider: str) -> dict[str, Any]:
    candidates = payload.get("candidates")
    if not candidates:
        raise _prompt_block(payload, provider) or UpstreamProtocolError(
            f"{provider} returned no candidates", provider=provider
        )
    candidate = candidates[0]
    if not isinstance(candidate, dict):
        raise TypeError("candidates[0] is not an object")
    return candidate


def _prompt_block(payload: dict[str, Any], provider: str) -> ContentBlocked | None:
    """The error for a prompt refused before generation (no candidates, a blockReason)."""
    reason = (payload.get("promptFeedback") or {}).get("blockReason")
    return (
        ContentBlocked(f"{provider} blocked the prompt ({reason})", provider=provider)
        if reason
        else None
    )


def _read_parts(candidate: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(answer text, OpenAI tool calls) of a candidate; thought summaries are not the answer."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if part.get("thought"):
            continue
        if "functionCall" in part:
            call = part["functionCall"]
            calls.append(
                {
                    # Gemini ids, when present, are kept; otherwise one is made for the client.
                    "id": str(call.get("id") or f"call_{uuid.uuid4().hex[:24]}"),
                    "type": "function",
                    "function": {
                        "name": str(call["name"]),
                        "arguments": orjson.dumps(call.get("args") or {}).decode(),
                    },
                }
            )
        elif isinstance(part.get("text"), str):
            texts.append(part["text"])
    return "".join(texts), calls


def _finish_reason(raw: Any, has_calls: bool) -> str:
    reason = FINISH_REASONS.get(str(raw), "stop")
    # Gemini says STOP after function calls; OpenAI clients look for "tool_calls".
    return "tool_calls" if has_calls and reason == "stop" else reason


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    # Prompt: promptTokenCount (cached tokens included) plus tool-use prompt tokens; completion:
    # candidates plus thinking tokens, which are billed as output. Sums to totalTokenCount.
    return Usage(
        prompt_tokens=int(raw.get("promptTokenCount") or 0)
        + int(raw.get("toolUsePromptTokenCount") or 0),
        completion_tokens=int(raw.get("candidatesTokenCount") or 0)
        + int(raw.get("thoughtsTokenCount") or 0),
    )


def _stream_chunks(payload: Any, state: StreamState) -> list[dict[str, Any]]:
    if not isinstance(payload, dict):
        raise TypeError("stream chunk is not a JSON object")
    if "error" in payload:
        error = payload["error"]
        code = error.get("code") if isinstance(error, dict) else None
        raise _classify(code if isinstance(code, int) else 500, {}, payload, state.provider)
    if payload.get("responseId") and not state.role_sent:
        state.id = str(payload["responseId"])  # every chunk repeats it; fix it before chunk one
    if payload.get("modelVersion"):
        state.served_model = str(payload["modelVersion"])
    if payload.get("usageMetadata"):
        state.usage = _usage(payload["usageMetadata"])  # repeated per chunk: the last one wins
    candidates = payload.get("candidates")
    if not candidates:
        block = _prompt_block(payload, state.provider)
        if block is None:
            return []  # e.g. a usage-only chunk
        if not state.role_sent:
            raise block
        return [_finish(state, "content_filter")]
    candidate = candidates[0]
    text, calls = _read_parts(candidate)
    chunks: list[dict[str, Any]] = []
    if text:
        chunks.append(state.chunk({"content": text}))
    for call in calls:
        index = state.scratch["tools"]
        state.scratch["tools"] = index + 1
        function = call["function"]
        opening = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": function["name"], "arguments": ""},
        }
        chunks.append(state.chunk({"tool_calls": [opening]}))
        arguments = {"index": index, "function": {"arguments": function["arguments"]}}
        chunks.append(state.chunk({"tool_calls": [arguments]}))
    raw_reason = candidate.get("finishReason")
    if raw_reason:
        reason = _finish_reason(raw_reason, state.scratch["tools"] > 0)
        if reason == "content_filter" and not state.role_sent:
            raise ContentBlocked(
                f"{state.provider} blocked the answer ({raw_reason})", provider=state.provider
            )
        chunks.append(_finish(state, reason))
    return chunks


def _finish(state: StreamState, reason: str) -> dict[str, Any]:
    state.finish_reason = reason
    state.done = True
    return state.chunk({}, reason)


# -- errors ----------------------------------------------------------------------------------


def _classify(
    status: int, headers: Mapping[str, str], payload: Any, provider: str
) -> UpstreamError:
    if isinstance(payload, list) and len(payload) == 1:
        payload = payload[0]  # errors inside a JSON-array stream (no alt=sse) come wrapped
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        error = {}
    grpc_status = error.get("status") if isinstance(error.get("status"), str) else None
    message = error.get("message") if isinstance(error.get("message"), str) else ""
    details = [d for d in error.get("details") or [] if isinstance(d, dict)]
    reasons = {d.get("reason") for d in details if str(d.get("@type", "")).endswith("ErrorInfo")}
    if reasons & _KEY_REASONS:
        # Never echo Google's text here: it may quote the key it rejected.
        return UpstreamAuthError(
            f"{provider} rejected the gateway's API key (HTTP {status} API_KEY_INVALID)",
            provider=provider,
            upstream_status=status,
        )
    label = grpc_status or f"HTTP {status}"
    text = f"{label}: {message}" if message else label
    retry_after = _retry_delay(details)
    if retry_after is None:
        retry_after = parse_retry_after(headers)
    if status == 504 or grpc_status == "DEADLINE_EXCEEDED":
        return UpstreamTimeout(
            f"{provider} timed out: {text}",
            provider=provider,
            upstream_status=status,
            retry_after=retry_after,
        )
    if grpc_status == "FAILED_PRECONDITION":
        # E.g. "free tier not available in your country": the gateway's account, not the
        # client's request, so another provider may well answer.
        return UpstreamError(
            f"{provider} refused the request: {text}", provider=provider, upstream_status=status
        )
    return classify_status(status, text, provider=provider, retry_after=retry_after)


def _retry_delay(details: list[dict[str, Any]]) -> float | None:
    for detail in details:
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _RETRY_DELAY.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None
