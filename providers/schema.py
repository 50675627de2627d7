"""The canonical request: OpenAI's chat-completions schema, validated.

Clients speak OpenAI's format to the gateway, so that format is the gateway's internal one too:
the OpenAI adapter forwards the client's own body (``ChatRequest.raw``) with the model replaced,
and the other adapters translate from the typed fields. Unknown top-level fields are kept in
``raw`` (OpenAI-compatible providers receive them) but every field the gateway reads is checked
here, so a bad request fails with a message naming the field before any upstream call.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Open(BaseModel):
    """Objects OpenAI keeps extending (content parts, messages): unknown keys are tolerated."""

    model_config = ConfigDict(extra="allow", frozen=True)


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImageURL(_Open):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]
Content = str | list[ContentPart]


class FunctionCall(_Open):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(_Open):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Open):
    role: Literal["system"]
    content: Content
    name: str | None = None


class DeveloperMessage(_Open):
    role: Literal["developer"]
    content: Content
    name: str | None = None


class UserMessage(_Open):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(_Open):
    role: Literal["assistant"]
    content: Content | None = None
    tool_calls: list[ToolCall] | None = None
    name: str | None = None


class ToolMessage(_Open):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


Message = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage,
    Field(discriminator="role"),
]


class FunctionDefinition(_Open):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Open):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JSONSchemaFormat(_Open):
    name: str
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(_Open):
    include_usage: StrictBool | None = None


class ChatRequest(BaseModel):
    """A validated ``POST /v1/chat/completions`` body."""

    model_config = ConfigDict(extra="allow", frozen=True)

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    # Strict scalars: "yes" is not a boolean and "0.5" is not a number, as OpenAI itself says.
    temperature: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=2)
    top_p: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=1)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    seed: StrictInt | None = None
    n: StrictInt | None = Field(
        default=None, ge=1, le=1
    )  # one choice: fallback and caching need one
    presence_penalty: StrictFloat | StrictInt | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: StrictFloat | StrictInt | None = Field(default=None, ge=-2, le=2)

    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ChatRequest:
        """Validate ``body`` (raises ``pydantic.ValidationError``) and keep it as ``raw``."""
        request = cls.model_validate(body)
        request._raw = body
        return request

    @property
    def raw(self) -> dict[str, Any]:
        """The client's body as received (used by OpenAI-compatible pass-through)."""
        # Straight from the private-attribute dict: pydantic's __getattr__ path is ~10x slower.
        private: dict[str, Any] = self.__pydantic_private__  # type: ignore[assignment]
        return private["_raw"]  # type: ignore[no-any-return]

    @property
    def output_limit(self) -> int | None:
        """``max_completion_tokens`` if given, else the legacy ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def wants_stream_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def wants_json(self) -> bool:
        return self.response_format is not None and self.response_format.type != "text"


def content_text(content: Content | None) -> str:
    """The text of a message's content (image parts are left out)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content if isinstance(part, TextPart))
