"""What a ``bench.overhead`` run starts and talks to: the servers and the correctness check.

The shared request, answer and policy constants; the fake OpenAI-compatible upstream and its
handlers; the bare aiohttp forwarder; the gateway under test (``start_gateway``,
``policy_yaml``); the process bookkeeping (``Procs``, ``free_port``, ``wait_ready``,
``server_pids``); the check every target passes before it is measured (``check_targets``).
The load is in bench/overhead_load.py, the runner and its report in bench/overhead.py;
bench/overhead_telemetry.py, bench/overhead_ingress.py, bench/soak.py and
bench/profile_gateway.py start the same servers from here.

Each server runs in its own process: ``python -m bench.overhead_servers ROLE ARGS``, ROLE one
of ``_upstream``, ``_forwarder``, ``_collector`` (the OTLP sink of bench/overhead_telemetry.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench import overhead_cache as cached
from bench import overhead_ingress as ingress
from gateway.policy.model import hash_key

HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
TEAM_KEY = "bench-team-key-0001"
ALIAS = "bench-chat"
UPSTREAM_MODEL = "gpt-4o-mini-2024-07-18"
FAKE_CONTENT = "The capital of France is Paris."
WARMUP_S = 2.0

# A realistic non-streaming answer (~400 bytes), fixed so every request costs the same.
FAKE_BODY = json.dumps(
    {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": UPSTREAM_MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": FAKE_CONTENT, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 24,
            "completion_tokens": 8,
            "total_tokens": 32,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
        "system_fingerprint": "fp_06737a9306",
    },
    separators=(",", ":"),
).encode()

REQUEST_BODY = json.dumps(
    {
        "model": ALIAS,
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        "max_tokens": 64,
        "temperature": 0.2,
    },
    separators=(",", ":"),
)
REQUEST_HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {TEAM_KEY}"}

LABELS = {
    "a": "(a) fake upstream, direct",
    "b": "(b) bare aiohttp forwarder",
    "c": "(c) gateway pass-through",
    **cached.LABELS,
    "m": "(m) gateway /v1/messages",
    "e": "(e) upstream embeddings",
    "g": "(g) bare forwarder, embeddings",
    "f": "(f) gateway /v1/embeddings",
}
# Body and headers each target is sent (a, b, c: the chat request).
REQUESTS: dict[str, tuple[str, dict[str, str]]] = {
    **dict.fromkeys("abchu", (REQUEST_BODY, REQUEST_HEADERS)),
    **ingress.requests(ALIAS, TEAM_KEY),
}
REQUESTS["g"] = REQUESTS["e"]
GATEWAY_PATHS = {"c": PATH, "m": ingress.MESSAGES_PATH, "f": ingress.EMBED_PATH}
CACHE_TARGETS = "hu"  # served by a second gateway, with the cache on and Redis


class BenchError(Exception):
    """A setup or correctness failure that makes the figures meaningless."""


# --------------------------------------------------------------------------- server roles


async def _fake_completion(request: web.Request) -> web.Response:
    body = await request.read()
    if (answer := cached.unique_answer(body)) is not None:  # (u): each question its answer
        unique = FAKE_BODY.replace(FAKE_CONTENT.encode(), answer.encode())
        return web.Response(body=unique, content_type="application/json")
    return web.Response(body=FAKE_BODY, content_type="application/json")


async def _fake_embeddings(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ingress.FAKE_EMBEDDING_BODY, content_type="application/json")


def serve_upstream(port: int) -> None:
    """(a), (e): answers every chat completion with ``FAKE_BODY`` and every embeddings request
    with one fixed vector; no sleeps."""
    app = web.Application()
    app.router.add_post(PATH, _fake_completion)
    app.router.add_post(ingress.EMBED_PATH, _fake_embeddings)
    web.run_app(app, host=HOST, port=port, access_log=None, print=None)


SESSION = web.AppKey("session", aiohttp.ClientSession)


def forwarder_app(upstream_base: str) -> web.Application:
    """(b), (g): read the body, POST it to the same path upstream on one shared session, return
    body and status."""

    async def session_lifetime(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        yield
        await app[SESSION].close()

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        async with request.app[SESSION].post(
            upstream_base + request.path, data=body, headers={"Content-Type": "application/json"}
        ) as response:
            payload = await response.read()
            return web.Response(
                body=payload, status=response.status, content_type="application/json"
            )

    app = web.Application()
    app.cleanup_ctx.append(session_lifetime)
    app.router.add_post(PATH, forward)
    app.router.add_post(ingress.EMBED_PATH, forward)
    return app


def serve_forwarder(port: int, upstream_base: str) -> None:
    web.run_app(forwarder_app(upstream_base), host=HOST, port=port, access_log=None, print=None)


ROLES: dict[str, Callable[[list[str]], None]] = {
    "_upstream": lambda a: serve_upstream(int(a[0])),
    "_forwarder": lambda a: serve_forwarder(int(a[0]), a[1]),
    "_collector": lambda a: _telemetry().serve_collector(int(a[0])),
}


def _telemetry() -> Any:
    """``bench.overhead_telemetry`` (imported late: it imports this module)."""
    from bench import overhead_telemetry

    return overhead_telemetry


# --------------------------------------------------------------------------- orchestration


class Procs:
    """Every subprocess started; ``close`` stops them all (SIGINT, then SIGKILL)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Path:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=Path(__file__).resolve().parent.parent,
            )
        self.procs.append((name, proc))
        return log

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop one process (SIGINT, then SIGKILL)."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def close(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for _, proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(
    name: str, port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 15.0
) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise BenchError(f"{name} exited with code {proc.returncode} at start:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise BenchError(f"{name} did not listen on {HOST}:{port} within {timeout_s:g} s (log: {log})")


SERVER_OF = {"a": "upstream", "e": "upstream", "b": "forwarder", "g": "forwarder"}
SERVER_OF |= dict.fromkeys(GATEWAY_PATHS, "gateway") | dict.fromkeys(CACHE_TARGETS, "gateway-cache")


def server_pids(procs: Procs) -> dict[str, int]:
    """The process id of the server behind each target."""
    by_name = {name: proc.pid for name, proc in procs.procs}
    return {key: by_name[name] for key, name in SERVER_OF.items() if name in by_name}


def policy_yaml(upstream_port: int, extra: str = "") -> str:
    return f"""\
providers:
  - name: fake
    kind: openai
    base_url: http://{HOST}:{upstream_port}/v1
    region: us
models:
  - name: {ALIAS}
    provider: fake
    id: {UPSTREAM_MODEL}
{ingress.policy_models("fake")}teams:
  - name: bench
    key_sha256: {hash_key(TEAM_KEY)}
    routes: ["*"]
{extra}"""


def start_servers(procs: Procs, selected: str) -> dict[str, str]:
    """Start the upstream and what ``selected`` needs; the URL of each target."""
    me = [sys.executable, "-m", "bench.overhead_servers"]
    upstream_port = free_port()
    log = procs.start("upstream", [*me, "_upstream", str(upstream_port)])
    wait_ready("fake upstream", upstream_port, procs.procs[-1][1], log)
    urls = {
        "a": f"http://{HOST}:{upstream_port}{PATH}",
        "e": f"http://{HOST}:{upstream_port}{ingress.EMBED_PATH}",
    }
    if "b" in selected or "g" in selected:  # one forwarder serves (b) and (g)
        port = free_port()
        upstream_base = f"http://{HOST}:{upstream_port}"
        log = procs.start("forwarder", [*me, "_forwarder", str(port), upstream_base])
        wait_ready("forwarder", port, procs.procs[-1][1], log)
        urls["b"] = f"http://{HOST}:{port}{PATH}"
        urls["g"] = f"http://{HOST}:{port}{ingress.EMBED_PATH}"
    if set(selected) & set(GATEWAY_PATHS):  # one gateway serves (c), (m) and (f)
        chat = start_gateway(procs, upstream_port, [sys.executable, "-m", "gateway"])
        base = chat.removesuffix(PATH)
        urls.update({key: f"{base}{path}" for key, path in GATEWAY_PATHS.items()})
    if set(selected) & set(CACHE_TARGETS):  # one gateway with the cache and Redis: (h), (u)
        redis_url = _telemetry().start_redis(procs)
        chat = start_gateway(
            procs,
            upstream_port,
            [sys.executable, "-m", "gateway"],
            name="gateway-cache",
            extra_policy=cached.policy_cache_section(),
            extra_env=cached.gateway_env(redis_url),
        )
        urls.update(dict.fromkeys(CACHE_TARGETS, chat))
    return {k: v for k, v in urls.items() if k in selected}


def start_gateway(
    procs: Procs,
    upstream_port: int,
    launcher: list[str],
    *,
    name: str = "gateway",
    extra_policy: str = "",
    extra_env: dict[str, str] | None = None,
) -> str:
    config = procs.workdir / f"{name}.yaml"
    config.write_text(policy_yaml(upstream_port, extra_policy), encoding="utf-8")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_LOG_LEVEL"] = "WARNING"
    env.update(extra_env or {})
    cmd = [*launcher, "serve", "--config", str(config), "--host", HOST, "--port", str(port)]
    log = procs.start(name, cmd, env)
    # The cache's gateway loads the embedder before it listens.
    wait_ready(name, port, procs.procs[-1][1], log, 120.0 if extra_env else 15.0)
    return f"http://{HOST}:{port}{PATH}"


async def check_targets(urls: dict[str, str]) -> None:
    """Every target answers 200 with the fake's content in its client's shape, (h) from the
    cache; raises ``BenchError`` otherwise (the figures would be meaningless)."""
    async with aiohttp.ClientSession() as session:
        for key, url in urls.items():
            body, headers = REQUESTS[key]
            if key == "h" and (verdict := await cached.check_hit(url, body, headers)) != "hit":
                raise BenchError(f"(h) is not answered from the cache: x-gateway-cache {verdict}")
            expected = FAKE_CONTENT
            if key == "u":
                body = cached.unique_body(json.loads(body), os.getpid(), 0)
                expected = cached.unique_answer(body.encode()) or ""
            async with session.post(url, data=body, headers=headers) as response:
                text = await response.text()
                status = response.status
            if status != 200 or not ingress.answer_ok(key, text, expected):
                raise BenchError(
                    f"correctness check failed for {LABELS[key]} ({url}): HTTP {status}, "
                    f"expected 200 with the fake's content in the client's shape; "
                    f"body: {text[:400]}"
                )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one server role in this process (the runners start them as subprocesses)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ROLES:
        print(f"usage: python -m bench.overhead_servers {{{','.join(ROLES)}}} ...", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        ROLES[argv[0]](argv[1:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
