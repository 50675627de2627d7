"""The Gemini adapter's stream translation and error classification (the requests and
responses are in tests/test_adapter_gemini.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from providers.base import StreamEvent, StreamState
from providers.errors import (
    ContentBlocked,
    UpstreamAuthError,
    UpstreamError,
    UpstreamInvalidRequest,
    UpstreamModelNotFound,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from tests.test_adapter_gemini import ADAPTER, TARGET

# -- stream ---------------------------------------------------------------------------------


def sse(payload: Any) -> StreamEvent:
    return StreamEvent(data=orjson.dumps(payload))


def stream_chunk(
    parts: list[dict[str, Any]] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts or [], "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {
        "candidates": [candidate],
        "modelVersion": "gemini-2.5-flash",
        "responseId": "resp-1",
        **extra,
    }


def run(events: list[StreamEvent]) -> tuple[list[dict[str, Any]], StreamState]:
    state = ADAPTER.new_stream(TARGET)
    chunks: list[dict[str, Any]] = []
    for event in events:
        assert not state.done, "events after the terminal one"
        chunks.extend(ADAPTER.parse_stream_event(event, state))
    return chunks, state


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk["choices"][0]["delta"] for chunk in chunks]


def test_text_stream() -> None:
    partial_usage = {"promptTokenCount": 9, "totalTokenCount": 9}
    final_usage = {"promptTokenCount": 9, "candidatesTokenCount": 4, "thoughtsTokenCount": 2}
    chunks, state = run(
        [
            sse(stream_chunk([{"text": "Hello"}], usageMetadata=partial_usage)),
            sse(stream_chunk([{"text": " there"}], usageMetadata=partial_usage)),
            sse(stream_chunk([{"text": "!"}], finish="STOP", usageMetadata=final_usage)),
        ]
    )
    assert deltas(chunks) == [
        {"role": "assistant", "content": "Hello"},
        {"content": " there"},
        {"content": "!"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    assert {c["id"] for c in chunks} == {"resp-1"}
    assert {c["model"] for c in chunks} == {"gemini-2.5-flash"}
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert state.done
    assert state.finish_reason == "stop"
    assert state.served_model == "gemini-2.5-flash"
    assert (state.usage.prompt_tokens, state.usage.completion_tokens) == (9, 6)  # the last wins


def test_stream_is_not_done_before_the_finish_reason() -> None:
    _, state = run([sse(stream_chunk([{"text": "Hello"}]))])
    assert not state.done
    assert state.finish_reason is None


def test_terminal_chunk_without_text() -> None:
    chunks, state = run([sse(stream_chunk([{"text": "Hi"}])), sse(stream_chunk([], "MAX_TOKENS"))])
    assert deltas(chunks) == [{"role": "assistant", "content": "Hi"}, {}]
    assert state.finish_reason == "length"


def test_function_call_stream() -> None:
    call_part = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
    chunks, state = run([sse(stream_chunk([call_part], finish="STOP"))])
    opening, arguments, finish = deltas(chunks)
    tool = opening["tool_calls"][0]
    assert opening["role"] == "assistant"
    assert tool["index"] == 0
    assert tool["id"].startswith("call_")
    assert tool["type"] == "function"
    assert tool["function"] == {"name": "get_weather", "arguments": ""}
    assert arguments == {
        "tool_calls": [{"index": 0, "function": {"arguments": '{"city":"Paris"}'}}]
    }
    assert finish == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert state.finish_reason == "tool_calls"


def test_function_calls_across_chunks_get_increasing_indexes() -> None:
    chunks, _ = run(
        [
            sse(stream_chunk([{"functionCall": {"name": "a", "args": {}}}])),
            sse(stream_chunk([{"functionCall": {"name": "b", "args": {}}}], finish="STOP")),
        ]
    )
    openings = [d["tool_calls"][0] for d in deltas(chunks) if "id" in d.get("tool_calls", [{}])[0]]
    assert [(t["index"], t["function"]["name"]) for t in openings] == [(0, "a"), (1, "b")]


def test_usage_only_and_empty_events_emit_nothing() -> None:
    state = ADAPTER.new_stream(TARGET)
    usage = {"promptTokenCount": 3, "candidatesTokenCount": 1}
    assert ADAPTER.parse_stream_event(sse({"usageMetadata": usage}), state) == []
    assert ADAPTER.parse_stream_event(StreamEvent(data=b"  "), state) == []
    assert state.usage.total_tokens == 4
    assert not state.done


def test_stream_prompt_block_raises_content_blocked() -> None:
    blocked = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "modelVersion": "m"}
    with pytest.raises(ContentBlocked, match="PROHIBITED_CONTENT"):
        run([sse(blocked)])


def test_stream_safety_finish_before_content_raises_content_blocked() -> None:
    with pytest.raises(ContentBlocked, match="SAFETY"):
        run([sse(stream_chunk([], finish="SAFETY"))])


def test_stream_safety_finish_after_content_ends_with_content_filter() -> None:
    chunks, state = run(
        [
            sse(stream_chunk([{"text": "Step one"}])),
            sse(stream_chunk([], finish="SAFETY")),
        ]
    )
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert state.done
    assert state.finish_reason == "content_filter"


def test_stream_error_object_with_retry_info_is_rate_limited() -> None:
    error = {
        "error": {
            "code": 429,
            "message": "Resource has been exhausted (e.g. check quota).",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}],
        }
    }
    with pytest.raises(UpstreamRateLimited) as caught:
        run([sse(stream_chunk([{"text": "Hi"}])), sse(error)])
    assert caught.value.retry_after == 12.0
    assert caught.value.provider == "gemini"


def test_stream_error_object_without_code_is_a_server_failure() -> None:
    with pytest.raises(UpstreamOverloaded, match="INTERNAL"):
        run([sse({"error": {"message": "An internal error has occurred.", "status": "INTERNAL"}})])


@pytest.mark.parametrize(
    "event",
    [
        StreamEvent(data=b"<html>oops</html>"),
        sse([1]),
        sse({"candidates": ["text"]}),
    ],
)
def test_stream_garbage_is_a_protocol_error(event: StreamEvent) -> None:
    with pytest.raises(UpstreamProtocolError):
        run([event])


# -- classify_error -------------------------------------------------------------------------


def google_error(code: int, status: str, message: str, *details: dict[str, Any]) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return orjson.dumps({"error": error})


def classify(status: int, body: bytes, **headers: str) -> UpstreamError:
    return ADAPTER.classify_error(status, CIMultiDict(headers), body, TARGET)


def test_invalid_argument_is_the_clients_error_with_googles_message() -> None:
    body = google_error(
        400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified"
    )
    error = classify(400, body)
    assert type(error) is UpstreamInvalidRequest
    assert "contents is not specified" in error.message
    assert "INVALID_ARGUMENT" in error.message
    assert error.upstream_status == 400
    assert error.provider == "gemini"
    assert not error.retryable


def test_api_key_invalid_is_an_auth_error_that_does_not_echo_google() -> None:
    body = google_error(
        400,
        "INVALID_ARGUMENT",
        "API key not valid. Please pass a valid API key. (AIza-test-key)",
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        },
        {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US"},
    )
    error = classify(400, body)
    assert isinstance(error, UpstreamAuthError)
    assert "AIza-test-key" not in error.message
    assert error.upstream_status == 400
    assert error.provider == "gemini"


def test_permission_denied_is_an_auth_error() -> None:
    body = google_error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers")
    error = classify(403, body)
    assert isinstance(error, UpstreamAuthError)
    assert "unregistered" not in error.message


def test_not_found() -> None:
    body = google_error(404, "NOT_FOUND", "models/gemini-9 is not found for API version v1beta")
    error = classify(404, body)
    assert isinstance(error, UpstreamModelNotFound)
    assert "is not found" in error.message


@pytest.mark.parametrize(("delay", "seconds"), [("30s", 30.0), ("1.5s", 1.5), ("0s", 0.0)])
def test_resource_exhausted_takes_retry_info(delay: str, seconds: float) -> None:
    body = google_error(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota.",
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
    )
    error = classify(429, body, **{"Retry-After": "99"})
    assert isinstance(error, UpstreamRateLimited)
    assert error.retry_after == seconds
    assert error.upstream_status == 429


def test_resource_exhausted_without_retry_info_uses_the_header() -> None:
    body = google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.")
    error = classify(429, body, **{"retry-after": "7"})
    assert isinstance(error, UpstreamRateLimited)
    assert error.retry_after == 7.0
    assert classify(429, body).retry_after is None


@pytest.mark.parametrize(("status", "grpc_status"), [(500, "INTERNAL"), (503, "UNAVAILABLE")])
def test_server_failures_are_overloaded(status: int, grpc_status: str) -> None:
    error = classify(status, google_error(status, grpc_status, "The model is overloaded."))
    assert isinstance(error, UpstreamOverloaded)
    assert error.retryable
    assert grpc_status in error.message


def test_deadline_exceeded_is_a_timeout() -> None:
    error = classify(504, google_error(504, "DEADLINE_EXCEEDED", "Deadline expired."))
    assert isinstance(error, UpstreamTimeout)
    assert error.upstream_status == 504


def test_failed_precondition_is_the_gateways_problem_not_the_clients() -> None:
    body = google_error(
        400, "FAILED_PRECONDITION", "User location is not supported for the API use."
    )
    error = classify(400, body)
    assert type(error) is UpstreamError
    assert error.retryable  # another provider may answer


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (502, b"<html><body>Bad Gateway</body></html>", UpstreamOverloaded),
        (400, b"Bad Request", UpstreamInvalidRequest),
        (401, b"", UpstreamAuthError),
        (429, b"Too Many Requests", UpstreamRateLimited),
        (504, b"upstream request timeout", UpstreamTimeout),
        (500, b'{"error": "not an object"}', UpstreamOverloaded),
    ],
)
def test_non_json_or_odd_bodies_classify_by_status(
    status: int, body: bytes, expected: type[UpstreamError]
) -> None:
    error = classify(status, body)
    assert isinstance(error, expected)
    assert error.provider == "gemini"
    assert error.upstream_status == status


def test_error_wrapped_in_an_array_is_understood() -> None:
    body = b"[" + google_error(429, "RESOURCE_EXHAUSTED", "Quota.") + b"]"
    assert isinstance(classify(429, body), UpstreamRateLimited)
