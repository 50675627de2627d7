"""A model's default output limit and folded system turns, from the policy to each wire format."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from gateway.policy.catalog import Catalog
from gateway.policy.model import Policy, hash_key
from providers.anthropic import AnthropicAdapter
from providers.base import Target
from providers.gemini import GeminiAdapter
from providers.ollama import OllamaAdapter
from providers.openai import OpenAIAdapter
from providers.schema import ChatRequest
from providers.shaping import fold_system_messages, output_limit, without_system_role

LEAVE = "Reference: Employees get 27 days of annual leave."


def chat(messages: list[dict[str, Any]] | None = None, **body: Any) -> ChatRequest:
    return ChatRequest.from_body(
        {"model": "m", "messages": messages or [{"role": "user", "content": "hi"}], **body}
    )


def target(**options: Any) -> Target:
    return Target(provider="p", base_url="http://127.0.0.1:9/v1", model="m", options=options)


# -- the output limit ---------------------------------------------------------------------------
def test_the_clients_limit_wins_over_the_models_default() -> None:
    assert output_limit(chat(), {}) is None
    assert output_limit(chat(), {"default_max_tokens": 256}) == 256
    assert output_limit(chat(max_tokens=10), {"default_max_tokens": 256}) == 10
    assert output_limit(chat(max_completion_tokens=12), {"default_max_tokens": 256}) == 12


@pytest.mark.parametrize("stream", [False, True])
def test_openai_compatible_requests_get_the_default_limit(stream: bool) -> None:
    adapter = OpenAIAdapter()
    body = orjson.loads(adapter.build_request(chat(stream=stream), target()).body)
    assert "max_tokens" not in body  # no default configured: the body is the client's
    body = orjson.loads(
        adapter.build_request(chat(stream=stream), target(default_max_tokens=256)).body
    )
    assert body["max_tokens"] == 256
    limited = chat(stream=stream, max_completion_tokens=9)
    body = orjson.loads(adapter.build_request(limited, target(default_max_tokens=256)).body)
    assert body["max_completion_tokens"] == 9
    assert "max_tokens" not in body


def test_every_wire_format_carries_the_default_limit() -> None:
    options = target(default_max_tokens=77)
    ollama = orjson.loads(OllamaAdapter().build_request(chat(), options).body)
    assert ollama["options"]["num_predict"] == 77
    gemini = orjson.loads(GeminiAdapter().build_request(chat(), options).body)
    assert gemini["generationConfig"]["maxOutputTokens"] == 77
    anthropic = orjson.loads(AnthropicAdapter().build_request(chat(), options).body)
    assert anthropic["max_tokens"] == 77


# -- folding system turns -----------------------------------------------------------------------
def test_system_turns_go_into_the_next_user_turn() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": LEAVE}]},
        {"role": "user", "content": "How many days of leave?"},
        {"role": "assistant", "content": "27."},
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": [{"type": "text", "text": "And sick days?"}]},
    ]
    assert fold_system_messages(messages) == [
        {"role": "user", "content": f"Be brief.\n\n{LEAVE}\n\nHow many days of leave?"},
        {"role": "assistant", "content": "27."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Answer in French."},
                {"type": "text", "text": "And sick days?"},
            ],
        },
    ]
    # What no user turn follows is not lost: it becomes one.
    assert fold_system_messages(
        [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]
    ) == [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
    ]
    assert messages[0] == {"role": "system", "content": "Be brief."}  # the input is untouched


def test_openai_compatible_and_ollama_requests_fold_when_the_model_has_no_system_role() -> None:
    request = chat([{"role": "system", "content": LEAVE}, {"role": "user", "content": "Leave?"}])
    folded = [{"role": "user", "content": f"{LEAVE}\n\nLeave?"}]
    kept = orjson.loads(OpenAIAdapter().build_request(request, target()).body)
    assert kept["messages"][0] == {"role": "system", "content": LEAVE}
    body = orjson.loads(OpenAIAdapter().build_request(request, target(system_role=False)).body)
    assert body["messages"] == folded
    assert request.raw["messages"][0]["role"] == "system"  # the client's body is not changed
    ollama = orjson.loads(OllamaAdapter().build_request(request, target(system_role=False)).body)
    assert ollama["messages"] == folded
    plain = chat()
    assert without_system_role(plain) is plain  # nothing to fold: the same request
    assert [m.role for m in without_system_role(request).messages] == ["user"]


# -- the policy ---------------------------------------------------------------------------------
def policy(**model: Any) -> Policy:
    return Policy.model_validate(
        {
            "providers": [
                {"name": "local", "kind": "openai", "base_url": "http://127.0.0.1:8081/v1"},
                {
                    "name": "claude",
                    "kind": "anthropic",
                    "base_url": "http://127.0.0.1:9",
                    "default_max_tokens": 1000,
                },
            ],
            "models": [
                {"name": "small", "provider": "local", "id": "small-q4", **model},
                {"name": "sonnet", "provider": "claude", "id": "claude-sonnet-4-20250514"},
                {
                    "name": "haiku",
                    "provider": "claude",
                    "id": "claude-3-5-haiku-20241022",
                    "default_max_tokens": 300,
                },
            ],
            "teams": [{"name": "t", "key_sha256": hash_key("k")}],
        }
    )


def test_the_policy_puts_model_options_beside_the_providers() -> None:
    catalog = Catalog(policy(default_max_tokens=256, system_role=False), {})
    small = catalog.by_alias["small"].target.options
    assert small["default_max_tokens"] == 256
    assert small["system_role"] is False
    assert "system_role" not in catalog.by_alias["sonnet"].target.options
    assert catalog.by_alias["sonnet"].target.options["default_max_tokens"] == 1000
    assert catalog.by_alias["haiku"].target.options["default_max_tokens"] == 300  # the model's
    plain = Catalog(policy(), {}).by_alias["small"].target.options
    assert "default_max_tokens" not in plain
    assert "system_role" not in plain
    with pytest.raises(ValidationError, match="default_max_tokens"):
        policy(default_max_tokens=0)
    with pytest.raises(ValidationError, match="system_roles"):
        policy(system_roles=False)
