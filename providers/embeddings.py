"""The embedding seam: the canonical request, the answer, and the adapter Protocol.

The canonical request is OpenAI's ``POST /v1/embeddings`` body, validated (clients speak it, as
for chat). An ``EmbeddingAdapter`` is the embedding half of a wire protocol: pure translations
(build one upstream request for a batch of texts, parse its 2xx body; non-2xx answers go to the
protocol's ``classify_error``, shared with chat). ``ProviderPool.embed`` splits the input into the
adapter's ``max_batch`` and does the I/O. OpenAI-compatible servers (OpenAI, vLLM, llama.cpp),
Ollama (``/api/embed``) and Gemini (``batchEmbedContents``) implement it; Anthropic has no
embeddings API.

Vectors travel as one float32 array (a row per input): base64 from an upstream decodes into it
without a float parse, and the gateway encodes it for the client as floats or base64.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from .base import Target, UpstreamRequest
from .errors import UpstreamError, UpstreamProtocolError

Vectors = npt.NDArray[np.float32]
MAX_INPUTS = 2048  # OpenAI's limit per request
_INPUT_RULE = (
    f"must be a non-empty string or a list of 1 to {MAX_INPUTS} non-empty strings "
    "(token-id arrays are not accepted: the gateway routes across tokenizers)"
)


class EmbeddingRequest(BaseModel):
    """A validated ``POST /v1/embeddings`` body (text input; token-id arrays are refused: the
    gateway routes across providers whose tokenizers differ)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        if isinstance(value, str) and value:
            return value
        if (
            isinstance(value, list)
            and 0 < len(value) <= MAX_INPUTS
            and all(isinstance(text, str) and text for text in value)
        ):
            return value
        raise ValueError(_INPUT_RULE)

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


@dataclass(slots=True)
class Embeddings:
    """An embedding answer: one row per input, in order, and what the gateway records."""

    vectors: Vectors
    served_model: str
    prompt_tokens: int
    estimated: bool = False  # the provider reports no count: ~4 characters a token
    wire_s: float = 0.0  # time on the wire (set by the pool)


class EmbeddingAdapter(Protocol):
    """Pure translation between the canonical embedding request and one wire format."""

    max_batch: int
    """The most inputs one upstream request may carry."""

    def build_embedding_request(
        self, texts: Sequence[str], request: EmbeddingRequest, target: Target
    ) -> UpstreamRequest:
        """The upstream request embedding ``texts`` (a batch of ``request``'s inputs).

        Raises ``UnsupportedRequest`` for what the provider cannot express."""
        ...

    def parse_embeddings(self, body: bytes, target: Target, texts: Sequence[str]) -> Embeddings:
        """Translate a 2xx body that must hold one vector per text; raises ``UpstreamError``."""
        ...

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, target: Target
    ) -> UpstreamError:
        """The gateway error for a non-2xx answer (the protocol's chat classification)."""
        ...


def estimate_tokens(texts: Sequence[str]) -> int:
    """About four characters a token, for providers that do not count."""
    return sum(len(text) // 4 + 1 for text in texts)


def as_vectors(rows: Any, count: int, provider: str) -> Vectors:
    """``count`` equal-length rows of numbers (or base64 float32 strings) as one float32 array."""
    try:
        if rows and all(isinstance(row, str) for row in rows):
            array = np.stack(
                [np.frombuffer(base64.b64decode(row, validate=True), np.float32) for row in rows]
            )
        else:
            array = np.asarray(rows, dtype=np.float32)
    except (ValueError, TypeError) as exc:  # ragged rows, non-numbers, bad base64
        raise UpstreamProtocolError(
            f"{provider} returned embeddings that are not equal-length vectors", provider=provider
        ) from exc
    if array.ndim != 2 or array.shape[0] != count or array.shape[1] == 0:
        raise UpstreamProtocolError(
            f"{provider} returned {array.shape[0] if array.ndim else 0} vectors for {count} inputs",
            provider=provider,
        )
    return array
