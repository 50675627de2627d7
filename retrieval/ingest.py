"""Ingestion: files -> chunks -> embeddings -> upserts, incremental per source.

A source is a file's path relative to ``root`` (the current directory by default), so running
``gateway ingest`` from the same place names the same file the same way whether it is given
alone or inside a directory. For each source the chunks already stored are compared with the
new ones by id and version: new ids are added, changed versions updated (and only those are
embedded again), ids no longer produced removed. A file that fails to read is reported and its
stored chunks are left alone. ``prune`` also removes the chunks of sources that vanished from
the directories given.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm  # type: ignore[import-untyped]

from cache.embedder import Embedder

from .chunking import MAX_CHARS, OVERLAP_CHARS, Chunk, chunk_document, chunk_id, chunk_payload
from .chunking import chunk_version as version_of
from .documents import DocumentError, format_of, read_document
from .store import KnowledgeStore, Match, Point

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_KB = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
EMBED_BATCH = 64

# Told (chunks written, chunks to write) before the first batch and after each one.
Progress = Callable[[int, int], Awaitable[None]]


class IngestError(Exception):
    """Ingestion cannot start: bad arguments, a missing path, an incompatible collection."""


@dataclass(slots=True)
class IngestResult:
    """What one ingestion changed. ``stale_ids`` are the chunks that answers cached before it
    may have used and that now say something else or are gone: invalidate by them."""

    kb: str
    collection: str
    documents: int = 0
    chunks: int = 0
    unchanged: int = 0
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # one message per file not ingested
    seconds: float = 0.0

    @property
    def changed_ids(self) -> list[str]:
        """Ids written by this ingestion (added or updated)."""
        return [*self.added, *self.updated]

    @property
    def stale_ids(self) -> list[str]:
        """Ids whose previous content is no longer in the knowledge base (updated or removed)."""
        return [*self.updated, *self.removed]

    def summary(self) -> str:
        text = (
            f"kb {self.kb!r} in {self.collection!r}: {self.documents} docs, {self.chunks} chunks "
            f"({len(self.added)} added, {len(self.updated)} updated, {len(self.removed)} removed, "
            f"{self.unchanged} unchanged) in {self.seconds:.1f} s"
        )
        if self.failed:
            text += f"; {len(self.failed)} file(s) failed"
        return text


@dataclass(slots=True)
class _Pending:
    id: str
    chunk: Chunk
    version: str


def source_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` in POSIX form; absolute when it lies outside ``root``."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(root.resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def collect(paths: Sequence[Path], root: Path) -> Iterator[tuple[Path, str]]:
    """(file, source) for every supported file under ``paths``, in a stable order; hidden
    files and directories are skipped. A file named explicitly must have a supported type."""
    for path in paths:
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                hidden = any(part.startswith(".") for part in file.relative_to(path).parts)
                if file.is_file() and not hidden and format_of(file) is not None:
                    yield file, source_name(file, root)
        elif path.is_file():
            yield path, source_name(path, root)
        else:
            raise IngestError(f"{path}: no such file or directory")


def prune_prefixes(paths: Sequence[Path], root: Path) -> list[str]:
    """The source prefixes ``prune`` looks under: one per directory given."""
    return [source_name(p, root).rstrip("/") + "/" for p in paths if p.is_dir()]


def check_names(kb: str, teams: Sequence[str], residency: Sequence[str]) -> None:
    """Raise ``IngestError`` for a kb, team or region name the knowledge base cannot hold."""
    if not _KB.match(kb):
        raise IngestError(f"--kb {kb!r}: letters, digits, '.', '_' and '-' only")
    if not teams:
        raise IngestError("--teams: name at least one team, or '*' for every team")
    for name in [*teams, *residency]:
        if name != "*" and not _NAME.match(name):
            raise IngestError(f"{name!r} is not a valid team or region name")
    if "*" in residency:
        raise IngestError("--residency: name regions; leave it out for no restriction")


async def ingest(
    paths: Sequence[Path],
    *,
    store: KnowledgeStore,
    embedder: Embedder,
    kb: str,
    teams: Sequence[str],
    residency: Sequence[str] = (),
    root: Path | None = None,
    prune: bool = False,
    progress: bool = False,
    max_chars: int = MAX_CHARS,
    overlap_chars: int = OVERLAP_CHARS,
) -> IngestResult:
    """Ingest ``paths`` into ``kb``, visible to ``teams`` (``"*"``: every team) and tagged with
    ``residency`` regions (see retrieval/search.py for what the tags mean)."""
    check_names(kb, teams, residency)
    root = root or Path.cwd()
    return await ingest_files(
        list(collect(paths, root)),
        store=store,
        embedder=embedder,
        kb=kb,
        teams=teams,
        residency=residency,
        prune=prune_prefixes(paths, root) if prune else None,
        progress=progress,
        max_chars=max_chars,
        overlap_chars=overlap_chars,
    )


async def ingest_files(
    files: Sequence[tuple[Path, str]],
    *,
    store: KnowledgeStore,
    embedder: Embedder,
    kb: str,
    teams: Sequence[str],
    residency: Sequence[str] = (),
    prune: Sequence[str] | None = None,
    keep: Sequence[str] = (),
    progress: bool = False,
    on_progress: Progress | None = None,
    max_chars: int = MAX_CHARS,
    overlap_chars: int = OVERLAP_CHARS,
) -> IngestResult:
    """Ingest ``files``, each a (file to read, source name) pair: ``ingest`` once the paths are
    collected, and the gateway's admin API with the files a client uploaded. ``prune`` lists
    source prefixes (``prune_prefixes``) whose vanished sources are removed; ``keep`` names
    sources that exist but could not be read where they are (their chunks stay)."""
    started = time.perf_counter()
    check_names(kb, teams, residency)
    result = IngestResult(kb=kb, collection=store.collection)
    await store.create(embedder.dim)
    if (dim := await store.dim()) != embedder.dim:
        raise IngestError(
            f"collection {store.collection!r} holds {dim}-wide vectors; the embedder "
            f"{embedder.name} makes {embedder.dim}-wide ones: use another collection"
        )
    stored: dict[str, dict[str, str]] = {}
    for hit in await store.scan(Match("kb", (kb,)), ["source", "version"]):
        stored.setdefault(str(hit.payload.get("source")), {})[hit.id] = str(
            hit.payload.get("version")
        )
    pending: list[_Pending] = []
    seen: set[str] = set(keep)
    for file, source in files:
        if source in seen:  # named twice (a directory and a file in it)
            continue
        seen.add(source)
        try:
            chunks = chunk_document(
                read_document(file, source), max_chars=max_chars, overlap_chars=overlap_chars
            )
        except DocumentError as exc:
            result.failed.append(str(exc))
            continue
        result.documents += 1
        result.chunks += len(chunks)
        before = stored.get(source, {})
        fresh: set[str] = set()
        for chunk in chunks:
            cid = chunk_id(kb, source, chunk.key)
            version = version_of(chunk, teams=teams, residency=residency, model=embedder.name)
            fresh.add(cid)
            if cid not in before:
                result.added.append(cid)
            elif before[cid] != version:
                result.updated.append(cid)
            else:
                result.unchanged += 1
                continue
            pending.append(_Pending(cid, chunk, version))
        result.removed.extend(i for i in before if i not in fresh)
    if prune:
        for source, ids in stored.items():
            if source not in seen and any(source.startswith(p) for p in prune):
                result.removed.extend(ids)
    await _write(store, embedder, pending, kb, teams, residency, progress, on_progress)
    if result.removed:
        await store.delete(result.removed)
    await store.finish()
    result.seconds = time.perf_counter() - started
    return result


async def _write(
    store: KnowledgeStore,
    embedder: Embedder,
    pending: list[_Pending],
    kb: str,
    teams: Sequence[str],
    residency: Sequence[str],
    progress: bool,
    on_progress: Progress | None,
) -> None:
    """Embed and upsert ``pending`` in batches, with a progress bar on stderr."""
    updated_at = datetime.now(UTC).isoformat(timespec="seconds")
    if on_progress is not None:
        await on_progress(0, len(pending))
    with tqdm(total=len(pending), unit="chunk", desc=f"ingest {kb}", disable=not progress) as bar:
        for start in range(0, len(pending), EMBED_BATCH):
            batch = pending[start : start + EMBED_BATCH]
            vectors = await embedder.embed_many([p.chunk.embedding_text for p in batch])
            points = [
                Point(
                    p.id,
                    vector.tolist(),
                    chunk_payload(
                        p.chunk,
                        kb=kb,
                        teams=teams,
                        residency=residency,
                        version=p.version,
                        updated_at=updated_at,
                        model=embedder.name,
                    ),
                )
                for p, vector in zip(batch, vectors, strict=True)
            ]
            await store.upsert(points)
            bar.update(len(batch))
            if on_progress is not None:
                await on_progress(start + len(batch), len(pending))
