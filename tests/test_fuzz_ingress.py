"""Fuzzing the other ingress formats: hypothesis-built Anthropic Messages (and token count),
Responses and embeddings bodies against the gateway on a real port, over loopback fakes that
answer normally or fail in every classified way (schemathesis covers them in test_fuzz.py).

Valid bodies, which reach the router, the adapters and every fake, are two in three; the rest are
wild. The promise: no 5xx but the upstream ones (and Anthropic's 529 on ``/v1/messages``), every
error in the client's own shape, and a stream that ends with the format's last event.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import MODELS, TEAM_KEY
from tests.fakes.base import Behaviour, Blocked, Ok
from tests.fakes.ollama import FakeOllama
from tests.test_fuzz import (
    EMBEDDING_MODELS,
    ThreadedServer,
    _json,
    _number,
    _text,
    _upstream,
    check,
    server,
)

__all__ = ["server"]  # the module-scoped gateway fixture, shared with test_fuzz.py

_any_model = st.sampled_from([*MODELS, "default", "nope", *EMBEDDING_MODELS, "embeddings"]) | _json
_text_block = st.fixed_dictionaries({"type": st.just("text"), "text": _text})
_anthropic_block = st.one_of(
    _text_block,
    st.fixed_dictionaries(
        {
            "type": st.just("image"),
            "source": st.sampled_from(
                [
                    {"type": "base64", "media_type": "image/png", "data": "iVBORw=="},
                    {"type": "url", "url": "https://x.test/a.png"},
                    {"type": "base64", "media_type": "image/tiff", "data": "AA=="},
                ]
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("tool_use"),
            "id": _text,
            "name": _text,
            "input": st.dictionaries(st.text(max_size=5), _json, max_size=2),
        }
    ),
    st.fixed_dictionaries(
        {"type": st.just("tool_result"), "tool_use_id": _text},
        optional={"content": _text | st.lists(_text_block, max_size=2), "is_error": st.booleans()},
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["thinking", "document", "x"])}),
    _json,
)
_anthropic_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system"]),
        "content": _text | st.lists(_anthropic_block, max_size=3) | _json,
    }
)
_anthropic_tool = st.fixed_dictionaries(
    {
        "name": st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
        "input_schema": st.just({"type": "object"}),
    },
    optional={"description": _text, "type": st.sampled_from(["custom", "web_search_20250305"])},
)
_messages_body = st.fixed_dictionaries(
    {
        "model": _any_model,
        "max_tokens": st.integers(-1, 5000) | _json,
        "messages": st.lists(_anthropic_message, max_size=4) | _json,
    },
    optional={
        "system": _text | st.lists(_text_block, max_size=2) | _json,
        "stream": st.booleans() | _json,
        "temperature": _number,
        "top_p": _number,
        "top_k": _number,
        "stop_sequences": st.lists(_text, max_size=6) | _json,
        "tools": st.lists(_anthropic_tool | _json, max_size=2) | _json,
        "tool_choice": st.sampled_from(
            [{"type": "auto"}, {"type": "any"}, {"type": "tool", "name": "x"}, {"type": "none"}]
        )
        | _json,
        "metadata": st.fixed_dictionaries({"user_id": _text}) | _json,
        "thinking": st.sampled_from(
            [{"type": "disabled"}, {"type": "enabled", "budget_tokens": 9}]
        ),
        "output_config": st.sampled_from(
            [{"effort": "low"}, {"format": {"type": "json_schema", "schema": {"type": "object"}}}]
        )
        | _json,
        "extra": _json,
    },
)
_input_part = st.one_of(
    st.fixed_dictionaries({"type": st.just("input_text"), "text": _text}),
    st.fixed_dictionaries(
        {
            "type": st.just("input_image"),
            "image_url": st.sampled_from(["https://x.test/a.png", "data:image/png;base64,AA=="]),
        }
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["output_text", "input_file"]), "text": _text}),
    _json,
)
_response_item = st.one_of(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]),
            "content": _text | st.lists(_input_part, max_size=3),
        },
        optional={"type": st.just("message")},
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("function_call"),
            "call_id": _text,
            "name": _text,
            "arguments": _json.map(json.dumps),
        }
    ),
    st.fixed_dictionaries(
        {"type": st.just("function_call_output"), "call_id": _text, "output": _text | _json}
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["reasoning", "item_reference"])}),
    _json,
)
_responses_body = st.fixed_dictionaries(
    {"model": _any_model, "input": _text | st.lists(_response_item, max_size=4) | _json},
    optional={
        "instructions": _text | _json,
        "stream": st.booleans() | _json,
        "max_output_tokens": _number,
        "temperature": _number,
        "top_p": _number,
        "tools": st.lists(
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from(["function", "web_search"]),
                    "name": st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
                },
                optional={"parameters": st.just({"type": "object", "properties": {}})},
            )
            | _json,
            max_size=2,
        ),
        "tool_choice": st.sampled_from(["none", "auto", "required"])
        | st.fixed_dictionaries({"type": st.just("function"), "name": _text})
        | _json,
        "text": st.sampled_from(
            [
                {"format": {"type": "text"}},
                {"format": {"type": "json_object"}},
                {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
            ]
        )
        | _json,
        "store": st.booleans(),
        "previous_response_id": _text,
        "metadata": st.dictionaries(st.text(max_size=5), _text, max_size=3) | _json,
        "extra": _json,
    },
)
_embeddings_body = st.fixed_dictionaries(
    {
        "model": _any_model,
        "input": _text | st.lists(_text, max_size=5) | st.lists(st.integers(), max_size=3) | _json,
    },
    optional={
        "encoding_format": st.sampled_from(["float", "base64", "int8"]) | _json,
        "dimensions": _number,
        "user": _text | _json,
    },
)
# Valid bodies reach the router, the adapters and the fakes (the edge cases in the values).
_chat_model = st.sampled_from([*MODELS, "default"])
_some_text = st.text(min_size=1, max_size=40)
_valid_anthropic = st.fixed_dictionaries(
    {
        "model": _chat_model,
        "max_tokens": st.integers(1, 4096),
        "messages": st.lists(
            st.one_of(
                st.fixed_dictionaries(
                    {
                        "role": st.just("user"),
                        "content": _text
                        | st.lists(
                            _text_block
                            | st.just(
                                {
                                    "type": "image",
                                    "source": {
                                        "type": "base64",
                                        "media_type": "image/png",
                                        "data": "iVBORw==",
                                    },
                                }
                            ),
                            min_size=1,
                            max_size=3,
                        ),
                    }
                ),
                st.fixed_dictionaries(
                    {
                        "role": st.just("assistant"),
                        "content": _text | st.lists(_text_block, min_size=1, max_size=2),
                    }
                ),
            ),
            min_size=1,
            max_size=4,
        ),
    },
    optional={
        "system": _text | st.lists(_text_block, min_size=1, max_size=2),
        "stream": st.booleans(),
        "temperature": st.floats(0, 1),
        "top_p": st.floats(0, 1),
        "top_k": st.integers(0, 100),
        "stop_sequences": st.lists(_some_text, max_size=4),
        "tools": st.lists(
            _anthropic_tool.filter(lambda t: "type" not in t), min_size=1, max_size=2
        ),
        "tool_choice": st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "none"}]),
        "metadata": st.fixed_dictionaries({"user_id": _text}),
    },
)
_valid_input_part = st.fixed_dictionaries({"type": st.just("input_text"), "text": _text}) | st.just(
    {"type": "input_image", "image_url": "https://x.test/a.png"}
)
_valid_responses = st.fixed_dictionaries(
    {
        "model": _chat_model,
        "input": _text
        | st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.sampled_from(["user", "system", "developer"]),
                    "content": _text | st.lists(_valid_input_part, min_size=1, max_size=2),
                }
            )
            | st.fixed_dictionaries({"role": st.just("assistant"), "content": _text}),
            min_size=1,
            max_size=4,
        ),
    },
    optional={
        "instructions": _text,
        "stream": st.booleans(),
        "max_output_tokens": st.integers(1, 4096),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "tools": st.lists(
            st.fixed_dictionaries(
                {
                    "type": st.just("function"),
                    "name": st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
                },
                optional={"parameters": st.just({"type": "object", "properties": {}})},
            ),
            min_size=1,
            max_size=2,
        ),
        "tool_choice": st.sampled_from(["none", "auto", "required"]),
        "text": st.sampled_from(
            [{"format": {"type": "text"}}, {"format": {"type": "json_object"}}]
        ),
        "metadata": st.dictionaries(st.text(max_size=5), _text, max_size=3),
        "store": st.just(False),
    },
)
_valid_embeddings = st.fixed_dictionaries(
    {
        "model": st.sampled_from([*EMBEDDING_MODELS, "embeddings"]),
        "input": _some_text | st.lists(_some_text, min_size=1, max_size=5),
    },
    optional={
        "encoding_format": st.sampled_from(["float", "base64"]),
        "dimensions": st.integers(1, 16),
        "user": _text,
    },
)
_COUNTED = {"model", "messages", "system", "tools", "tool_choice"}  # count_tokens' fields
_INGRESS = {
    "/v1/messages": st.one_of(_valid_anthropic, _valid_anthropic, _messages_body),
    "/v1/messages/count_tokens": st.one_of(
        _valid_anthropic.map(lambda body: {k: v for k, v in body.items() if k in _COUNTED}),
        _messages_body,
    ),
    "/v1/responses": st.one_of(_valid_responses, _valid_responses, _responses_body),
    "/v1/embeddings": st.one_of(_valid_embeddings, _valid_embeddings, _embeddings_body),
}
# The last SSE event of a stream that ended properly, or failed after its first content.
_STREAM_ENDS = {
    "/v1/messages": {"message_stop", "error"},
    "/v1/responses": {"response.completed", "response.incomplete", "response.failed"},
}


def _last_event(text: str) -> str:
    names = [line[len("event: ") :] for line in text.splitlines() if line.startswith("event: ")]
    return names[-1] if names else ""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", list(_INGRESS))
def test_generated_ingress_bodies(server: ThreadedServer, path: str) -> None:
    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=_INGRESS[path], upstream=_upstream, anthropic_key=st.booleans())
    def run(body: dict[str, Any], upstream: Behaviour, anthropic_key: bool) -> None:
        for fake in server.fakes:
            blocked_ollama = isinstance(fake, FakeOllama) and isinstance(upstream, Blocked)
            fake.default = Ok() if blocked_ollama else upstream
        key = {"x-api-key": TEAM_KEY} if anthropic_key and "messages" in path else {}
        response = requests.post(
            f"{server.url}{path}",
            json=body,
            headers=key or {"Authorization": f"Bearer {TEAM_KEY}"},
            timeout=30,
        )
        check(response, path)
        event(f"{path} status {response.status_code}")
        if response.status_code != 200:
            return
        if body.get("stream") is True and path in _STREAM_ENDS:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            assert _last_event(response.text) in _STREAM_ENDS[path], response.text[-300:]
        elif path == "/v1/messages":
            assert response.json()["type"] == "message"
        elif path == "/v1/messages/count_tokens":
            assert response.json()["input_tokens"] >= 1
        elif path == "/v1/responses":
            assert response.json()["object"] == "response"
        else:
            assert response.json()["object"] == "list"

    run()
