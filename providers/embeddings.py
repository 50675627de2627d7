"""The embedding seam: the canonical request, the answer, and the adapter Protocol.

The canonical request is OpenAI's ``POST /v1/embeddings`` body, validated (clients speak it, as
for chat). An ``EmbeddingAdapter`` is the embedding half of a wire protocol: pure translations
(build one upstream request for a batch of texts, parse its 2xx body; non-2xx answers go to the
protocol's ``classify_error``, shared with chat). ``ProviderPool.embed`` splits the input into the
adapter's ``max_batch`` and does the I/O. OpenAI-compatible servers (OpenAI, vLLM, llama.cpp),
Ollama (``/api/embed``) and Gemini (``batchEmbedContents``) implement it; Anthropic has no
embeddings API.

Vectors travel as the provider sent them (``Rows``: lists of numbers, or base64 strings of
little-endian float32, which OpenAI-compatible servers send when asked), or as one float32 array
(the gateway's own model). The gateway converts only when the client asked for the other encoding
(``to_array`` / ``render_rows``): base64 in and out passes through without a decode, which on this
machine's CPython costs ~40 us for one 1536-dimension vector.
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
# Rows as a provider sent them: numbers, or base64 of little-endian float32.
Rows = list[list[float]] | list[str]
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

    vectors: Vectors | Rows
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


def check_rows(rows: Any, count: int, provider: str) -> Rows:
    """``rows`` if they are ``count`` equal-length vectors (numbers, or base64 strings of whole
    float32 values); an ``UpstreamProtocolError`` otherwise. The shape is checked, not every
    number: the provider's JSON was parsed, and a check per number would cost more than the rest
    of the request."""
    problem = ""
    if not isinstance(rows, list) or len(rows) != count:
        problem = f"{len(rows) if isinstance(rows, list) else 'no'} vectors for {count} inputs"
    elif all(isinstance(row, str) for row in rows):
        sizes = {len(row) for row in rows}
        if len(sizes) != 1 or min(sizes) == 0 or min(sizes) % 4:
            problem = "base64 vectors of unequal or impossible lengths"
    elif all(isinstance(row, list) and row for row in rows):
        lengths = {len(row) for row in rows}
        if len(lengths) != 1 or not all(isinstance(row[0], int | float) for row in rows):
            problem = "vectors of unequal lengths or not of numbers"
    else:
        problem = "vectors that are neither lists of numbers nor base64 strings"
    if problem:
        raise UpstreamProtocolError(f"{provider} returned {problem}", provider=provider)
    return rows  # type: ignore[no-any-return]


def to_array(vectors: Vectors | Rows) -> Vectors:
    """The vectors as one float32 array, a row per input."""
    if isinstance(vectors, np.ndarray):
        return vectors
    if vectors and isinstance(vectors[0], str):
        packed = [np.frombuffer(base64.b64decode(row), "<f4") for row in vectors]
        return np.stack(packed).astype(np.float32, copy=False)
    return np.asarray(vectors, dtype=np.float32)


def render_rows(vectors: Vectors | Rows, encoding: str) -> list[Any]:
    """One value per row, as OpenAI's ``embedding`` field carries it in ``encoding``: the rows as
    they came when they are already in it (no decode, no float printing), else converted."""
    if isinstance(vectors, list) and vectors:
        packed = isinstance(vectors[0], str)
        if packed == (encoding == "base64"):
            return vectors
    array = to_array(vectors)
    if encoding == "base64":
        little = array.astype("<f4", copy=False)
        return [base64.b64encode(row.tobytes()).decode() for row in little]
    return list(array)  # float32 rows: orjson writes them with OPT_SERIALIZE_NUMPY
