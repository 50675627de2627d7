"""Pure translations of the Gemini adapter, against Gemini's documented JSON shapes.

Shapes follow https://ai.google.dev/api/generate-content (request, GenerateContentResponse,
streamGenerateContent with alt=sse) and Google's error bodies
(https://ai.google.dev/gemini-api/docs/troubleshooting).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from providers.base import StreamEvent, StreamState, Target
from providers.errors import (
    ContentBlocked,
    UnsupportedRequest,
    UpstreamAuthError,
    UpstreamError,
    UpstreamInvalidRequest,
    UpstreamModelNotFound,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from providers.gemini import FINISH_REASONS, GeminiAdapter
from providers.schema import ChatRequest

ADAPTER = GeminiAdapter()
TARGET = Target(
    provider="gemini",
    base_url="https://generativelanguage.googleapis.com",
    model="gemini-2.5-flash",
    api_key="AIza-test-key",
)
HELLO: list[dict[str, Any]] = [{"role": "user", "content": "Hello"}]
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def chat(messages: list[dict[str, Any]] | None = None, **fields: Any) -> ChatRequest:
    return ChatRequest.from_body({"model": "gemini-alias", "messages": messages or HELLO, **fields})


def body_of(request: ChatRequest, target: Target = TARGET) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(ADAPTER.build_request(request, target).body)
    return result


def call(id_: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}


# -- request: endpoint and headers ---------------------------------------------------------


def test_non_stream_url_headers_and_pinned_model() -> None:
    upstream = ADAPTER.build_request(chat(), TARGET)
    assert upstream.method == "POST"
    assert upstream.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    )
    assert upstream.stream is False
    assert upstream.headers["x-goog-api-key"] == "AIza-test-key"
    assert upstream.headers["Content-Type"] == "application/json"
    assert "gemini-alias" not in upstream.body.decode()


def test_stream_url_asks_for_sse() -> None:
    upstream = ADAPTER.build_request(chat(stream=True), TARGET)
    assert upstream.url.endswith("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
    assert upstream.stream is True
    assert "stream" not in orjson.loads(upstream.body)


def test_api_version_option_models_prefix_and_extra_headers() -> None:
    target = Target(
        provider="gemini",
        base_url="http://127.0.0.1:9",
        model="models/gemini-2.0-flash-001",
        options={"api_version": "v1"},
        headers={"x-team": "alpha"},
    )
    upstream = ADAPTER.build_request(chat(), target)
    assert upstream.url == "http://127.0.0.1:9/v1/models/gemini-2.0-flash-001:generateContent"
    assert "x-goog-api-key" not in upstream.headers  # no key configured: no header
    assert upstream.headers["x-team"] == "alpha"


# -- request: messages ----------------------------------------------------------------------


def test_system_and_developer_messages_become_one_system_instruction() -> None:
    body = body_of(
        chat(
            [
                {"role": "system", "content": "You are terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                {"role": "user", "content": "Hello"},
            ]
        )
    )
    assert body["systemInstruction"] == {"parts": [{"text": "You are terse.\n\nAnswer in French."}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "Hello"}]}]


def test_no_system_instruction_without_system_messages() -> None:
    assert "systemInstruction" not in body_of(chat())


def test_image_in_a_system_message_is_refused() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with pytest.raises(UnsupportedRequest, match=r"messages\[0\].*text only"):
        ADAPTER.build_request(chat([{"role": "system", "content": [image]}, *HELLO]), TARGET)


def test_user_and_assistant_turns_use_gemini_roles() -> None:
    body = body_of(
        chat(
            [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "Tell me a joke."},
            ]
        )
    )
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Hi"}]},
        {"role": "model", "parts": [{"text": "Hello! How can I help?"}]},
        {"role": "user", "parts": [{"text": "Tell me a joke."}]},
    ]


def test_consecutive_same_role_turns_are_merged() -> None:
    body = body_of(
        chat(
            [
                {"role": "user", "content": "First"},
                {"role": "user", "content": "Second"},
                {"role": "assistant", "content": "A"},
                {"role": "assistant", "content": "B"},
            ]
        )
    )
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "First"}, {"text": "Second"}]},
        {"role": "model", "parts": [{"text": "A"}, {"text": "B"}]},
    ]


def test_content_parts_with_inline_image() -> None:
    body = body_of(
        chat(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in this picture?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"},
                        },
                    ],
                }
            ]
        )
    )
    assert body["contents"][0]["parts"] == [
        {"text": "What is in this picture?"},
        {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}},
    ]


def test_http_image_urls_become_file_data() -> None:
    def image(url: str) -> dict[str, Any]:
        return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}

    body = body_of(
        chat([image("https://example.com/cat.png?size=large"), image("http://example.com/img/7")])
    )
    assert body["contents"][0]["parts"] == [
        {
            "fileData": {
                "mimeType": "image/png",
                "fileUri": "https://example.com/cat.png?size=large",
            }
        },
        # FileData.mimeType is optional in the Developer API: left out when the URL cannot tell.
        {"fileData": {"fileUri": "http://example.com/img/7"}},
    ]


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png,rawbytes",  # not base64
        "data:;base64,AAAA",  # no MIME type
        "ftp://example.com/cat.png",
        "file:///etc/passwd",
    ],
)
def test_unusable_image_urls_are_invalid_requests(url: str) -> None:
    content = [{"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(UnsupportedRequest, match=r"messages\[0\]"):
        ADAPTER.build_request(chat([{"role": "user", "content": content}]), TARGET)


# -- request: generation config -------------------------------------------------------------


def test_sampling_and_limits_map_to_generation_config() -> None:
    body = body_of(
        chat(temperature=0.2, top_p=0.9, max_tokens=50, stop=["END", "STOP"], seed=7, user="u-1")
    )
    assert body["generationConfig"] == {
        "temperature": 0.2,
        "topP": 0.9,
        "maxOutputTokens": 50,
        "stopSequences": ["END", "STOP"],
        "seed": 7,
    }
    assert "u-1" not in orjson.dumps(body).decode()  # generateContent has no user field


def test_max_completion_tokens_wins_and_a_single_stop_is_a_list() -> None:
    config = body_of(chat(max_tokens=50, max_completion_tokens=80, stop="END"))["generationConfig"]
    assert config["maxOutputTokens"] == 80
    assert config["stopSequences"] == ["END"]


def test_no_generation_config_when_nothing_is_set() -> None:
    assert "generationConfig" not in body_of(chat())


def test_zero_penalties_are_not_sent_but_real_ones_are() -> None:
    assert "generationConfig" not in body_of(chat(presence_penalty=0, frequency_penalty=0))
    config = body_of(chat(presence_penalty=0.5, frequency_penalty=-0.5))["generationConfig"]
    assert config == {"presencePenalty": 0.5, "frequencyPenalty": -0.5}


def test_json_object_response_format() -> None:
    config = body_of(chat(response_format={"type": "json_object"}))["generationConfig"]
    assert config == {"responseMimeType": "application/json"}


def test_json_schema_response_format_uses_response_json_schema() -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }
    config = body_of(chat(response_format=response_format))["generationConfig"]
    assert config == {"responseMimeType": "application/json", "responseJsonSchema": schema}


def test_text_response_format_sends_nothing() -> None:
    assert "generationConfig" not in body_of(chat(response_format={"type": "text"}))


# -- request: tools -------------------------------------------------------------------------


def test_function_tools_become_function_declarations() -> None:
    body = body_of(chat(tools=[WEATHER_TOOL, {"type": "function", "function": {"name": "ping"}}]))
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Current weather for a city",
                    "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"],
                },
                {"name": "ping"},
            ]
        }
    ]
    assert "toolConfig" not in body


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("none", {"mode": "NONE"}),
        ("auto", {"mode": "AUTO"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ],
)
def test_tool_choice_maps_to_function_calling_config(choice: Any, config: dict[str, Any]) -> None:
    body = body_of(chat(tools=[WEATHER_TOOL], tool_choice=choice))
    assert body["toolConfig"] == {"functionCallingConfig": config}


def test_tool_choice_without_tools_sends_no_tool_config() -> None:
    assert "toolConfig" not in body_of(chat(tool_choice="none"))


def test_tool_call_round_trip_becomes_function_call_and_grouped_responses() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Paris and Rome? And the time?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                call("call_1", "get_weather", '{"city": "Paris"}'),
                call("call_2", "get_weather", '{"city": "Rome"}'),
                call("call_3", "get_time", ""),
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 18, "sky": "clear"}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "22 degrees and sunny"},
        {"role": "tool", "tool_call_id": "call_3", "content": [{"type": "text", "text": "[1, 2]"}]},
        {"role": "user", "content": "Thanks!"},
    ]
    contents = body_of(chat(messages, tools=[WEATHER_TOOL]))["contents"]
    assert contents == [
        {"role": "user", "parts": [{"text": "Weather in Paris and Rome? And the time?"}]},
        {
            "role": "model",
            "parts": [
                {"text": "Let me check."},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}},
                {"functionCall": {"name": "get_time", "args": {}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {
                    "functionResponse": {
                        "name": "get_weather",
                        "response": {"temp_c": 18, "sky": "clear"},
                    }
                },
                {
                    "functionResponse": {
                        "name": "get_weather",
                        "response": {"result": "22 degrees and sunny"},
                    }
                },
                # A JSON array is not an object: wrapped like plain text.
                {"functionResponse": {"name": "get_time", "response": {"result": "[1, 2]"}}},
                {"text": "Thanks!"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("content", "response"),
    [
        ("{}", {}),
        ('{"ok": true}', {"ok": True}),
        ('"quoted"', {"result": '"quoted"'}),
        ("", {"result": ""}),
        ("42", {"result": "42"}),
    ],
)
def test_tool_result_content_becomes_an_object(content: str, response: dict[str, Any]) -> None:
    messages = [
        *HELLO,
        {"role": "assistant", "tool_calls": [call("c", "ping", "{}")]},
        {"role": "tool", "tool_call_id": "c", "content": content},
    ]
    part = body_of(chat(messages))["contents"][-1]["parts"][0]
    assert part == {"functionResponse": {"name": "ping", "response": response}}


def test_assistant_tool_call_without_text_has_only_function_call_parts() -> None:
    messages = [
        *HELLO,
        {"role": "assistant", "content": None, "tool_calls": [call("c", "ping", "{}")]},
        {"role": "tool", "tool_call_id": "c", "content": "pong"},
    ]
    contents = body_of(chat(messages))["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [{"functionCall": {"name": "ping", "args": {}}}],
    }


def test_tool_result_for_an_unknown_call_id_is_refused() -> None:
    messages = [*HELLO, {"role": "tool", "tool_call_id": "call_missing", "content": "x"}]
    with pytest.raises(UnsupportedRequest, match="call_missing"):
        ADAPTER.build_request(chat(messages), TARGET)


@pytest.mark.parametrize("arguments", ["not json", "[1, 2]"])
def test_non_object_tool_call_arguments_are_refused(arguments: str) -> None:
    messages = [*HELLO, {"role": "assistant", "tool_calls": [call("c", "ping", arguments)]}]
    with pytest.raises(UnsupportedRequest, match="JSON object"):
        ADAPTER.build_request(chat(messages), TARGET)


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
