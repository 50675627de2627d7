"""OpenAI Responses request bodies (the stateless subset), validated.

What the gateway can honour for any provider is accepted; what needs OpenAI's server-side state or
tools is refused with a 400 naming the field (``previous_response_id``, ``store: true``,
``conversation``, ``background``, ``prompt``, built-in tools, ``include``), rather than dropped.
Unknown top-level fields are refused too, as OpenAI refuses them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    Tag,
    model_validator,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Open(BaseModel):
    """Objects OpenAI keeps extending (items carry ``id``, ``status``, annotations): tolerated."""

    model_config = ConfigDict(extra="allow", frozen=True)


class InputText(_Open):
    type: Literal["input_text"]
    text: str


class InputImage(_Open):
    type: Literal["input_image"]
    image_url: str = Field(pattern=r"^(https?://|data:)")
    detail: Literal["low", "high", "auto", "original"] | None = None


class OutputText(_Open):
    type: Literal["output_text"]
    text: str


class Refusal(_Open):
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[InputText | InputImage | OutputText | Refusal, Field(discriminator="type")]


class MessageItem(_Open):
    """A message, with or without ``"type": "message"`` (the SDK's easy form leaves it out)."""

    type: Literal["message"] | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]


class FunctionCallItem(_Open):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str


OutputPart = Annotated[InputText | InputImage, Field(discriminator="type")]


class FunctionCallOutputItem(_Open):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[OutputPart]


class ReasoningItem(_Open):
    """A reasoning item from an earlier response: only its model can read it; left out."""

    type: Literal["reasoning"]


def _item_kind(value: Any) -> str:
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if isinstance(kind, str) else "message"


Item = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_item_kind),
]


class FunctionTool(_Open):
    type: Literal["function"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class FunctionChoice(_Strict):
    type: Literal["function"]
    name: str = Field(min_length=1)


class TextFormat(_Strict):
    type: Literal["text"]


class JSONObjectFormat(_Strict):
    type: Literal["json_object"]


class JSONSchemaFormat(_Strict):
    type: Literal["json_schema"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: StrictBool | None = None


Format = Annotated[TextFormat | JSONObjectFormat | JSONSchemaFormat, Field(discriminator="type")]


class TextConfig(_Strict):
    format: Format | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


# Fields that need OpenAI's server-side state: refused when set, with why.
REFUSED: dict[str, str] = {
    "previous_response_id": "the gateway keeps no responses; send the whole conversation in "
    "'input' (with 'store' left out or false)",
    "conversation": "the gateway keeps no conversations; send the whole conversation in 'input'",
    "prompt": "stored prompts live at OpenAI; send 'instructions' and 'input'",
    "store": "the gateway keeps no responses; leave 'store' out or set it to false",
    "background": "the gateway keeps no responses to poll; leave 'background' out",
    "include": "the gateway returns no extra output data ('include' must be empty)",
    "reasoning": "the gateway's request model has no reasoning effort; leave 'reasoning' out",
}


def refused_field(body: dict[str, Any]) -> str | None:
    """The first field of ``body`` asking for what the gateway does not do, if any."""
    for field in REFUSED:
        value = body.get(field)
        if field == "reasoning" and isinstance(value, dict):
            value = any(v is not None for v in value.values()) or None
        if value not in (None, False, [], {}):
            return field
    return None


class ResponsesRequest(_Strict):
    """A validated ``POST /v1/responses`` body."""

    model: str = Field(min_length=1)
    input: str | list[Item]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    stream: StrictBool = False
    max_output_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=2)
    top_p: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=1)
    text: TextConfig | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    truncation: Literal["disabled"] | None = None
    stream_options: dict[str, Any] | None = None
    # Accepted only empty or false (``refused_field`` says why otherwise).
    store: StrictBool | None = None
    background: StrictBool | None = None
    include: list[str] | None = None
    reasoning: dict[str, Any] | None = None
    previous_response_id: None = None
    conversation: None = None
    prompt: None = None

    @model_validator(mode="after")
    def _some_input(self) -> ResponsesRequest:
        if isinstance(self.input, list) and not self.input:
            raise ValueError("input must not be an empty list")
        return self
