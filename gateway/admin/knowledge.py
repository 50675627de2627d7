"""``POST /admin/knowledge/ingest``: documents into the knowledge base of a running gateway;
``GET /admin/knowledge/answers``: how curated answers are being decided (bands, outcomes,
verifications, entries withdrawn by feedback).

The embedded store (Qdrant Edge under ``./data``) is opened by one process at a time, and the
gateway holds it while it runs; ``gateway ingest`` then uploads the files here instead, and the
gateway ingests them into the store it already has open, so they are searchable by the next
request. The body is ``multipart/form-data``: a ``meta`` JSON part (``kb``, ``teams``,
``residency``, ``sources`` in the order of the file parts, ``prune``: source prefixes whose
vanished files are removed, ``unreadable``: sources the client could not read, which keep their
chunks, optionally ``collection``), then one ``file`` part per document.
The answer streams NDJSON: ``{"event": "progress", "done", "total"}`` lines while chunks are
embedded and written, then one ``{"event": "result", ...}`` (or ``{"event": "error"}``). One
ingestion at a time: a second waits for the first. Admin key required.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from cache.store import CacheUnavailable
from gateway.core.errors import InvalidRequest, KnowledgeNotConfigured
from gateway.core.runtime import Runtime
from gateway.stages.cache import CacheStage
from gateway.stages.knowledge import KnowledgeStage
from retrieval.documents import format_of
from retrieval.ingest import IngestError, IngestResult, check_names, ingest_files
from retrieval.store import StoreUnavailable

from .api import _authorise

_CHUNK = 1 << 16

log = logging.getLogger(__name__)


def _knowledge(runtime: Runtime) -> KnowledgeStage:
    for stage in runtime.interceptors:
        if isinstance(stage, KnowledgeStage):
            return stage
    raise KnowledgeNotConfigured("This gateway's policy has no (enabled) knowledge section.")


def _strings(meta: dict[str, Any], name: str) -> list[str]:
    value = meta.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"meta.{name} must be a list of strings.", param=name)
    return value


def _meta(raw: bytes, stage: KnowledgeStage) -> dict[str, Any]:
    try:
        meta = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The meta part is not valid JSON: {exc}", param="meta") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("kb"), str):
        raise InvalidRequest("The meta part must be an object with a kb.", param="meta")
    for name in ("teams", "residency", "sources", "prune", "unreadable"):
        meta[name] = _strings(meta, name)
    collection = meta.get("collection")
    if collection is not None and collection != stage.store.collection:
        raise InvalidRequest(
            f"This gateway's knowledge base is the collection {stage.store.collection!r}, "
            f"not {collection!r}.",
            param="collection",
        )
    try:
        check_names(meta["kb"], meta["teams"], meta["residency"])
    except IngestError as exc:
        raise InvalidRequest(str(exc), param="meta") from exc
    return meta


async def _save(part: BodyPartReader, folder: Path, index: int, source: str) -> Path:
    """The uploaded file on disk under its own name (the fallback title comes from it)."""
    name = PurePosixPath(source).name
    if not name or format_of(Path(name)) is None:
        raise InvalidRequest(f"{source!r}: not a supported document type.", param="sources")
    path = folder / str(index) / name
    path.parent.mkdir()
    with path.open("wb") as out:
        while chunk := await part.read_chunk(_CHUNK):
            out.write(chunk)
    return path


async def _receive(
    request: web.Request, stage: KnowledgeStage, folder: Path
) -> tuple[dict[str, Any], list[tuple[Path, str]]]:
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequest("Send multipart/form-data: a meta part, then file parts.")
    reader = await request.multipart()
    first = await reader.next()
    if not isinstance(first, BodyPartReader) or first.name != "meta":
        raise InvalidRequest("The first part must be the meta JSON.", param="meta")
    meta = _meta(await first.read(), stage)
    sources: list[str] = meta["sources"]
    files: list[tuple[Path, str]] = []
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or part.name != "file":
            raise InvalidRequest("After meta, only file parts.", param="file")
        if len(files) == len(sources):
            raise InvalidRequest("More file parts than meta.sources names.", param="sources")
        source = sources[len(files)]
        files.append((await _save(part, folder, len(files), source), source))
    if len(files) != len(sources):
        raise InvalidRequest(
            f"meta.sources names {len(sources)} files; {len(files)} were sent.", param="sources"
        )
    return meta, files


def _result(result: IngestResult) -> dict[str, Any]:
    return {
        "event": "result",
        "summary": result.summary(),
        "kb": result.kb,
        "collection": result.collection,
        "documents": result.documents,
        "chunks": result.chunks,
        "added": len(result.added),
        "updated": len(result.updated),
        "removed": len(result.removed),
        "unchanged": result.unchanged,
        "failed": result.failed,
        "seconds": round(result.seconds, 3),
    }


async def _invalidate(runtime: Runtime, stale: list[str]) -> int | None:
    """Drop cached answers built on chunks that changed or are gone; None: no cache, or its
    store is down (the answers then age out by their TTL)."""
    for stage in runtime.interceptors:
        if isinstance(stage, CacheStage):
            try:
                return await stage.store.invalidate(team=None, route=None, chunks=stale)
            except CacheUnavailable as exc:  # the ingestion stands; say what was not done
                log.warning("could not invalidate cached answers after an ingestion: %s", exc)
                return None
    return None


async def ingest_documents(request: web.Request) -> web.StreamResponse:
    """``POST /admin/knowledge/ingest``: see the module docstring."""
    runtime = _authorise(request)
    stage = _knowledge(runtime)
    if runtime.embedder is None:
        raise KnowledgeNotConfigured("This gateway runs without an embedding model.")
    with tempfile.TemporaryDirectory(prefix="gateway-ingest-") as tmp:
        meta, files = await _receive(request, stage, Path(tmp))
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)

        async def send(line: dict[str, Any]) -> None:
            await response.write(orjson.dumps(line) + b"\n")

        async def progress(done: int, total: int) -> None:
            await send({"event": "progress", "done": done, "total": total})

        async with stage.writing:
            try:
                result = await ingest_files(
                    files,
                    store=stage.store,
                    embedder=runtime.embedder,
                    kb=meta["kb"],
                    teams=meta["teams"],
                    residency=meta["residency"],
                    prune=meta["prune"],
                    keep=meta["unreadable"],
                    on_progress=progress,
                )
            except (IngestError, StoreUnavailable) as exc:
                await send({"event": "error", "message": str(exc)})
                await response.write_eof()
                return response
        stage.refresh()  # searched from the next request on, even if the collection was new
        line = _result(result)
        if result.stale_ids:
            line["cache_invalidated"] = await _invalidate(runtime, result.stale_ids)
        await send(line)
        await response.write_eof()
        return response


async def answer_report(request: web.Request) -> web.Response:
    """``GET /admin/knowledge/answers``: the curated-answer decision at a glance: each kb's score
    bands (the section's settings), decisions by outcome, verifications by answer, and the
    entries withdrawn by feedback with how many kinds of question each no longer answers."""
    runtime = _authorise(request)
    report = _knowledge(runtime).answer_report()
    return web.Response(body=orjson.dumps(report), content_type="application/json")


ROUTES = [
    web.post("/admin/knowledge/ingest", ingest_documents),
    web.get("/admin/knowledge/answers", answer_report),
]
