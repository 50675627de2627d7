"""The ``gateway`` command: serve, check-config, hash-key, cache, router, ingest."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.cli import cache as cache_cli
from gateway.cli import evaluate as eval_cli
from gateway.cli import ingest as ingest_cli
from gateway.cli import router as router_cli
from gateway.cli import router_history, router_train
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
        help="also start llama.cpp's server with SmolLM2-135M-Instruct on 127.0.0.1:8081 "
        "('local' extra)",
    )
    serve.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="for the local model's files"
    )

    check = commands.add_parser("check-config", help="validate a policy file without starting")
    check.add_argument(
        "file",
        type=Path,
        nargs="?",
        help="the policy YAML (default: the one serve would use: GATEWAY_CONFIG, else the "
        "embedded local.yaml)",
    )

    hashing = commands.add_parser(
        "hash-key", help="print the key_sha256 for a team key (read from stdin)"
    )
    hashing.add_argument("key", nargs="?", help="the key (default: read one line from stdin)")

    cache_cli.add_parser(commands)
    router_actions = router_cli.add_parser(commands)
    router_train.add_parsers(router_actions)
    router_history.add_parser(router_actions)
    eval_cli.add_parser(commands)
    ingest_cli.add_parser(commands)

    args = parser.parse_args(argv)
    if args.command == "ingest":
        return ingest_cli.run(args)
    if args.command == "cache":
        return cache_cli.run(args)
    if args.command == "router" and args.router_command == "train":
        return router_train.run(args)
    if args.command == "router" and args.router_command == "history":
        return router_history.run(args)
    if args.command == "router":
        return router_cli.run(args)
    if args.command == "eval":
        return eval_cli.run(args)
    if args.command == "check-config":
        return _check_config(args.file or Settings().config)
    if args.command == "hash-key":
        key = args.key if args.key is not None else sys.stdin.readline().strip()
        print(hash_key(key))
        return 0
    return _serve(args)


def _check_config(path: Path) -> int:
    try:
        policy = load_policy(path)
        # The routes' trained tier models: readable, and embedded as this gateway embeds.
        from gateway.tiering.deployed import route_models

        route_models(Settings(config=path), policy)
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{path}: ok ({len(policy.providers)} providers, {len(policy.models)} models, "
        f"{len(policy.routes)} routes, {len(policy.teams)} teams)"
    )
    return 0


# The project's own loggers; everything else (onnxruntime's quantizer logs each tensor at INFO
# on the root logger, for one) shows from WARNING up.
OWN_LOGGERS = ("gateway", "providers", "cache", "retrieval")


def configure_logging(level: str) -> None:
    """``level`` (GATEWAY_LOG_LEVEL) for the gateway's loggers, WARNING for third parties."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level.upper())


def _serve(args: argparse.Namespace) -> int:
    overrides = {
        k: v
        for k, v in {"config": args.config, "host": args.host, "port": args.port}.items()
        if v is not None
    }
    settings = Settings(**overrides)
    configure_logging(settings.log_level)
    try:
        policy = load_policy(settings.config)
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from gateway.api.app import (
        create_app,  # after validation: a bad config fails fast, before imports
    )
    from gateway.api.lifecycle import serve

    try:
        app = create_app(settings, policy)
    except PolicyError as exc:  # a route's trained tier model that cannot be used
        print(f"error: {exc}", file=sys.stderr)
        return 1
    tune_gc(settings.gc_gen0_threshold)
    single_thread_blas()
    if not args.local_model:
        serve(app, settings)  # SIGHUP reloads the policy; SIGTERM drains (gateway.lifecycle)
        return 0
    from .localmodel import LocalModelError, LocalModelServer

    try:
        with LocalModelServer(args.data_dir) as local:
            print(f"local model serving at {local.base_url}", file=sys.stderr)
            serve(app, settings, children=lambda: [local.pid])
    except LocalModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
