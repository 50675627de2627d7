"""The Anthropic adapter's stream translation and error classification (the requests and
responses are in tests/test_adapter_anthropic.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from gateway.core.errors import UpstreamFailure
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
)
from tests.test_adapter_anthropic import ADAPTER, TARGET


# -- parse_stream_event ----------------------------------------------------------------------
def _event(name: str, data: dict[str, Any]) -> StreamEvent:
    return StreamEvent(data=orjson.dumps(data), event=name)


def _run(events: list[StreamEvent]) -> tuple[list[dict[str, Any]], StreamState]:
    state = ADAPTER.new_stream(TARGET)
    chunks: list[dict[str, Any]] = []
    for event in events:
        assert not state.done
        chunks.extend(ADAPTER.parse_stream_event(event, state))
    return chunks, state


def _start(usage: dict[str, Any] | None = None) -> StreamEvent:
    message: dict[str, Any] = {
        "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-sonnet-4-20250514",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage or {"input_tokens": 25, "output_tokens": 1},
    }
    return _event("message_start", {"type": "message_start", "message": message})


def _text_start(index: int = 0) -> StreamEvent:
    block = {"type": "text", "text": ""}
    return _event(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def _delta(index: int, delta: dict[str, Any]) -> StreamEvent:
    return _event(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


def _stop_block(index: int) -> StreamEvent:
    return _event("content_block_stop", {"type": "content_block_stop", "index": index})


def _message_delta(stop_reason: str, usage: dict[str, Any]) -> StreamEvent:
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    return _event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})


MESSAGE_STOP = _event("message_stop", {"type": "message_stop"})
PING = _event("ping", {"type": "ping"})


def _deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk["choices"][0]["delta"] for chunk in chunks]


def test_basic_text_stream() -> None:
    chunks, state = _run(
        [
            _start(),
            _text_start(),
            PING,
            _delta(0, {"type": "text_delta", "text": "Hello"}),
            _delta(0, {"type": "text_delta", "text": "!"}),
            _stop_block(0),
            _message_delta("end_turn", {"output_tokens": 15}),
            MESSAGE_STOP,
        ]
    )
    assert _deltas(chunks) == [{"role": "assistant", "content": "Hello"}, {"content": "!"}, {}]
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None, None, "stop"]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk["model"] == "claude-sonnet-4-20250514" for chunk in chunks)
    assert all("usage" not in chunk for chunk in chunks)
    assert state.done
    assert state.finish_reason == "stop"
    assert state.served_model == "claude-sonnet-4-20250514"
    assert (state.usage.prompt_tokens, state.usage.completion_tokens) == (25, 15)


def test_tool_use_stream() -> None:
    tool_block = {
        "type": "tool_use",
        "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
        "name": "get_weather",
        "input": {},
    }
    chunks, state = _run(
        [
            _start({"input_tokens": 472, "output_tokens": 2}),
            _text_start(),
            _delta(0, {"type": "text_delta", "text": "Okay, let me check."}),
            _stop_block(0),
            _event(
                "content_block_start",
                {"type": "content_block_start", "index": 1, "content_block": tool_block},
            ),
            _delta(1, {"type": "input_json_delta", "partial_json": ""}),
            _delta(1, {"type": "input_json_delta", "partial_json": '{"location":'}),
            _delta(1, {"type": "input_json_delta", "partial_json": ' "San Francisco, CA"}'}),
            _stop_block(1),
            _message_delta("tool_use", {"output_tokens": 89}),
            MESSAGE_STOP,
        ]
    )
    assert _deltas(chunks) == [
        {"role": "assistant", "content": "Okay, let me check."},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"location":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ' "San Francisco, CA"}'}}]},
        {},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert state.finish_reason == "tool_calls"
    assert state.usage.completion_tokens == 89


def test_two_tool_calls_get_their_own_indices() -> None:
    def tool_start(index: int, name: str) -> StreamEvent:
        block = {"type": "tool_use", "id": f"toolu_{index}", "name": name, "input": {}}
        return _event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": block},
        )

    chunks, _ = _run(
        [
            _start(),
            tool_start(0, "a"),
            tool_start(1, "b"),
            _delta(1, {"type": "input_json_delta", "partial_json": "{}"}),
        ]
    )
    assert chunks[1]["choices"][0]["delta"]["tool_calls"][0]["index"] == 1
    assert chunks[2]["choices"][0]["delta"]["tool_calls"][0]["index"] == 1


def test_thinking_and_signature_deltas_are_ignored() -> None:
    block = {"type": "thinking", "thinking": ""}
    chunks, _ = _run(
        [
            _start(),
            _event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": block},
            ),
            _delta(0, {"type": "thinking_delta", "thinking": "Let me solve this..."}),
            _delta(0, {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA"}),
            _stop_block(0),
            _text_start(1),
            _delta(1, {"type": "text_delta", "text": "27 * 453 = 12,231"}),
        ]
    )
    assert _deltas(chunks) == [{"role": "assistant", "content": "27 * 453 = 12,231"}]


def test_cumulative_usage_is_not_double_counted() -> None:
    start = {
        "input_tokens": 10,
        "cache_read_input_tokens": 90,
        "cache_creation_input_tokens": 0,
        "output_tokens": 1,
    }
    final = {"input_tokens": 10, "cache_read_input_tokens": 90, "output_tokens": 40}
    _, state = _run(
        [_start(start), _text_start(), _message_delta("max_tokens", final), MESSAGE_STOP]
    )
    assert (state.usage.prompt_tokens, state.usage.completion_tokens) == (100, 40)
    assert state.finish_reason == "length"


def test_refusal_before_content_is_blocked() -> None:
    with pytest.raises(ContentBlocked):
        _run([_start(), _message_delta("refusal", {"output_tokens": 1})])


def test_refusal_after_content_finishes_with_content_filter() -> None:
    chunks, state = _run(
        [
            _start(),
            _text_start(),
            _delta(0, {"type": "text_delta", "text": "Sure, here"}),
            _message_delta("refusal", {"output_tokens": 3}),
            MESSAGE_STOP,
        ]
    )
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert state.finish_reason == "content_filter"
    assert state.done


@pytest.mark.parametrize(
    ("error_type", "expected"),
    [
        ("overloaded_error", UpstreamOverloaded),
        ("api_error", UpstreamOverloaded),
        ("rate_limit_error", UpstreamRateLimited),
        ("invalid_request_error", UpstreamInvalidRequest),
        ("authentication_error", UpstreamAuthError),
        ("something_new", UpstreamOverloaded),
    ],
)
def test_in_stream_error_event(error_type: str, expected: type[UpstreamError]) -> None:
    error = {"type": "error", "error": {"type": error_type, "message": "Overloaded"}}
    with pytest.raises(expected) as info:
        _run([_start(), _text_start(), _event("error", error)])
    assert type(info.value) is expected
    assert info.value.provider == "anthropic"


@pytest.mark.parametrize(
    "event",
    [
        StreamEvent(data=b"not json", event="content_block_delta"),
        StreamEvent(data=b"[1, 2]", event="message_start"),
        _event("message_start", {"type": "message_start"}),
        _event("content_block_delta", {"type": "content_block_delta", "index": 0}),
        _delta(7, {"type": "input_json_delta", "partial_json": "{"}),
    ],
)
def test_malformed_stream_events(event: StreamEvent) -> None:
    state = ADAPTER.new_stream(TARGET)
    with pytest.raises(UpstreamProtocolError):
        ADAPTER.parse_stream_event(event, state)


def test_unknown_events_are_ignored() -> None:
    state = ADAPTER.new_stream(TARGET)
    assert ADAPTER.parse_stream_event(_event("future_event", {"type": "future_event"}), state) == []
    assert ADAPTER.parse_stream_event(PING, state) == []
    assert not state.done


# -- classify_error --------------------------------------------------------------------------
def _error_body(kind: str, message: str) -> bytes:
    return orjson.dumps(
        {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": "req_018EeWyXxfu5pfWkrYcMdjWG",
        }
    )


@pytest.mark.parametrize(
    ("status", "kind", "expected"),
    [
        (400, "invalid_request_error", UpstreamInvalidRequest),
        (401, "authentication_error", UpstreamAuthError),
        (402, "billing_error", UpstreamAuthError),
        (403, "permission_error", UpstreamAuthError),
        (404, "not_found_error", UpstreamModelNotFound),
        (413, "request_too_large", UpstreamInvalidRequest),
        (429, "rate_limit_error", UpstreamRateLimited),
        (500, "api_error", UpstreamOverloaded),
        (529, "overloaded_error", UpstreamOverloaded),
    ],
)
def test_classify_error(status: int, kind: str, expected: type[UpstreamError]) -> None:
    message = "invalid x-api-key sk-ant-secret" if status in (401, 402, 403) else "boom happened"
    error = ADAPTER.classify_error(status, CIMultiDict(), _error_body(kind, message), TARGET)
    assert type(error) is expected
    assert error.provider == "anthropic"
    assert error.upstream_status == status
    if status in (401, 402, 403):
        assert "sk-ant-secret" not in error.message
    else:
        assert "boom happened" in error.message


def test_rate_limit_carries_retry_after() -> None:
    headers = CIMultiDict({"Retry-After": "17"})
    body = _error_body("rate_limit_error", "Number of request tokens has exceeded your limit")
    error = ADAPTER.classify_error(429, headers, body, TARGET)
    assert isinstance(error, UpstreamRateLimited)
    assert error.retry_after == 17.0
    # The client sees it through the gateway's one mapping: 429 with the provider's Retry-After.
    failure = UpstreamFailure(error)
    assert (failure.status, failure.headers()) == (429, {"Retry-After": "17"})


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, UpstreamInvalidRequest),
        (401, UpstreamAuthError),
        (413, UpstreamInvalidRequest),
        (429, UpstreamRateLimited),
        (500, UpstreamOverloaded),
        (502, UpstreamOverloaded),
        (529, UpstreamOverloaded),
    ],
)
def test_non_json_error_bodies_classify_by_status(
    status: int, expected: type[UpstreamError]
) -> None:
    body = b"<html><body><h1>413 Request Entity Too Large</h1>cloudflare</body></html>"
    error = ADAPTER.classify_error(status, CIMultiDict(), body, TARGET)
    assert type(error) is expected
    assert error.upstream_status == status
    assert error.provider == "anthropic"
