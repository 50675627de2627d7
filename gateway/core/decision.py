"""The decision record: why a request went where it went, one JSON object per request.

No prompt text by default: the record names candidates, verdicts, attempts, versions, timings and
a SHA-256 of the prompt's messages; a team with ``log_prompts: true`` gets the messages too. Every
stage of a request annotates the one ``Decision`` in its context; ``gateway.telemetry.decisions``
keeps and ships them.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, fields
from typing import Any

import orjson


@dataclass(slots=True)
class CandidateVerdict:
    """What the router made of one candidate before any call."""

    model: str
    provider: str
    region: str
    kept: bool
    reason: str  # why dropped, or how it ranked
    score: float | None = None


@dataclass(slots=True)
class Attempt:
    """One call to a provider."""

    model: str
    provider: str
    region: str
    outcome: str  # "ok" or the error class
    latency_ms: float
    served_model: str | None = None
    status: int | None = None
    detail: str = ""
    ended_at: float = field(default_factory=time.time)  # wall clock: when the call returned

    def public(self) -> dict[str, Any]:
        """What an error body may show the client."""
        return {
            "model": self.model,
            "provider": self.provider,
            "region": self.region,
            "error": self.outcome,
            "status": self.status,
            "latency_ms": round(self.latency_ms, 1),
        }


@dataclass(slots=True)
class Decision:
    request_id: str
    team: str
    route: str
    task_type: str
    strategy: str = "priority"
    stream: bool = False
    # The client's wire format: openai.chat, anthropic.messages, openai.responses or
    # openai.embeddings.
    api: str = "openai.chat"
    started_at: float = field(default_factory=time.time)
    candidates: list[CandidateVerdict] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # drift, breaker, retries
    served_by: str | None = None
    served_model: str | None = None
    # Panic routing: every allowed candidate was held back by a breaker or an embargo, and they
    # were tried anyway (gateway/routing/router.py).
    panic: bool = False
    status: int = 200
    error: str | None = None
    overhead_ms: float | None = None
    total_ms: float | None = None
    # What the answer cost: filled once an upstream answered (cache and knowledge answers cost 0).
    source: str = "provider"  # provider | cache | knowledge | error
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    # Quality signals of the answer (heuristics, feedback, judge), by signal name.
    quality: dict[str, Any] = field(default_factory=dict)
    # The tier router's choice (gateway.tiering): tier, predicted gain, threshold, exploration.
    tiering: dict[str, Any] = field(default_factory=dict)
    # Latency breakdown besides total and overhead: time on the wire to providers, and for
    # streams the time to the first content sent to the client.
    upstream_ms: float | None = None
    ttft_ms: float | None = None
    ended_at: float | None = None  # wall clock: when the answer (or error) was ready
    # The interceptors' verdicts: {"result": hit|miss|bypass|refresh, "kind", "similarity",
    # "semantic_skipped"} and {"result": answer|context|none|off|error|..., "chunks": [{"id",
    # "score"}], "answer_skipped"} (the *_skipped: why similarity was not acted on).
    cache: dict[str, Any] | None = None
    knowledge: dict[str, Any] | None = None
    # SHA-256 of the client's messages (canonical JSON); computed off the request path.
    prompt_sha256: str | None = None
    # The client's messages, kept only for teams with ``log_prompts: true``.
    prompt: list[Any] | None = None
    # Not serialised (orjson skips a field whose name starts with "_"): the messages to hash, set
    # when the request ends.
    _messages: Any = field(default=None, repr=False, compare=False)

    @property
    def messages(self) -> Any:
        return self._messages

    @messages.setter
    def messages(self, value: Any) -> None:
        self._messages = value

    @property
    def fallbacks(self) -> int:
        return sum(1 for a in self.attempts if a.outcome != "ok")

    @property
    def regions_sent(self) -> list[str]:
        """Every region the prompt was sent to, in order of first use."""
        return list(dict.fromkeys(a.region for a in self.attempts))

    def hash_prompt(self) -> str | None:
        """``prompt_sha256``, computed once from ``messages``."""
        if self.prompt_sha256 is None and self.messages is not None:
            canonical = orjson.dumps(self.messages, option=orjson.OPT_SORT_KEYS)
            self.prompt_sha256 = hashlib.sha256(canonical).hexdigest()
            self.messages = None  # the ring does not keep prompts alive once hashed
        return self.prompt_sha256

    def to_json(self) -> bytes:
        """The JSON record (what the log, the stream and the admin API carry)."""
        self.hash_prompt()
        # orjson serialises the dataclass (and those in it) natively, in field order: no dict to
        # build first (2.1 -> 1.0 us a record); ``fallbacks`` is a property, appended.
        data = orjson.dumps(self, default=_jsonable, option=orjson.OPT_SERIALIZE_NUMPY)
        return b'%s,"fallbacks":%d}' % (data[:-1], self.fallbacks)

    def to_dict(self) -> dict[str, Any]:
        """The JSON record as a dict (a copy: changing it changes nothing here)."""
        record: dict[str, Any] = orjson.loads(self.to_json())
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Decision:
        """A decision read back from the stream (another replica's, e.g. for feedback)."""
        # Only known fields: a replica of another version may write more (rolling deploys).
        values = _known(cls, record, exclude={"_messages"})
        values["candidates"] = [
            CandidateVerdict(**_known(CandidateVerdict, c)) for c in record.get("candidates") or ()
        ]
        values["attempts"] = [Attempt(**_known(Attempt, a)) for a in record.get("attempts") or ()]
        return cls(**values)


def _known(
    kind: type, record: dict[str, Any], exclude: frozenset[str] | set[str] = frozenset()
) -> dict[str, Any]:
    names = {f.name for f in fields(kind)} - exclude
    return {k: v for k, v in record.items() if k in names}


def _jsonable(value: Any) -> Any:
    """What orjson cannot serialise itself (a numpy scalar, a set) becomes JSON anyway."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)
