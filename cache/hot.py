"""Recent exact hits kept in process, so a repeated question skips the Redis round trip.

An exact hit read from Redis costs as much I/O as a pass-through's upstream call (one request
out, one answer in, through a client library); served from memory it costs none. An entry is
kept for ``ttl_s`` at most (and never past its own expiry), so the one staleness this adds is
bounded: an entry that Redis drops by itself (TTL, memory eviction) without an event may still
be served here for up to ``ttl_s``. Everything else that ends an entry reaches this copy at once
or within the event stream's lag, as it reaches the vector index: removal on this replica and
invalidation (``Store.generation`` moves), ``del``/``scope`` events from any replica, and a newer
answer stored under the same exact key (``add`` events, and this replica's own stores).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .store import Entry


@dataclass(slots=True)
class _Kept:
    entry: Entry
    until: float  # time.monotonic() after which it is not served


class HotEntries:
    """Exact key -> entry, each with a deadline; at most ``capacity``, the oldest out first."""

    def __init__(self, capacity: int = 4096, ttl_s: float = 1.0) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._keys: dict[int, str] = {}  # entry id -> exact key
        self.generation = 0  # the store's generation these entries were read under

    def get(self, key: str, now: float) -> Entry | None:
        kept = self._kept.get(key)
        if kept is None:
            return None
        if kept.until < now:
            self._drop(key)
            return None
        return kept.entry

    def put(self, key: str, entry: Entry, now: float, expires_in_s: float) -> None:
        """Keep ``entry`` under ``key`` for ``ttl_s`` or ``expires_in_s``, the sooner."""
        if expires_in_s <= 0:
            return
        self.drop_key(key)
        self._kept[key] = _Kept(entry, now + min(self.ttl_s, expires_in_s))
        self._keys[entry.id] = key
        while len(self._kept) > self.capacity:
            _, kept = self._kept.popitem(last=False)
            self._keys.pop(kept.entry.id, None)

    def drop_key(self, key: str) -> None:
        if key in self._kept:
            self._drop(key)

    def drop_id(self, entry_id: int) -> None:
        key = self._keys.get(entry_id)
        if key is not None:
            self._drop(key)

    def drop_scope(self, scope: str) -> None:
        for key in [k for k, kept in self._kept.items() if kept.entry.scope == scope]:
            self._drop(key)

    def clear(self) -> None:
        self._kept.clear()
        self._keys.clear()

    def __len__(self) -> int:
        return len(self._kept)

    def _drop(self, key: str) -> None:
        kept = self._kept.pop(key)
        self._keys.pop(kept.entry.id, None)
