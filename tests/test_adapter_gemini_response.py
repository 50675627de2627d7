"""The Gemini adapter's response translation (requests: tests/test_adapter_gemini.py; streams and
errors: tests/test_adapter_gemini_stream.py), against GenerateContentResponse as documented at
https://ai.google.dev/api/generate-content."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from providers.errors import (
    ContentBlocked,
    UpstreamProtocolError,
)
from providers.gemini import FINISH_REASONS
from tests.test_adapter_gemini import ADAPTER, TARGET

# -- response -------------------------------------------------------------------------------


def gemini_response(**overrides: Any) -> dict[str, Any]:
    """The documented non-streaming answer shape."""
    response: dict[str, Any] = {
        "candidates": [
            {
                "content": {"parts": [{"text": "Hello! How can I help?"}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 5,
            "candidatesTokenCount": 7,
            "totalTokenCount": 30,
            "thoughtsTokenCount": 18,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 5}],
        },
        "modelVersion": "gemini-2.5-flash-preview-05-20",
        "responseId": "mFb2aK2xLbOk1MkPqL2d0Ao",
    }
    response.update(overrides)
    return response


def parse(payload: Any) -> Any:
    return ADAPTER.parse_response(orjson.dumps(payload), TARGET)


def test_text_response() -> None:
    completion = parse(gemini_response())
    body = completion.body
    assert body["id"] == "mFb2aK2xLbOk1MkPqL2d0Ao"
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "gemini-2.5-flash-preview-05-20"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help?"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    # Thinking tokens are billed as output, so they count as completion tokens.
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 25, "total_tokens": 30}
    assert completion.served_model == "gemini-2.5-flash-preview-05-20"
    assert completion.finish_reason == "stop"
    assert completion.usage.total_tokens == 30


def test_missing_model_version_and_response_id_fall_back() -> None:
    payload = gemini_response()
    del payload["modelVersion"], payload["responseId"], payload["usageMetadata"]
    body = parse(payload).body
    assert body["model"] == "gemini-2.5-flash"
    assert body["id"].startswith("chatcmpl-")
    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_tool_use_prompt_tokens_count_as_prompt() -> None:
    usage = {"promptTokenCount": 10, "toolUsePromptTokenCount": 4, "candidatesTokenCount": 3}
    assert parse(gemini_response(usageMetadata=usage)).usage.prompt_tokens == 14


def test_thought_parts_and_multiple_text_parts() -> None:
    parts = [
        {"text": "Let me think about greetings...", "thought": True},
        {"text": "Hello"},
        {"text": ", world"},
    ]
    candidate = {"content": {"parts": parts, "role": "model"}, "finishReason": "STOP"}
    message = parse(gemini_response(candidates=[candidate])).body["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Hello, world"}


def test_function_calls_become_openai_tool_calls() -> None:
    parts = [
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
        {"functionCall": {"name": "get_time", "id": "fc-7"}},
    ]
    candidate = {"content": {"parts": parts, "role": "model"}, "finishReason": "STOP"}
    completion = parse(gemini_response(candidates=[candidate]))
    choice = completion.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert completion.finish_reason == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    first, second = message["tool_calls"]
    assert first["id"].startswith("call_")
    assert first["type"] == "function"
    assert first["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert orjson.loads(first["function"]["arguments"]) == {"city": "Paris"}
    assert second["id"] == "fc-7"  # Gemini's own id is kept
    assert second["function"] == {"name": "get_time", "arguments": "{}"}


def test_text_alongside_a_function_call_is_kept() -> None:
    parts = [{"text": "Checking."}, {"functionCall": {"name": "ping", "args": {}}}]
    candidate = {"content": {"parts": parts, "role": "model"}, "finishReason": "STOP"}
    message = parse(gemini_response(candidates=[candidate])).body["choices"][0]["message"]
    assert message["content"] == "Checking."
    assert len(message["tool_calls"]) == 1


@pytest.mark.parametrize(
    ("gemini", "openai"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("OTHER", "stop"),
        ("LANGUAGE", "stop"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("SOMETHING_NEW", "stop"),
    ],
)
def test_finish_reason_mapping(gemini: str, openai: str) -> None:
    candidate = {"content": {"parts": [{"text": "partial"}]}, "finishReason": gemini}
    assert parse(gemini_response(candidates=[candidate])).finish_reason == openai


def test_finish_reason_table_only_uses_openai_words() -> None:
    assert set(FINISH_REASONS.values()) <= {"stop", "length", "tool_calls", "content_filter"}


def test_blocked_prompt_raises_content_blocked() -> None:
    payload = {
        "promptFeedback": {
            "blockReason": "SAFETY",
            "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}
            ],
        },
        "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
        "modelVersion": "gemini-2.5-flash",
    }
    with pytest.raises(ContentBlocked, match="SAFETY") as caught:
        parse(payload)
    assert caught.value.provider == "gemini"


@pytest.mark.parametrize("reason", ["SAFETY", "PROHIBITED_CONTENT", "RECITATION"])
def test_safety_finish_without_content_raises_content_blocked(reason: str) -> None:
    candidate = {"finishReason": reason, "index": 0, "safetyRatings": []}
    with pytest.raises(ContentBlocked, match=reason):
        parse(gemini_response(candidates=[candidate]))


def test_safety_finish_after_some_text_is_a_content_filter_answer() -> None:
    candidate = {"content": {"parts": [{"text": "Here is how"}]}, "finishReason": "SAFETY"}
    body = parse(gemini_response(candidates=[candidate])).body
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert body["choices"][0]["message"]["content"] == "Here is how"


@pytest.mark.parametrize(
    "payload",
    [
        {"usageMetadata": {"promptTokenCount": 3}},  # no candidates, no block
        {"candidates": [1]},
        {"candidates": [{"content": {"parts": [{"functionCall": {"args": {}}}]}}]},  # no name
        {"candidates": [{"content": {"parts": "text"}}]},
        [1, 2],
        "just a string",
    ],
)
def test_unexpected_shapes_are_protocol_errors(payload: Any) -> None:
    with pytest.raises(UpstreamProtocolError):
        parse(payload)


def test_non_json_body_is_a_protocol_error() -> None:
    with pytest.raises(UpstreamProtocolError, match="not JSON"):
        ADAPTER.parse_response(b"<html>502 Bad Gateway</html>", TARGET)
