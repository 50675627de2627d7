"""OpenAI Responses stream events, from the internal chunk stream.

The sequence is OpenAI's: ``response.created`` and ``response.in_progress``; per output item
``response.output_item.added``, then for a message ``response.content_part.added``,
``response.output_text.delta``…, ``response.output_text.done``, ``response.content_part.done``,
and for a function call ``response.function_call_arguments.delta``…,
``response.function_call_arguments.done``; ``response.output_item.done``; at the end
``response.completed`` (``response.incomplete`` when the answer was cut by its token limit or a
filter). Every event carries a ``sequence_number``, from 0. A failure after content was sent is an
``error`` event followed by ``response.failed``.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

import orjson

from gateway.core.errors import GatewayError
from providers.base import StreamState, Usage


class ResponseObject(Protocol):
    """What the encoder needs of its exchange: the ``response`` object at any point."""

    def response(
        self,
        *,
        model: str,
        status: str,
        output: list[dict[str, Any]],
        usage: Usage | None,
        finish: str | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]: ...


def new_id(prefix: str) -> str:
    """An id in OpenAI's style (``resp_…``, ``msg_…``, ``fc_…``)."""
    return f"{prefix}_{random.getrandbits(128):032x}"


def usage_of(usage: Usage) -> dict[str, Any]:
    """A ``response``'s usage."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def text_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    """A ``message`` output item with one ``output_text`` part."""
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [part],
    }


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    """A ``function_call`` output item."""
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


class _Item:
    """An output item being streamed."""

    __slots__ = ("call_id", "id", "index", "kind", "name", "status", "text")

    def __init__(
        self, kind: str, item_id: str, index: int, call_id: str = "", name: str = ""
    ) -> None:
        self.kind = kind  # "message" or "function_call"
        self.id = item_id
        self.index = index
        self.call_id = call_id
        self.name = name
        self.text = ""  # the message's text, or the call's arguments
        self.status = "in_progress"


class ResponsesEncoder:
    """Turns one answer's internal chunks into Responses stream events."""

    def __init__(self, exchange: ResponseObject) -> None:
        self._exchange = exchange
        self._sequence = 0
        self._model = ""
        self._started = False
        self._items: list[_Item] = []
        self._open: _Item | None = None
        self._calls: dict[int, _Item] = {}  # internal tool-call index -> its item
        self._finish: str | None = None

    # -- the encoder -----------------------------------------------------------------------
    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out: list[bytes] = []
        if not self._started:
            self._begin(out, str(chunk.get("model") or ""))
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if text := delta.get("content"):
                item = self._open
                if item is None or item.kind != "message":
                    item = self._add_message(out)
                item.text += text
                out.append(
                    self._event(
                        "response.output_text.delta", **self._at(item, 0), delta=text, logprobs=[]
                    )
                )
            for call in delta.get("tool_calls") or ():
                self._tool_call(call, out)
            if finish := choice.get("finish_reason"):
                self._finish = finish
        return b"".join(out)

    def failed(self, error: GatewayError) -> bytes:
        out = [self._event("error", code=error.code, message=error.message, param=error.param)]
        failure = {"code": "server_error", "message": error.message}
        if error.status == 429:
            failure["code"] = "rate_limit_exceeded"
        response = self._exchange.response(
            model=self._model,
            status="failed",
            output=[self._item(item) for item in self._items],
            usage=None,
            error=failure,
        )
        out.append(self._event("response.failed", response=response))
        return b"".join(out)

    def end(self, state: StreamState, completed: bool) -> bytes:
        if not completed:
            return b""  # response.failed was the last word
        out: list[bytes] = []
        if not self._started:
            self._begin(out, state.served_model or state.model)
        finish = self._finish or state.finish_reason
        status = "incomplete" if finish in ("length", "content_filter") else "completed"
        self._close(out, status)
        response = self._exchange.response(
            model=self._model,
            status=status,
            output=[self._item(item) for item in self._items],
            usage=state.usage,
            finish=finish,
        )
        out.append(self._event(f"response.{status}", response=response))
        return b"".join(out)

    # -- events ----------------------------------------------------------------------------
    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, **fields, "sequence_number": self._sequence}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def _begin(self, out: list[bytes], model: str) -> None:
        self._started = True
        self._model = model
        response = self._exchange.response(model=model, status="in_progress", output=[], usage=None)
        out.append(self._event("response.created", response=response))
        out.append(self._event("response.in_progress", response=response))

    @staticmethod
    def _at(item: _Item, content_index: int | None = None) -> dict[str, Any]:
        where: dict[str, Any] = {"item_id": item.id, "output_index": item.index}
        if content_index is not None:
            where["content_index"] = content_index
        return where

    @staticmethod
    def _item(item: _Item) -> dict[str, Any]:
        if item.kind == "message":
            return text_item(item.id, item.text, item.status)
        return call_item(item.id, item.call_id, item.name, item.text, item.status)

    def _add(self, out: list[bytes], item: _Item) -> _Item:
        self._close(out, "completed")
        self._items.append(item)
        self._open = item
        added = self._item(item)
        if item.kind == "message":
            added["content"] = []
        out.append(self._event("response.output_item.added", output_index=item.index, item=added))
        return item

    def _add_message(self, out: list[bytes]) -> _Item:
        item = self._add(out, _Item("message", new_id("msg"), len(self._items)))
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        out.append(self._event("response.content_part.added", **self._at(item, 0), part=part))
        return item

    def _tool_call(self, call: dict[str, Any], out: list[bytes]) -> None:
        position = call.get("index", 0)
        function = call.get("function") or {}
        item = self._calls.get(position)
        if item is None:
            item = _Item(
                "function_call",
                new_id("fc"),
                len(self._items),
                call_id=str(call.get("id") or new_id("call")),
                name=str(function.get("name") or ""),
            )
            self._calls[position] = self._add(out, item)
        if arguments := function.get("arguments"):
            item.text += arguments
            out.append(
                self._event(
                    "response.function_call_arguments.delta", **self._at(item), delta=arguments
                )
            )

    def _close(self, out: list[bytes], status: str) -> None:
        """Finish the open item with its done events; ``status`` is what the response's end
        makes of it (a message cut by the token limit is ``incomplete``)."""
        item, self._open = self._open, None
        if item is None:
            return
        # A call is streamed whole or not at all (the stream failed): only text is cut short.
        item.status = status if item.kind == "message" else "completed"
        if item.kind == "message":
            part = {"type": "output_text", "text": item.text, "annotations": [], "logprobs": []}
            at = self._at(item, 0)
            out.append(self._event("response.output_text.done", **at, text=item.text, logprobs=[]))
            out.append(self._event("response.content_part.done", **at, part=part))
        else:
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    **self._at(item),
                    arguments=item.text,
                    name=item.name,
                )
            )
        done = self._item(item)
        out.append(self._event("response.output_item.done", output_index=item.index, item=done))
