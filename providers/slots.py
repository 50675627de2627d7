"""Fair shares of a provider's connection slots.

A provider's ``max_connections`` is how many requests this replica sends it at once. When every
slot is taken, a request waits, and who waits is the gateway's business, not the provider's: the
pool waits here, in a queue per *share* (an opaque name the caller sets: the gateway uses the
team), FIFO within a share; a freed slot goes to the waiting share that holds the fewest slots
(ties in turn, round-robin), so one share's backlog cannot starve another's first request. A
share may also be capped on a provider (at most N of its slots).

A request that gets no slot within its wait (the provider's ``timeouts.slot_wait``) raises
``PoolSaturated``: local saturation, never a verdict on the provider's health (the attempt loop
moves to the next candidate and no breaker counts it). The caller may bound the wait further by
its own time budget (``bound_wait``: the gateway's attempt sets its share of the request's
deadline), so that a slot wait longer than the deadline ends as ``PoolSaturated`` in time for the
next candidate rather than as the attempt's timeout.

The share is read from a context variable that the caller sets once per request (``use_share``)
rather than passed through every ``ProviderPool`` call: the adapters' and the pool's call shapes
stay as they are, and whatever a request starts (plain, streamed, embeddings, a shadow copy)
waits in that request's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field

from .errors import PoolSaturated


@dataclass(frozen=True, slots=True)
class Share:
    """Who is asking (``name``) and its cap per provider (a provider not listed: no cap)."""

    name: str = ""
    caps: Mapping[str, int] = field(default_factory=dict)


_NOBODY = Share()
_SHARE: ContextVar[Share] = ContextVar("provider_share", default=_NOBODY)


def current_share() -> Share:
    return _SHARE.get()


def enter_share(share: Share) -> Token[Share]:
    """From now on in this context, wait in ``share``'s queue; ``leave_share`` undoes it."""
    return _SHARE.set(share)


def leave_share(token: Token[Share]) -> None:
    _SHARE.reset(token)


@dataclass(slots=True)
class WaitBound:
    """A caller's bound on slot waits: the loop time (``until``) by which a wait must end, and
    whether a wait was still under way when the caller's context ended it (``waiting``: set when
    the wait starts, cleared only when it ends by itself, so a caller whose own timeout cancelled
    the wait can tell saturation from a slow provider)."""

    until: float
    waiting: bool = False


_BOUND: ContextVar[WaitBound | None] = ContextVar("provider_slot_bound", default=None)


@contextlib.contextmanager
def bound_wait(bound: WaitBound) -> Iterator[None]:
    """Slot waits inside end by ``bound.until`` at the latest (and sooner by their slot wait)."""
    token = _BOUND.set(bound)
    try:
        yield
    finally:
        _BOUND.reset(token)


@contextlib.contextmanager
def use_share(share: Share) -> Iterator[None]:
    """Attempts made inside (and tasks started inside) wait in ``share``'s queue."""
    token = _SHARE.set(share)
    try:
        yield
    finally:
        _SHARE.reset(token)


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[None]
    cap: int | None


class FairSlots:
    """``capacity`` slots; waiters served fewest-held-first across shares, FIFO within one.

    Invariant after every change: either no slot is free or no queued waiter may take one (its
    share is at its cap). So a newcomer takes a free slot at once only when its own share has
    nobody queued and is under its cap: no barging past a waiter of its own share.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._held: dict[str, int] = {}
        self._queues: dict[str, deque[_Waiter]] = {}
        self._in_use = 0
        # When each share was last given a slot: among shares holding as few, the one served
        # longest ago goes first (round-robin). One entry per share name (teams: bounded).
        self._served: dict[str, int] = {}
        self._tick = 0

    @property
    def in_use(self) -> int:
        return self._in_use

    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def held_by(self, share: str) -> int:
        return self._held.get(share, 0)

    def slot(self, provider: str, wait_s: float) -> _Slot:
        """``async with``: hold one slot for the body; ``PoolSaturated`` after ``wait_s``
        without one."""
        return _Slot(self, provider, wait_s)

    async def _acquire(self, provider: str, share: str, cap: int | None, wait_s: float) -> None:
        if self._in_use < self.capacity and share not in self._queues and _room(self, share, cap):
            self._take(share)
            return
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), cap)
        self._queues.setdefault(share, deque()).append(waiter)
        start = loop.time()
        until = start + wait_s
        bound = _BOUND.get()
        if bound is not None:
            until = min(until, bound.until)
            bound.waiting = True
        try:
            async with asyncio.timeout_at(until):
                await waiter.future
            if bound is not None:
                bound.waiting = False
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.future.done() and not waiter.future.cancelled():
                # Granted just as the wait ended: hand the slot on rather than leak it.
                self._release(share)
            else:
                waiter.future.cancel()
                self._forget(share, waiter)
            if isinstance(exc, TimeoutError):
                if bound is not None:
                    bound.waiting = False
                busy = "its share" if cap is not None and self.held_by(share) >= cap else "all"
                raise PoolSaturated(
                    f"{provider}: no free connection slot in {until - start:.3g} s "
                    f"({busy} of its slots in use on this replica)",
                    provider=provider,
                    retry_after=1.0,
                ) from None
            raise

    def _take(self, share: str) -> None:
        self._tick += 1
        self._served[share] = self._tick
        self._in_use += 1
        self._held[share] = self._held.get(share, 0) + 1

    def _release(self, share: str) -> None:
        self._in_use -= 1
        left = self._held.get(share, 0) - 1
        if left > 0:
            self._held[share] = left
        else:
            self._held.pop(share, None)
        if self._queues:
            self._dispatch()

    def _forget(self, share: str, waiter: _Waiter) -> None:
        queue = self._queues.get(share)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(waiter)
        if not queue:
            del self._queues[share]
        self._dispatch()  # the head of this share may have been held back by the cap only

    def _dispatch(self) -> None:
        """Grant free slots to queue heads: the waiting share holding the fewest slots first,
        ties in turn (round-robin), so a share with a backlog in flight yields to a newcomer."""
        while self._in_use < self.capacity and self._queues:
            chosen: tuple[str, deque[_Waiter]] | None = None
            best = (0, 0)
            for share, queue in self._queues.items():
                rank = (self.held_by(share), self._served.get(share, 0))
                if _room(self, share, queue[0].cap) and (chosen is None or rank < best):
                    chosen, best = (share, queue), rank
            if chosen is None:
                return  # every waiting share is at its cap
            share, queue = chosen
            waiter = queue.popleft()
            if not queue:
                del self._queues[share]
            self._take(share)
            waiter.future.set_result(None)


class _Slot:
    """One use of a slot (a class, not a generator: it is on every request's path)."""

    __slots__ = ("provider", "share", "slots", "wait_s")

    def __init__(self, slots: FairSlots, provider: str, wait_s: float) -> None:
        self.slots = slots
        self.provider = provider
        self.wait_s = wait_s
        self.share = ""

    async def __aenter__(self) -> None:
        share = _SHARE.get()
        name = self.share = share.name
        cap = share.caps.get(self.provider) if share.caps else None
        slots = self.slots
        if (
            slots._in_use < slots.capacity
            and not slots._queues
            and (cap is None or slots._held.get(name, 0) < cap)
        ):
            slots._take(name)  # the common case, without a coroutine more
            return
        await slots._acquire(self.provider, name, cap, self.wait_s)

    async def __aexit__(self, *exc: object) -> None:
        self.slots._release(self.share)


def _room(slots: FairSlots, share: str, cap: int | None) -> bool:
    return cap is None or slots.held_by(share) < cap
