"""Alerts: a log line, a bounded in-process list, and an optional webhook (JSON POST).

Raised for: a breaker opening, a provider rejecting the gateway's key, a served model version that
differs from its pin. Webhook delivery is best effort and never delays a request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

import aiohttp
import orjson

log = logging.getLogger("gateway.alerts")  # a stable name ops filter on (docs/routing.md)


class Alerts:
    """Where alerts go. ``emit`` is synchronous; delivery happens in the background."""

    def __init__(self, webhook_url: str | None = None, *, keep: int = 200) -> None:
        self.webhook_url = webhook_url
        self._recent: deque[dict[str, Any]] = deque(maxlen=keep)
        self._session: aiohttp.ClientSession | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def emit(self, kind: str, message: str, **fields: Any) -> dict[str, Any]:
        alert = {"kind": kind, "message": message, "at": time.time(), **fields}
        self._recent.append(alert)
        log.warning(orjson.dumps(alert).decode())
        if self.webhook_url:
            task = asyncio.ensure_future(self._deliver(alert))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        return alert

    def recent(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [a for a in self._recent if kind is None or a["kind"] == kind]

    async def _deliver(self, alert: dict[str, Any]) -> None:
        assert self.webhook_url is not None
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        try:
            async with self._session.post(
                self.webhook_url,
                data=orjson.dumps(alert),
                headers={"Content-Type": "application/json"},
            ) as response:
                if response.status >= 400:
                    log.warning("alert webhook answered HTTP %s", response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("alert webhook unreachable: %s", type(exc).__name__)

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
