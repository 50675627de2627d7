"""Reading a request body the same way everywhere: within a time limit (a client that stalls
mid-body gets a 408 and the connection is closed) and, for JSON, within a nesting depth.

The depth bound exists because the gateway re-serialises forwarded fields (``metadata``, tool
``parameters``) for providers: orjson parses 1,024 levels but writes only 254, so a body nested
between the two used to fail on the way out. It is refused at parse, naming the field.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from .errors import InvalidRequest, RequestTimedOut

MAX_JSON_DEPTH = 100  # levels in a client's JSON body; tool schemas use a handful


async def read_body(request: web.Request, timeout_s: float) -> bytes:
    """The whole body, or ``RequestTimedOut`` when it takes longer than ``timeout_s``."""
    if request.content.is_eof():  # already all in (the usual small body): no timer to arm
        return await request.read()
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError as exc:
        raise RequestTimedOut(
            f"The request body did not arrive within {timeout_s:g} s.",
        ) from exc


def check_depth(body: Any, raw: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise ``InvalidRequest`` naming the field where ``body`` nests deeper than ``limit``.

    Walks the value only when ``raw`` has enough brackets to be that deep (a byte count in C),
    so an ordinary body costs nothing in Python."""
    if raw.count(b"{") + raw.count(b"[") <= limit:
        return
    stack: list[tuple[Any, int, str]] = [(body, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if depth > limit:
            raise InvalidRequest(
                f"{path or 'The body'} is nested deeper than {limit} levels.",
                param=path or None,
                code="too_deeply_nested",
            )
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, dict | list):
                    name = f"{path}.{key}" if path else str(key)
                    stack.append((item, depth + 1, name if depth < 8 else path))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, dict | list):
                    stack.append((item, depth + 1, f"{path}[{index}]" if depth < 8 else path))
