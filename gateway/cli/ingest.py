"""``gateway ingest``: documents into the knowledge base, directly or through a running gateway.

Directly: the command opens the store itself (a Qdrant server, or the embedded one under
``GATEWAY_KNOWLEDGE_PATH``) and embeds the chunks in this process. The embedded store is opened
by one process at a time; while a gateway runs it holds the store, so the command then sends the
files to that gateway's admin API (``POST /admin/knowledge/ingest``, gateway/admin/knowledge.py)
with the admin key from ``GATEWAY_ADMIN_KEY``, and shows its progress the same way. ``--gateway
URL`` always goes through the gateway at URL.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from tqdm import tqdm  # type: ignore[import-untyped]

from gateway.policy.model import PolicyError, load_policy
from gateway.policy.settings import Settings

ADMIN_KEY_ENV = "GATEWAY_ADMIN_KEY"


def add_parser(commands: Any) -> None:
    ingest = commands.add_parser(
        "ingest",
        help="add or update documents in the knowledge base",
        description="Markdown, text, HTML, JSONL FAQ (question/answer) and PDF (with pypdf). "
        "Re-running updates changed chunks and removes deleted ones, per file. The store is "
        "GATEWAY_QDRANT_URL, else the embedded one under GATEWAY_KNOWLEDGE_PATH; while a "
        "gateway runs and holds the embedded store, the files go through its admin API "
        f"(admin key in {ADMIN_KEY_ENV}).",
    )
    ingest.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")
    ingest.add_argument("--kb", required=True, help="the knowledge base (a tag in the collection)")
    ingest.add_argument(
        "--teams", required=True, help="teams that may read it, comma-separated; '*' for all"
    )
    ingest.add_argument(
        "--residency", default="", help="regions its text may be sent to, comma-separated"
    )
    ingest.add_argument(
        "--collection", help="Qdrant collection (default: the policy's knowledge.collection)"
    )
    ingest.add_argument("--config", type=Path, help="policy YAML (for knowledge.collection)")
    ingest.add_argument(
        "--root", type=Path, help="sources are named relative to it (default: current folder)"
    )
    ingest.add_argument(
        "--prune",
        action="store_true",
        help="also remove files that disappeared from the folders given",
    )
    ingest.add_argument(
        "--gateway",
        metavar="URL",
        help="send the files to the gateway at URL (its admin API) instead of opening the "
        "store; by default only when a running gateway holds the embedded store",
    )
    ingest.add_argument("--no-progress", action="store_true", help="no progress bar")


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def run(args: argparse.Namespace) -> int:
    from retrieval.ingest import IngestError
    from retrieval.store import StoreLocked, StoreUnavailable

    settings = Settings(**({"config": args.config} if args.config else {}))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    try:
        if args.gateway:
            return asyncio.run(_through_gateway(args, args.gateway))
        collection = args.collection
        if collection is None:
            try:
                knowledge = load_policy(settings.config).knowledge
            except PolicyError as exc:
                print(f"error: {exc} (or pass --collection)", file=sys.stderr)
                return 2
            collection = knowledge.collection if knowledge else "company-kb"
        try:
            return asyncio.run(_directly(args, settings, collection))
        except StoreLocked as exc:
            host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
            url = f"http://{host}:{settings.port}"
            print(f"{exc}\nsending the files to the gateway at {url}", file=sys.stderr)
            return asyncio.run(_through_gateway(args, url))
    except IngestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"error: knowledge store unavailable: {exc}", file=sys.stderr)
        return 1


async def _directly(args: argparse.Namespace, settings: Settings, collection: str) -> int:
    from gateway.api.app import make_embedder
    from retrieval.ingest import ingest
    from retrieval.store import StoreUnavailable
    from retrieval.stores import open_store

    store = open_store(
        collection=collection,
        url=settings.qdrant_url,
        api_key=settings.qdrant_api_key,
        path=settings.knowledge_path,
        engine=settings.knowledge_engine,
    )
    try:
        await store.exists()  # a locked or unreachable store fails before the model loads
    except StoreUnavailable:
        await store.close()
        raise
    embedder = await asyncio.to_thread(make_embedder, settings)
    try:
        result = await ingest(
            args.paths,
            store=store,
            embedder=embedder,
            kb=args.kb,
            teams=_names(args.teams),
            residency=_names(args.residency),
            root=args.root,
            prune=args.prune,
            progress=not args.no_progress,
        )
    finally:
        await embedder.close()
        await store.close()
    for failure in result.failed:
        print(f"error: {failure}", file=sys.stderr)
    print(result.summary())
    if result.stale_ids and settings.redis_url:
        await _invalidate_cached_answers(settings, result.stale_ids)
    return 1 if result.failed else 0


async def _invalidate_cached_answers(settings: Settings, chunk_ids: list[str]) -> None:
    """Drop cached answers built on chunks that changed or are gone (every replica's index
    follows through the cache's event stream)."""
    from cache.store import CacheUnavailable, RedisStore

    assert settings.redis_url is not None
    store = RedisStore(settings.redis_url, prefix=settings.redis_prefix, timeout_s=5)
    try:
        removed = await store.invalidate(chunks=chunk_ids)
        print(f"cache: removed {removed} cached answers built on changed chunks")
    except CacheUnavailable as exc:
        print(f"warning: could not invalidate cached answers: {exc}", file=sys.stderr)
    finally:
        await store.close()


def upload_form(
    files: Sequence[tuple[Path, str]], meta: dict[str, Any]
) -> tuple[aiohttp.MultipartWriter, list[str]]:
    """The multipart body ``POST /admin/knowledge/ingest`` reads, and the files that could not
    be read here (reported as failed, as a direct ingestion would)."""
    form = aiohttp.MultipartWriter("form-data")
    failed: list[str] = []
    unreadable: list[str] = []  # kept, not pruned: a direct ingestion does the same
    sources: list[str] = []
    contents: list[tuple[bytes, str]] = []
    for path, source in files:
        try:
            contents.append((path.read_bytes(), source))
        except OSError as exc:
            failed.append(f"{source}: cannot read: {exc.strerror}")
            unreadable.append(source)
            continue
        sources.append(source)
    body = orjson.dumps({**meta, "sources": sources, "unreadable": unreadable})
    part = form.append(body, {"Content-Type": "application/json"})
    part.set_content_disposition("form-data", name="meta")
    for data, source in contents:
        part = form.append(data, {"Content-Type": "application/octet-stream"})
        part.set_content_disposition("form-data", name="file", filename=Path(source).name)
    return form, failed


async def _through_gateway(args: argparse.Namespace, url: str) -> int:
    from retrieval.ingest import check_names, collect, prune_prefixes

    key = os.environ.get(ADMIN_KEY_ENV)
    if not key:
        print(
            f"error: ingesting through the gateway needs its admin key in {ADMIN_KEY_ENV} "
            "(the gateway holds its SHA-256 in GATEWAY_ADMIN_KEY_SHA256; see docs/knowledge.md)",
            file=sys.stderr,
        )
        return 2
    teams, residency = _names(args.teams), _names(args.residency)
    check_names(args.kb, teams, residency)
    root = args.root or Path.cwd()
    files = list(collect(args.paths, root))
    meta: dict[str, Any] = {
        "kb": args.kb,
        "teams": teams,
        "residency": residency,
        "prune": prune_prefixes(args.paths, root) if args.prune else [],
    }
    if args.collection:
        meta["collection"] = args.collection
    form, failed = upload_form(files, meta)
    headers = {"Authorization": f"Bearer {key}"}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
    endpoint = f"{url.rstrip('/')}/admin/knowledge/ingest"
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(endpoint, data=form, headers=headers) as response,
        ):
            if response.status != 200:
                message = await _message(response)
                print(f"error: the gateway answered {response.status}: {message}", file=sys.stderr)
                return 1
            result = await _follow(response, progress=not args.no_progress, kb=args.kb)
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        print(f"error: cannot ingest through {endpoint}: {reason}", file=sys.stderr)
        return 1
    if result is None:
        return 1
    failed += result.get("failed", [])
    for failure in failed:
        print(f"error: {failure}", file=sys.stderr)
    print(f"{result['summary']} (through the gateway at {url})")
    return 1 if failed else 0


async def _message(response: aiohttp.ClientResponse) -> str:
    body = await response.read()
    try:
        return str(orjson.loads(body)["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")


async def _follow(
    response: aiohttp.ClientResponse, *, progress: bool, kb: str
) -> dict[str, Any] | None:
    """Show the streamed progress; the result line, or None after an error line."""
    bar: tqdm | None = None
    try:
        async for raw in response.content:
            if not raw.strip():
                continue
            line = orjson.loads(raw)
            if line.get("event") == "progress":
                if bar is None:
                    bar = tqdm(
                        total=line["total"], unit="chunk", desc=f"ingest {kb}", disable=not progress
                    )
                bar.update(line["done"] - bar.n)
            elif line.get("event") == "error":
                print(f"error: {line.get('message')}", file=sys.stderr)
                return None
            elif line.get("event") == "result":
                return dict(line)
    finally:
        if bar is not None:
            bar.close()
    print("error: the gateway ended the ingestion without a result", file=sys.stderr)
    return None
