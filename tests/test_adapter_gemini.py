"""Pure translations of the Gemini adapter, against Gemini's documented JSON shapes.

Shapes follow https://ai.google.dev/api/generate-content (request, GenerateContentResponse,
streamGenerateContent with alt=sse) and Google's error bodies
(https://ai.google.dev/gemini-api/docs/troubleshooting).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from providers.base import Target
from providers.errors import (
    UnsupportedRequest,
)
from providers.gemini import GeminiAdapter
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
