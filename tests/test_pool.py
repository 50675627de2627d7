"""The provider pool's I/O: framing, timeouts, dead upstreams, secrets in errors."""

from __future__ import annotations

import time
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.cli.localmodel import free_port
from providers.base import StreamEvent, Target
from providers.errors import UpstreamConnectionError, UpstreamProtocolError
from providers.pool import Endpoint, ProviderPool
from providers.schema import ChatRequest
from tests.conftest import MODELS, Fakes, SdkFactory, policy_for
from tests.fakes.base import Fail, Hang, Ok

HELLO = [{"role": "user", "content": "hello"}]


async def test_hanging_upstream_is_cut_at_the_deadline(
    make_gateway: Any, sdk_for: SdkFactory, fakes: Fakes
) -> None:
    fakes.openai.push(Hang(5.0))
    sdk = sdk_for(await make_gateway(policy_for(fakes, routing={"default_deadline_s": 0.5})))
    started = time.perf_counter()
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.chat.completions.create(model="gpt", messages=HELLO)
    elapsed = time.perf_counter() - started
    assert caught.value.status_code == 504
    assert caught.value.response.json()["error"]["code"] == "deadline_exceeded"
    assert elapsed < 2.0


async def test_hanging_stream_is_cut_at_the_deadline(
    make_gateway: Any, sdk_for: SdkFactory, fakes: Fakes
) -> None:
    fakes.anthropic.push(Hang(5.0))
    sdk = sdk_for(await make_gateway(policy_for(fakes, routing={"default_deadline_s": 0.5})))
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.chat.completions.create(model="claude", messages=HELLO, stream=True)
    assert caught.value.status_code == 504


async def test_first_byte_timeout_from_policy(
    make_gateway: Any, sdk_for: SdkFactory, fakes: Fakes
) -> None:
    policy = policy_for(fakes)
    slow = policy.providers[0].model_copy(
        update={"timeouts": policy.providers[0].timeouts.model_copy(update={"first_byte": 0.3})}
    )
    policy = policy.model_copy(update={"providers": [slow, *policy.providers[1:]]})
    fakes.openai.push(Hang(3.0))
    sdk = sdk_for(await make_gateway(policy))
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.chat.completions.create(model="gpt", messages=HELLO)
    assert caught.value.status_code == 504


async def test_connection_refused_is_a_502(
    make_gateway: Any, sdk_for: SdkFactory, fakes: Fakes
) -> None:
    policy = policy_for(fakes)
    dead = policy.providers[0].model_copy(update={"base_url": f"http://127.0.0.1:{free_port()}/v1"})
    policy = policy.model_copy(update={"providers": [dead, *policy.providers[1:]]})
    sdk = sdk_for(await make_gateway(policy))
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.chat.completions.create(model="gpt", messages=HELLO)
    assert caught.value.status_code == 502
    assert caught.value.response.json()["error"]["code"] == "upstream_connection_error"


async def test_provider_key_never_reaches_the_client(sdk: openai.AsyncOpenAI, fakes: Fakes) -> None:
    fakes.openai.push(Fail(400, message="Unknown parameter; your key sk-provider-openai-SECRET"))
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(model="gpt", messages=HELLO)
    text = caught.value.response.text
    assert "Unknown parameter" in text  # the client's own error comes back as is...
    assert "SECRET" not in text  # ...without the provider key
    assert "[redacted]" in text


async def test_pool_streams_and_completes_directly(fakes: Fakes) -> None:
    pool = ProviderPool([Endpoint(name="openai", kind="openai")])
    await pool.start()
    try:
        target = Target(provider="openai", base_url=fakes.openai.api_base, model=MODELS["gpt"][1])
        request = ChatRequest.from_body({"model": "gpt", "messages": HELLO, "stream": True})
        fakes.openai.push(Ok(text="one two three"))
        async with pool.stream(target, request) as upstream:
            chunks = [chunk async for chunk in upstream]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert text == "one two three"
        assert upstream.state.done
        assert upstream.state.usage.completion_tokens == 7
    finally:
        await pool.close()


async def test_unstarted_pool_fails_cleanly(fakes: Fakes) -> None:
    pool = ProviderPool([Endpoint(name="openai", kind="openai")])
    target = Target(provider="openai", base_url=fakes.openai.api_base, model="m")
    request = ChatRequest.from_body({"model": "gpt", "messages": HELLO})
    with pytest.raises(UpstreamConnectionError, match="not started"):
        await pool.complete(target, request)


async def _sse_events(payload: bytes) -> list[StreamEvent]:
    """Frame ``payload`` with the pool's SSE reader through a real HTTP response."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(0, len(payload), 7):  # split frames across reads on purpose
            await response.write(payload[i : i + 7])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = TestServer(app)
    await server.start_server()
    events: list[StreamEvent] = []

    class Recorder:
        framing = "sse"

        def build_request(self, request: ChatRequest, target: Target) -> Any:
            from providers.openai import OpenAIAdapter

            return OpenAIAdapter().build_request(request, target)

        def new_stream(self, target: Target) -> Any:
            from providers.base import StreamState

            return StreamState(id="x", model="m")

        def parse_stream_event(self, event: StreamEvent, state: Any) -> list[dict[str, Any]]:
            events.append(event)
            state.done = event.data == b"[DONE]"
            return []

    pool = ProviderPool([Endpoint(name="p", kind="openai")])
    pool._members["p"].adapter = Recorder()  # type: ignore[assignment]
    await pool.start()
    try:
        target = Target(provider="p", base_url=str(server.make_url("/v1")), model="m")
        request = ChatRequest.from_body({"model": "m", "messages": HELLO, "stream": True})
        async with pool.stream(target, request) as upstream:
            async for _ in upstream:
                pass
    finally:
        await pool.close()
        await server.close()
    return events


async def test_sse_framing_follows_the_spec() -> None:
    payload = (
        b": keep-alive comment\n\n"
        b'event: message_start\r\ndata: {"a": 1}\r\n\r\n'
        b"data: line one\ndata: line two\n\n"
        b"data:no-space\n\n"
        b"id: 7\nretry: 100\ndata: [DONE]\n\n"
    )
    events = await _sse_events(payload)
    assert [(e.event, e.data) for e in events] == [
        ("message_start", b'{"a": 1}'),
        (None, b"line one\nline two"),
        (None, b"no-space"),
        (None, b"[DONE]"),
    ]


async def test_stream_without_final_event_is_a_protocol_error() -> None:
    with pytest.raises(UpstreamProtocolError, match="before its final event"):
        await _sse_events(b"data: " + orjson.dumps({"x": 1}) + b"\n\n")
