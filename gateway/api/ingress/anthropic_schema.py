"""Anthropic Messages request bodies as the client sends them, validated.

Field names, types and ranges follow Anthropic's API reference (``POST /v1/messages`` and
``POST /v1/messages/count_tokens``): unknown top-level fields are refused, as Anthropic refuses
them, so that a parameter the gateway would not honour fails with a message naming it rather than
being dropped. Content blocks tolerate extra keys (``cache_control``, ``citations``): they are
hints with no counterpart across providers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Block(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class TextBlock(_Block):
    type: Literal["text"]
    text: str


class Base64Source(_Strict):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str = Field(min_length=1)


class URLSource(_Strict):
    type: Literal["url"]
    url: str = Field(pattern=r"^https?://")


class ImageBlock(_Block):
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource, Field(discriminator="type")]


class ToolUseBlock(_Block):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


ResultPart = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


class ToolResultBlock(_Block):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[ResultPart] = ""
    is_error: StrictBool | None = None


class ThinkingBlock(_Block):
    """A previous turn's reasoning: meaningful only to the model that wrote it; left out."""

    type: Literal["thinking", "redacted_thinking"]


Block = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock,
    Field(discriminator="type"),
]


class MessageParam(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class ToolParam(_Block):
    """A client tool; server tools (``web_search_…``, ``bash_…``) have no cross-provider form."""

    type: Literal["custom"] | None = None
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    input_schema: dict[str, Any]
    strict: StrictBool | None = None


class _Choice(_Strict):
    disable_parallel_tool_use: StrictBool | None = None


class AutoChoice(_Choice):
    type: Literal["auto"]


class AnyChoice(_Choice):
    type: Literal["any"]


class ToolChoiceTool(_Choice):
    type: Literal["tool"]
    name: str = Field(min_length=1)


class NoneChoice(_Strict):
    type: Literal["none"]


ToolChoice = Annotated[
    AutoChoice | AnyChoice | ToolChoiceTool | NoneChoice, Field(discriminator="type")
]


class Metadata(_Strict):
    user_id: str | None = Field(default=None, max_length=256)


class ThinkingConfig(_Block):
    type: Literal["enabled", "disabled", "adaptive"]


class JSONOutputFormat(_Strict):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Strict):
    # ``effort`` tunes Claude's reasoning: accepted, with no counterpart to forward.
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: JSONOutputFormat | None = None


class Conversation(_Strict):
    """What a Messages body and a token-count body share: the model, the turns, the tools."""

    model: str = Field(min_length=1)
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    # Hints with no cross-provider meaning (prompt caching, speed, the caller's workspace and
    # profile): accepted, not forwarded.
    cache_control: dict[str, Any] | None = None
    speed: Literal["standard", "fast"] | None = None
    user_profile_id: str | None = None
    workspace_id: str | None = None


class MessagesRequest(Conversation):
    """A validated ``POST /v1/messages`` body."""

    max_tokens: StrictInt = Field(ge=1)
    stop_sequences: list[str] | None = Field(default=None, max_length=4)
    stream: StrictBool = False
    # Strict scalars, as in the chat schema; Anthropic's temperature is 0..1.
    temperature: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=1)
    top_p: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=1)
    top_k: StrictInt | None = Field(default=None, ge=0)
    metadata: Metadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    diagnostics: dict[str, Any] | None = None
    # Refused when set (``anthropic_messages.REFUSED`` says why); typed so the refusal can.
    container: Any = None
    inference_geo: Any = None


class CountTokensRequest(Conversation):
    """A validated ``POST /v1/messages/count_tokens`` body."""
