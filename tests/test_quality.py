"""Heuristic quality signals: pure functions of one answer."""

from __future__ import annotations

import pytest

from gateway.quality.heuristics import (
    PASS_AT,
    is_refusal,
    json_problem,
    score_completion_body,
    score_heuristics,
)


def test_a_clean_answer_scores_one_with_no_flags() -> None:
    result = score_heuristics("Paris is the capital of France.", finish_reason="stop")
    assert result.score == 1.0
    assert result.flags == ()
    assert result.passed


@pytest.mark.parametrize("text", [None, "", "   \n"])
def test_an_empty_answer_fails(text: str | None) -> None:
    result = score_heuristics(text, finish_reason="stop")
    assert result.flags == ("empty",)
    assert result.score == 0.0
    assert not result.passed


def test_a_tool_call_without_text_is_not_empty() -> None:
    result = score_heuristics(None, finish_reason="tool_calls", tool_calls=True)
    assert result.flags == ()
    assert result.score == 1.0


def test_an_answer_cut_by_the_token_limit_is_flagged_and_fails() -> None:
    result = score_heuristics("The three reasons are: first,", finish_reason="length")
    assert result.flags == ("truncated",)
    assert 0 < result.score < PASS_AT


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't help with that.",
        "I\u2019m sorry, but I can\u2019t assist with that request.",
        "Sorry, I cannot provide that information.",
        "As an AI language model, I cannot browse the internet.",
        "I must decline to answer.",
    ],
)
def test_refusals_are_recognised(text: str) -> None:
    assert is_refusal(text)
    result = score_heuristics(text, finish_reason="stop")
    assert result.flags == ("refusal",)
    assert not result.passed


def test_a_refusal_phrase_deep_inside_a_real_answer_is_not_a_refusal() -> None:
    text = "Here is the summary you asked for. " * 10 + "The agent said: I'm sorry, but I can't."
    assert not is_refusal(text)
    assert score_heuristics(text).flags == ()


def test_the_providers_refusal_field_counts_as_a_refusal() -> None:
    result = score_heuristics(None, finish_reason="stop", refusal="I can't do that.")
    assert result.flags == ("refusal",)


def test_json_is_only_checked_when_it_was_asked_for() -> None:
    assert score_heuristics("not json", finish_reason="stop").flags == ()
    result = score_heuristics("not json", finish_reason="stop", wants_json=True)
    assert result.flags == ("invalid_json",)
    assert result.score == 0.0


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"name": "Ada"}', None),
        ('```json\n{"name": "Ada"}\n```', None),
        ("[1, 2]", "not a JSON object"),
        ('{"name": ', "not valid JSON"),
    ],
)
def test_json_problems(text: str, problem: str | None) -> None:
    assert json_problem(text) == problem


def test_json_schema_is_validated_when_given() -> None:
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer"}},
        "required": ["age"],
    }
    assert json_problem('{"age": 3}', schema) is None
    assert (json_problem('{"age": "three"}', schema) or "").startswith("schema:")
    assert (json_problem('{"name": "x"}', schema) or "").startswith("schema:")
    # A broken schema is the client's problem, not the model's.
    assert json_problem('{"age": 3}', {"type": "no-such-type"}) is None


def test_a_stream_error_fails_even_with_text() -> None:
    result = score_heuristics("Hello from the", stream_error=True)
    assert result.flags == ("stream_error",)
    assert result.score == 0.0


def test_flags_combine_multiplicatively() -> None:
    result = score_heuristics(
        "I'm sorry, but I can't continue this", finish_reason="length", wants_json=True
    )
    assert result.flags == ("refusal", "truncated")
    assert result.score == pytest.approx(0.1 * 0.4)
    assert 0.0 <= result.score <= 1.0


def test_scoring_an_openai_completion_body() -> None:
    body = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok", "refusal": None},
                "finish_reason": "length",
            }
        ]
    }
    assert score_completion_body(body).flags == ("truncated",)
    assert score_completion_body({"choices": []}).flags == ("empty",)
