"""Unit tests of the Anthropic adapter's pure translations.

Payloads follow the examples in Anthropic's Messages API reference, streaming guide and errors
page (https://docs.claude.com/en/api/messages, /en/docs/build-with-claude/streaming,
/en/api/errors).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from providers.anthropic import AnthropicAdapter
from providers.base import Target
from providers.errors import (
    ContentBlocked,
    UnsupportedRequest,
    UpstreamProtocolError,
)
from providers.schema import ChatRequest

ADAPTER = AnthropicAdapter()
TARGET = Target(
    provider="anthropic",
    base_url="https://api.anthropic.com",
    model="claude-sonnet-4-20250514",
    api_key="sk-ant-secret",
)
HELLO = [{"role": "user", "content": "Hello, Claude"}]
PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}


def build(target: Target = TARGET, **fields: Any) -> dict[str, Any]:
    """The upstream JSON body for an OpenAI request made of ``fields``."""
    request = ChatRequest.from_body({"model": "smart", "messages": HELLO, **fields})
    result: dict[str, Any] = orjson.loads(ADAPTER.build_request(request, target).body)
    return result


def rejects(**fields: Any) -> UnsupportedRequest:
    request = ChatRequest.from_body({"model": "smart", "messages": HELLO, **fields})
    with pytest.raises(UnsupportedRequest) as info:
        ADAPTER.build_request(request, TARGET)
    return info.value


# -- build_request ---------------------------------------------------------------------------
def test_url_headers_and_pinned_model() -> None:
    request = ChatRequest.from_body({"model": "smart", "messages": HELLO})
    upstream = ADAPTER.build_request(request, TARGET)
    assert upstream.url == "https://api.anthropic.com/v1/messages"
    assert upstream.method == "POST"
    assert upstream.stream is False
    assert upstream.headers["x-api-key"] == "sk-ant-secret"
    assert upstream.headers["anthropic-version"] == "2023-06-01"
    assert upstream.headers["content-type"] == "application/json"
    body = orjson.loads(upstream.body)
    assert body == {
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello, Claude"}]}],
    }


def test_no_key_no_header_and_options() -> None:
    target = Target(
        provider="anthropic",
        base_url="http://127.0.0.1:9",
        model="claude-3-5-haiku-20241022",
        headers={"anthropic-beta": "token-efficient-tools-2025-02-19"},
        options={"anthropic_version": "2023-01-01", "default_max_tokens": 1000},
    )
    request = ChatRequest.from_body({"model": "smart", "messages": HELLO})
    upstream = ADAPTER.build_request(request, target)
    assert "x-api-key" not in upstream.headers
    assert upstream.headers["anthropic-version"] == "2023-01-01"
    assert upstream.headers["anthropic-beta"] == "token-efficient-tools-2025-02-19"
    assert orjson.loads(upstream.body)["max_tokens"] == 1000


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_tokens": 300}, 300),
        ({"max_completion_tokens": 200}, 200),
        ({"max_tokens": 300, "max_completion_tokens": 200}, 200),
    ],
)
def test_max_tokens(fields: dict[str, Any], expected: int) -> None:
    assert build(**fields)["max_tokens"] == expected


def test_stream_flag() -> None:
    request = ChatRequest.from_body({"model": "smart", "messages": HELLO, "stream": True})
    upstream = ADAPTER.build_request(request, TARGET)
    assert upstream.stream is True
    assert upstream.headers["accept"] == "text/event-stream"
    assert orjson.loads(upstream.body)["stream"] is True


def test_system_and_developer_messages_are_joined() -> None:
    body = build(
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hello"},
        ]
    )
    assert body["system"] == "You are terse.\n\nAnswer in French."
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]


def test_images_in_system_are_rejected() -> None:
    url = f"data:image/png;base64,{PNG_B64}"
    error = rejects(
        messages=[
            {"role": "system", "content": [{"type": "image_url", "image_url": {"url": url}}]},
            *HELLO,
        ]
    )
    assert "system" in error.message


def test_content_parts_text_and_images() -> None:
    parts = [
        {"type": "text", "text": "What is in these images?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        {"type": "image_url", "image_url": {"url": "https://upload.wikimedia.org/a.jpg"}},
    ]
    body = build(messages=[{"role": "user", "content": parts}])
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these images?"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64},
        },
        {"type": "image", "source": {"type": "url", "url": "https://upload.wikimedia.org/a.jpg"}},
    ]


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("data:image/tiff;base64,AAAA", "image/tiff"),
        ("data:image/png,rawbytes", "base64"),
        ("ftp://example.com/cat.png", "http"),
    ],
)
def test_unsupported_images_are_rejected(url: str, needle: str) -> None:
    part = {"type": "image_url", "image_url": {"url": url}}
    error = rejects(messages=[{"role": "user", "content": [part]}])
    assert needle in error.message


def test_sampling_stop_and_user() -> None:
    body = build(temperature=0.5, top_p=0.9, stop="\n\nHuman:", user="user-42")
    assert body["temperature"] == 0.5
    assert body["top_p"] == 0.9
    assert body["stop_sequences"] == ["\n\nHuman:"]
    assert body["metadata"] == {"user_id": "user-42"}
    assert build(stop=["END", "STOP"])["stop_sequences"] == ["END", "STOP"]


def test_temperature_above_one_is_rejected() -> None:
    error = rejects(temperature=1.5)
    assert error.param == "temperature"
    assert "temperature" in error.message
    assert build(temperature=1)["temperature"] == 1


def test_sampling_rejected_on_versions_that_forbid_it() -> None:
    target = Target(
        provider="anthropic",
        base_url="https://api.anthropic.com",
        model="claude-sonnet-4-20250514",
        options={"anthropic_version": "2026-10-21"},
    )
    for field, value in (("temperature", 0.2), ("top_p", 0.5)):
        request = ChatRequest.from_body({"model": "smart", "messages": HELLO, field: value})
        with pytest.raises(UnsupportedRequest) as info:
            ADAPTER.build_request(request, target)
        assert info.value.param == field
    assert "temperature" not in build(target)


def test_penalties_are_rejected_and_seed_dropped() -> None:
    assert rejects(presence_penalty=0.5).param == "presence_penalty"
    assert rejects(frequency_penalty=-1).param == "frequency_penalty"
    body = build(presence_penalty=0, seed=7)
    assert "seed" not in body
    assert "presence_penalty" not in body


def test_json_object_adds_a_system_instruction() -> None:
    body = build(
        messages=[{"role": "system", "content": "Extract the name."}, *HELLO],
        response_format={"type": "json_object"},
    )
    assert body["system"].startswith("Extract the name.\n\n")
    assert "JSON object" in body["system"]
    assert "output_config" not in body


def test_json_schema_uses_structured_outputs() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    body = build(
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    )
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "system" not in body
    bare = {"type": "json_schema", "json_schema": {"name": "person"}}
    assert rejects(response_format=bare).param == "response_format"


def test_tools_translate() -> None:
    bare = {"type": "function", "function": {"name": "now", "strict": True}}
    body = build(tools=[WEATHER_TOOL, bare])
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Get the current weather in a given location",
            "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}, "strict": True},
    ]
    assert "tool_choice" not in body


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
        ),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        ("auto", True, {"type": "auto"}),
    ],
)
def test_tool_choice(choice: Any, parallel: bool | None, expected: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"tools": [WEATHER_TOOL]}
    if choice is not None:
        fields["tool_choice"] = choice
    if parallel is not None:
        fields["parallel_tool_calls"] = parallel
    assert build(**fields)["tool_choice"] == expected


def test_tool_choice_without_tools() -> None:
    assert "tool_choice" not in build(tool_choice="none")
    assert rejects(tool_choice="required").param == "tool_choice"


def _tool_turns(arguments: str) -> list[dict[str, Any]]:
    call = {"name": "get_weather", "arguments": arguments}
    return [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Checking both.",
            "tool_calls": [
                {"id": "toolu_01", "type": "function", "function": call},
                {"id": "toolu_02", "type": "function", "function": call},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_01", "content": "15 degrees"},
        {"role": "tool", "tool_call_id": "toolu_02", "content": [{"type": "text", "text": "18"}]},
        {"role": "user", "content": "Which is warmer?"},
    ]


def test_tool_calls_and_results() -> None:
    body = build(messages=_tool_turns('{"location": "Paris"}'), tools=[WEATHER_TOOL])
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking both."},
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "get_weather",
                    "input": {"location": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_02",
                    "name": "get_weather",
                    "input": {"location": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "15 degrees"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_02",
                    "content": [{"type": "text", "text": "18"}],
                },
                {"type": "text", "text": "Which is warmer?"},
            ],
        },
    ]


def test_assistant_tool_call_without_text_and_empty_arguments() -> None:
    messages = _tool_turns("")
    messages[1]["content"] = None
    body = build(messages=messages)
    assistant = body["messages"][1]
    assert [block["type"] for block in assistant["content"]] == ["tool_use", "tool_use"]
    assert assistant["content"][0]["input"] == {}


@pytest.mark.parametrize("arguments", ['{"location": "Par', '["Paris"]'])
def test_bad_tool_arguments_are_rejected(arguments: str) -> None:
    error = rejects(messages=_tool_turns(arguments))
    assert "toolu_01" in error.message


def test_consecutive_same_role_messages_are_merged() -> None:
    body = build(
        messages=[
            {"role": "user", "content": "First."},
            {"role": "user", "content": "Second."},
            {"role": "assistant", "content": "One."},
            {"role": "assistant", "content": "Two."},
            {"role": "user", "content": "Third."},
        ]
    )
    assert [turn["role"] for turn in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "First."},
        {"type": "text", "text": "Second."},
    ]
    assert len(body["messages"][1]["content"]) == 2


# -- parse_response --------------------------------------------------------------------------
def _message(**overrides: Any) -> bytes:
    message = {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": [{"type": "text", "text": "Hi! My name is Claude."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 2095, "output_tokens": 503},
    }
    message.update(overrides)
    return orjson.dumps(message)


def test_parse_text_message() -> None:
    completion = ADAPTER.parse_response(_message(), TARGET)
    body = completion.body
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body["model"] == "claude-sonnet-4-20250514"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hi! My name is Claude."},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 2095, "completion_tokens": 503, "total_tokens": 2598}
    assert completion.served_model == "claude-sonnet-4-20250514"
    assert completion.finish_reason == "stop"
    assert completion.usage.total_tokens == 2598


def test_parse_tool_use_message() -> None:
    content = [
        {"type": "text", "text": "I'll check the weather."},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": {"location": "San Francisco, CA", "unit": "celsius"},
        },
    ]
    completion = ADAPTER.parse_response(_message(content=content, stop_reason="tool_use"), TARGET)
    choice = completion.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "I'll check the weather."
    [call] = choice["message"]["tool_calls"]
    assert call["id"] == "toolu_01A09q90qw90lq917835lq9"
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == {
        "location": "San Francisco, CA",
        "unit": "celsius",
    }


def test_parse_tool_only_message_has_null_content() -> None:
    content = [{"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}}]
    completion = ADAPTER.parse_response(_message(content=content, stop_reason="tool_use"), TARGET)
    message = completion.body["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"]["arguments"] == "{}"


def test_parse_ignores_thinking_blocks() -> None:
    content = [
        {"type": "thinking", "thinking": "Let me think...", "signature": "EqQBCgIYAhIM"},
        {"type": "text", "text": "42"},
    ]
    completion = ADAPTER.parse_response(_message(content=content), TARGET)
    assert completion.body["choices"][0]["message"]["content"] == "42"


def test_cached_input_counts_as_prompt_tokens() -> None:
    usage = {
        "input_tokens": 10,
        "cache_creation_input_tokens": 200,
        "cache_read_input_tokens": 3000,
        "output_tokens": 5,
        "service_tier": "standard",
    }
    completion = ADAPTER.parse_response(_message(usage=usage), TARGET)
    assert completion.usage.prompt_tokens == 3210
    assert completion.body["usage"]["total_tokens"] == 3215


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("pause_turn", "length"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reasons(stop_reason: str, finish: str) -> None:
    completion = ADAPTER.parse_response(_message(stop_reason=stop_reason), TARGET)
    assert completion.finish_reason == finish
    assert completion.body["choices"][0]["finish_reason"] == finish


def test_empty_refusal_is_content_blocked() -> None:
    with pytest.raises(ContentBlocked) as info:
        ADAPTER.parse_response(_message(content=[], stop_reason="refusal"), TARGET)
    assert info.value.provider == "anthropic"


def test_served_model_is_the_upstream_version() -> None:
    completion = ADAPTER.parse_response(_message(model="claude-sonnet-4-5-20250929"), TARGET)
    assert completion.served_model == "claude-sonnet-4-5-20250929"
    assert completion.body["model"] == "claude-sonnet-4-5-20250929"


@pytest.mark.parametrize(
    "body",
    [
        b"<html>502 Bad Gateway</html>",
        b"[]",
        orjson.dumps({"type": "message", "stop_reason": "end_turn"}),
        orjson.dumps({"content": "text", "stop_reason": "end_turn"}),
        orjson.dumps({"content": [{"text": "no type"}], "stop_reason": "end_turn"}),
    ],
)
def test_malformed_responses_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(UpstreamProtocolError) as info:
        ADAPTER.parse_response(body, TARGET)
    assert info.value.provider == "anthropic"
