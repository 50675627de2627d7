"""The ``gateway`` command: serve, check-config, hash-key, cache, router, ingest."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.cli import cache as cache_cli
from gateway.cli import evaluate as eval_cli
from gateway.cli import router as router_cli
from gateway.core.background import single_thread_blas, tune_gc
from gateway.policy.model import PolicyError, hash_key, load_policy
from gateway.policy.settings import EMBEDDED_CONFIG, Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="knowledge-gateway")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument(
        "--config", type=Path, help=f"policy YAML (default: {EMBEDDED_CONFIG.name}, embedded)"
    )
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8080)")
    serve.add_argument(
        "--local-model",
        action="store_true",
        help="also start llama.cpp's server with Gemma 3 270M on 127.0.0.1:8081 ('local' extra)",
    )
    serve.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="for the local model's files"
    )

    check = commands.add_parser("check-config", help="validate a policy file without starting")
    check.add_argument("file", type=Path)

    hashing = commands.add_parser(
        "hash-key", help="print the key_sha256 for a team key (read from stdin)"
    )
    hashing.add_argument("key", nargs="?", help="the key (default: read one line from stdin)")

    cache_cli.add_parser(commands)
    router_cli.add_parser(commands)
    eval_cli.add_parser(commands)
    _add_ingest_parser(commands)

    args = parser.parse_args(argv)
    if args.command == "ingest":
        return _ingest(args)
    if args.command == "cache":
        return cache_cli.run(args)
    if args.command == "router":
        return router_cli.run(args)
    if args.command == "eval":
        return eval_cli.run(args)
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "hash-key":
        key = args.key if args.key is not None else sys.stdin.readline().strip()
        print(hash_key(key))
        return 0
    return _serve(args)


def _check_config(path: Path) -> int:
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{path}: ok ({len(policy.providers)} providers, {len(policy.models)} models, "
        f"{len(policy.routes)} routes, {len(policy.teams)} teams)"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    overrides = {
        k: v
        for k, v in {"config": args.config, "host": args.host, "port": args.port}.items()
        if v is not None
    }
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        policy = load_policy(settings.config)
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from gateway.api.app import (
        create_app,  # after validation: a bad config fails fast, before imports
    )
    from gateway.api.lifecycle import serve

    app = create_app(settings, policy)
    tune_gc(settings.gc_gen0_threshold)
    single_thread_blas()
    if not args.local_model:
        serve(app, settings)  # SIGHUP reloads the policy; SIGTERM drains (gateway.lifecycle)
        return 0
    from .localmodel import LocalModelError, LocalModelServer

    try:
        with LocalModelServer(args.data_dir) as local:
            print(f"local model serving at {local.base_url}", file=sys.stderr)
            serve(app, settings)
    except LocalModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_ingest_parser(commands: Any) -> None:
    ingest = commands.add_parser(
        "ingest",
        help="add or update documents in the knowledge base",
        description="Markdown, text, HTML, JSONL FAQ (question/answer) and PDF (with pypdf). "
        "Re-running updates changed chunks and removes deleted ones, per file. The store is "
        "GATEWAY_QDRANT_URL, else the embedded one under GATEWAY_KNOWLEDGE_PATH (stop the "
        "gateway first: one process at a time opens it).",
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
    ingest.add_argument("--no-progress", action="store_true", help="no progress bar")


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


def _ingest(args: argparse.Namespace) -> int:
    from retrieval.ingest import IngestError, ingest
    from retrieval.store import StoreUnavailable
    from retrieval.stores import open_store

    settings = Settings(**({"config": args.config} if args.config else {}))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    collection = args.collection
    if collection is None:
        try:
            knowledge = load_policy(settings.config).knowledge
        except PolicyError as exc:
            print(f"error: {exc} (or pass --collection)", file=sys.stderr)
            return 2
        collection = knowledge.collection if knowledge else "company-kb"
    teams = [t.strip() for t in args.teams.split(",") if t.strip()]
    residency = [r.strip() for r in args.residency.split(",") if r.strip()]
    from gateway.api.app import make_embedder

    async def run() -> int:
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
                teams=teams,
                residency=residency,
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

    try:
        return asyncio.run(run())
    except IngestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"error: knowledge store unavailable: {exc}", file=sys.stderr)
        return 1
