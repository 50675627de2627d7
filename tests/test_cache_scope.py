"""Property tests of isolation: any change to an answer-changing part gives another scope."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cache.scope import exact_key, normalise
from gateway.stages.cache_scope import scope_of
from providers.schema import ChatRequest

texts = st.text(min_size=1, max_size=30)
requests = st.fixed_dictionaries(
    {
        "team": st.sampled_from(["alpha", "beta"]),
        "route": st.sampled_from(["default", "gpt"]),
        "system": st.none() | texts,
        "history": st.lists(texts, max_size=2),
        "temperature": st.none() | st.sampled_from([0.0, 0.2, 0.7, 1.0]),
        "max_tokens": st.none() | st.sampled_from([16, 256]),
        "stop": st.none() | st.sampled_from(["\n", "END"]),
        "json": st.booleans(),
        "tools": st.booleans(),
        "regions": st.none() | st.sampled_from([("eu",), ("eu", "onprem"), ("us",)]),
        "knowledge_off": st.booleans(),  # x-gateway-knowledge: off (no passages)
    }
)


def build(parts: dict[str, Any], question: str) -> tuple[str, ChatRequest]:
    messages: list[dict[str, Any]] = []
    if parts["system"] is not None:
        messages.append({"role": "system", "content": parts["system"]})
    for i, turn in enumerate(parts["history"]):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": turn})
    messages.append({"role": "user", "content": question})
    body: dict[str, Any] = {"model": parts["route"], "messages": messages}
    for key in ("temperature", "max_tokens", "stop"):
        if parts[key] is not None:
            body[key] = parts[key]
    if parts["json"]:
        body["response_format"] = {"type": "json_object"}
    if parts["tools"]:
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    chat = ChatRequest.from_body(body)
    scope = scope_of(
        team=parts["team"],
        route=parts["route"],
        chat=chat,
        regions=parts["regions"],
        knowledge_off=parts["knowledge_off"],
    )
    return scope, chat


@given(a=requests, b=requests, question=texts)
def test_scopes_are_equal_only_for_equal_parts(
    a: dict[str, Any], b: dict[str, Any], question: str
) -> None:
    scope_a, _ = build(a, question)
    scope_b, _ = build(b, question)
    assert (scope_a == scope_b) == (a == b)


@given(parts=requests, first=texts, second=texts)
def test_the_final_question_is_not_part_of_the_scope(
    parts: dict[str, Any], first: str, second: str
) -> None:
    assert build(parts, first)[0] == build(parts, second)[0]


@given(parts=requests, question=texts)
def test_exact_keys_ignore_case_and_spacing_only(parts: dict[str, Any], question: str) -> None:
    scope, _ = build(parts, question)
    assert exact_key(scope, question) == exact_key(scope, f"  {question.upper()}  ")
    other_scope, _ = build({**parts, "team": "gamma"}, question)
    assert exact_key(scope, question) != exact_key(other_scope, question)
    assert normalise(" A  b\tC ") == "a b c"
