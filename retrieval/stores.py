"""Opening the knowledge store the settings name: a Qdrant server, or an embedded engine.

Each backend module is imported only when chosen: qdrant-client and Qdrant Edge are heavy to load
and a process uses one of them.
"""

from __future__ import annotations

from pathlib import Path

from .store import KnowledgeStore


def open_store(
    *,
    collection: str,
    url: str | None,
    api_key: str | None = None,
    path: Path,
    engine: str = "edge",
    timeout_s: float = 5.0,
) -> KnowledgeStore:
    """The store the settings name: a server when ``url`` is set, else the embedded ``engine``
    under ``path``. Nothing is opened yet: the first call does (and may fail then)."""
    if url:
        from .client_store import ClientStore

        return ClientStore.server(collection, url, api_key=api_key, timeout_s=timeout_s)
    if engine == "qdrant-local":
        from .client_store import ClientStore

        return ClientStore.local(collection, path / "qdrant-local")
    from .edge_store import EdgeStore

    return EdgeStore(collection, path / "edge")
