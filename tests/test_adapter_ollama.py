"""Unit tests of the Ollama adapter's pure translations.

Fixtures are Ollama's documented examples (docs/api.md "Generate a chat completion",
docs/api/errors.mdx, the streaming tool-call example of ollama.com/blog/streaming-tool). The
last section runs the adapter against the loopback fake to check both agree on the wire format.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from providers.base import ProviderAdapter, Target
from providers.errors import (
    UnsupportedRequest,
    UpstreamOverloaded,
    UpstreamProtocolError,
)
from providers.ollama import FINISH_REASONS, OllamaAdapter
from providers.schema import ChatRequest

ADAPTER: ProviderAdapter = OllamaAdapter()  # type-checks the Protocol
TARGET = Target(provider="ollama-local", base_url="http://127.0.0.1:11434", model="llama3.2:3b")
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather for a location",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
        "strict": True,
    },
}


def chat(**fields: Any) -> ChatRequest:
    body: dict[str, Any] = {"model": "local-fast", "messages": [{"role": "user", "content": "Hi"}]}
    body.update(fields)
    return ChatRequest.from_body(body)


def sent(request: ChatRequest, target: Target = TARGET) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(ADAPTER.build_request(request, target).body)
    return body


# -- build_request ------------------------------------------------------------------------------
def test_url_model_and_headers() -> None:
    upstream = ADAPTER.build_request(chat(), TARGET)
    assert upstream.url == "http://127.0.0.1:11434/api/chat"
    assert upstream.method == "POST"
    assert upstream.stream is False
    assert upstream.headers["Content-Type"] == "application/json"
    assert "Authorization" not in upstream.headers  # a local Ollama takes no key
    body = orjson.loads(upstream.body)
    assert body["model"] == "llama3.2:3b"  # the pinned id, never the client's alias
    assert body["messages"] == [{"role": "user", "content": "Hi"}]


def test_stream_is_always_explicit() -> None:
    # Ollama streams by default: leaving "stream" out would turn a plain request into NDJSON.
    assert sent(chat())["stream"] is False
    upstream = ADAPTER.build_request(chat(stream=True), TARGET)
    assert orjson.loads(upstream.body)["stream"] is True
    assert upstream.stream is True
    assert upstream.headers["Accept"] == "application/x-ndjson"


def test_bearer_only_with_a_key_and_extra_headers_kept() -> None:
    target = Target(
        provider="ollama-cloud",
        base_url="https://ollama.example",
        model="gpt-oss:120b",
        api_key="sk-test",
        headers={"X-Team": "support"},
    )
    headers = ADAPTER.build_request(chat(), target).headers
    assert headers["Authorization"] == "Bearer sk-test"
    assert headers["X-Team"] == "support"


def test_system_and_developer_become_system_in_place() -> None:
    body = sent(
        chat(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Salut."},
                {"role": "user", "content": "Again"},
            ]
        )
    )
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Salut."},
        {"role": "user", "content": "Again"},
    ]


def test_content_parts_text_and_inline_images() -> None:
    body = sent(
        chat(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is "},
                        {
                            "type": "image_url",
                            "image_url": {"url": f"data:image/png;base64,{PNG_B64}"},
                        },
                        {"type": "text", "text": "this?"},
                    ],
                }
            ]
        )
    )
    assert body["messages"] == [{"role": "user", "content": "What is this?", "images": [PNG_B64]}]


@pytest.mark.parametrize(
    ("url", "phrase"),
    [
        ("https://example.com/cat.png", "image URLs"),
        ("http://example.com/cat.png", "image URLs"),
        ("data:image/png,rawbytes", "base64"),
        ("data:image/png;base64,", "base64"),
    ],
)
def test_images_ollama_cannot_take(url: str, phrase: str) -> None:
    request = chat(
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    )
    with pytest.raises(UnsupportedRequest, match=phrase) as info:
        ADAPTER.build_request(request, TARGET)
    assert info.value.param == "messages"


def test_sampling_options() -> None:
    body = sent(
        chat(temperature=0.3, top_p=0.9, max_tokens=100, stop="END", seed=42, user="alice@corp")
    )
    assert body["options"] == {
        "temperature": 0.3,
        "top_p": 0.9,
        "num_predict": 100,
        "stop": ["END"],
        "seed": 42,
    }
    assert "user" not in body  # Ollama has no end-user field


def test_max_completion_tokens_wins_and_penalties_pass() -> None:
    body = sent(
        chat(
            max_tokens=100,
            max_completion_tokens=50,
            stop=["a", "b"],
            presence_penalty=0.5,
            frequency_penalty=-0.5,
        )
    )
    assert body["options"] == {
        "num_predict": 50,
        "stop": ["a", "b"],
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
    }


def test_no_options_when_none_given() -> None:
    body = sent(chat())
    assert "options" not in body
    assert "format" not in body
    assert "tools" not in body
    assert "keep_alive" not in body


def test_response_formats() -> None:
    assert sent(chat(response_format={"type": "json_object"}))["format"] == "json"
    assert "format" not in sent(chat(response_format={"type": "text"}))
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer"}, "available": {"type": "boolean"}},
        "required": ["age", "available"],
    }
    body = sent(
        chat(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": schema, "strict": True},
            }
        )
    )
    assert body["format"] == schema


def test_keep_alive_from_target_options() -> None:
    target = Target(
        provider="ollama", base_url="http://h:11434", model="m", options={"keep_alive": "30m"}
    )
    assert sent(chat(), target)["keep_alive"] == "30m"


def test_tools_in_openai_function_shape() -> None:
    body = sent(chat(tools=[WEATHER], tool_choice="auto"))
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_current_weather",
                "description": "Get the current weather for a location",
                "parameters": WEATHER["function"]["parameters"],  # type: ignore[index]
            },
        }
    ]


def test_tool_without_parameters_gets_an_empty_object_schema() -> None:
    body = sent(chat(tools=[{"type": "function", "function": {"name": "ping"}}]))
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}},
        }
    ]


def test_tool_choice_none_sends_no_tools() -> None:
    assert "tools" not in sent(chat(tools=[WEATHER], tool_choice="none"))


@pytest.mark.parametrize(
    ("choice", "phrase"),
    [
        ("required", "required"),
        ({"type": "function", "function": {"name": "get_current_weather"}}, "get_current_weather"),
    ],
)
def test_forced_tool_choice_is_refused(choice: Any, phrase: str) -> None:
    with pytest.raises(UnsupportedRequest, match=phrase) as info:
        ADAPTER.build_request(chat(tools=[WEATHER], tool_choice=choice), TARGET)
    assert info.value.param == "tool_choice"


def test_assistant_tool_calls_and_tool_results() -> None:
    body = sent(
        chat(
            tools=[WEATHER],
            messages=[
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {
                                "name": "get_current_weather",
                                "arguments": '{"location": "Paris"}',
                            },
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": ""},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "22 C"},
                {
                    "role": "tool",
                    "tool_call_id": "call_2",
                    "content": [{"type": "text", "text": "ok"}],
                },
                {"role": "tool", "tool_call_id": "call_unknown", "content": "?"},
            ],
        )
    )
    assert body["messages"][1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"function": {"name": "get_current_weather", "arguments": {"location": "Paris"}}},
            {"function": {"name": "lookup", "arguments": {}}},
        ],
    }
    assert body["messages"][2] == {
        "role": "tool",
        "content": "22 C",
        "tool_name": "get_current_weather",
    }
    assert body["messages"][3] == {"role": "tool", "content": "ok", "tool_name": "lookup"}
    assert body["messages"][4] == {"role": "tool", "content": "?"}


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]"])
def test_unusable_tool_call_arguments(arguments: str) -> None:
    request = chat(
        messages=[
            {"role": "user", "content": "x"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c",
                        "type": "function",
                        "function": {"name": "f", "arguments": arguments},
                    }
                ],
            },
        ]
    )
    with pytest.raises(UnsupportedRequest, match="'f'"):
        ADAPTER.build_request(request, TARGET)


# -- parse_response -----------------------------------------------------------------------------
DOC_RESPONSE = {
    "model": "llama3.2",
    "created_at": "2023-12-12T14:13:43.416799Z",
    "message": {"role": "assistant", "content": "Hello! How are you today?"},
    "done": True,
    "done_reason": "stop",
    "total_duration": 5191566416,
    "load_duration": 2154458,
    "prompt_eval_count": 26,
    "prompt_eval_duration": 383809000,
    "eval_count": 298,
    "eval_duration": 4799921000,
}

DOC_TOOL_RESPONSE = {
    "model": "llama3.2",
    "created_at": "2024-07-22T20:33:28.123648Z",
    "message": {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "function": {
                    "name": "get_current_weather",
                    "arguments": {"format": "celsius", "location": "Paris, FR"},
                }
            }
        ],
    },
    "done_reason": "stop",
    "done": True,
    "total_duration": 885095291,
    "load_duration": 3753500,
    "prompt_eval_count": 122,
    "prompt_eval_duration": 328493000,
    "eval_count": 33,
    "eval_duration": 552222000,
}


def test_finish_reason_table() -> None:
    assert FINISH_REASONS == {"stop": "stop", "length": "length"}


def test_parse_documented_response() -> None:
    completion = ADAPTER.parse_response(orjson.dumps(DOC_RESPONSE), TARGET)
    body = completion.body
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "llama3.2"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How are you today?"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 26, "completion_tokens": 298, "total_tokens": 324}
    assert completion.served_model == "llama3.2"
    assert completion.usage.total_tokens == 324
    assert completion.finish_reason == "stop"


def test_parse_documented_tool_call() -> None:
    completion = ADAPTER.parse_response(orjson.dumps(DOC_TOOL_RESPONSE), TARGET)
    message = completion.body["choices"][0]["message"]
    assert message["content"] is None
    [call] = message["tool_calls"]
    assert call["id"].startswith("call_")
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_current_weather"
    assert isinstance(call["function"]["arguments"], str)
    assert orjson.loads(call["function"]["arguments"]) == {
        "format": "celsius",
        "location": "Paris, FR",
    }
    assert completion.finish_reason == "tool_calls"
    assert completion.body["choices"][0]["finish_reason"] == "tool_calls"
    assert completion.usage.prompt_tokens == 122


def test_tool_call_ids_are_unique_and_kept_when_given() -> None:
    payload = orjson.loads(orjson.dumps(DOC_TOOL_RESPONSE))
    call = payload["message"]["tool_calls"][0]
    payload["message"]["tool_calls"] = [call, call, {**call, "id": "call_from_ollama"}]
    calls = ADAPTER.parse_response(orjson.dumps(payload), TARGET).body["choices"][0]["message"][
        "tool_calls"
    ]
    assert calls[0]["id"] != calls[1]["id"]
    assert calls[2]["id"] == "call_from_ollama"


def test_text_beside_a_tool_call_is_kept() -> None:
    payload = orjson.loads(orjson.dumps(DOC_TOOL_RESPONSE))
    payload["message"]["content"] = "Let me check."
    message = ADAPTER.parse_response(orjson.dumps(payload), TARGET).body["choices"][0]["message"]
    assert message["content"] == "Let me check."
    assert len(message["tool_calls"]) == 1


@pytest.mark.parametrize(
    ("done_reason", "finish"), [("length", "length"), ("load", "stop"), (None, "stop")]
)
def test_done_reason_mapping(done_reason: str | None, finish: str) -> None:
    payload = {**DOC_RESPONSE, "done_reason": done_reason}
    assert ADAPTER.parse_response(orjson.dumps(payload), TARGET).finish_reason == finish


def test_missing_counts_are_zero() -> None:
    payload = {k: v for k, v in DOC_RESPONSE.items() if k not in ("prompt_eval_count", "model")}
    completion = ADAPTER.parse_response(orjson.dumps(payload), TARGET)
    assert completion.usage.prompt_tokens == 0
    assert completion.usage.completion_tokens == 298
    assert completion.served_model == "llama3.2:3b"  # falls back to the pinned id


@pytest.mark.parametrize(
    "body",
    [
        b"<html>502 Bad Gateway</html>",
        b"[]",
        b'"text"',
        b'{"model": "m", "done": true}',
        b'{"message": "hello"}',
        b'{"message": {"content": 42}}',
        b'{"message": {"content": "", "tool_calls": {"function": {}}}}',
        b'{"message": {"content": "", "tool_calls": [{"function": {"arguments": {}}}]}}',
    ],
)
def test_unexpected_bodies_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(UpstreamProtocolError) as info:
        ADAPTER.parse_response(body, TARGET)
    assert info.value.provider == "ollama-local"


def test_error_object_in_a_200_body_is_classified() -> None:
    with pytest.raises(UpstreamOverloaded, match="runner"):
        ADAPTER.parse_response(b'{"error": "llama runner process has terminated"}', TARGET)
