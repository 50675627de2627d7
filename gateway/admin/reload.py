"""Hot reload of the policy file (SIGHUP, ``POST /admin/reload``).

The file is read and validated first; a bad one leaves the running policy in place and the
``PolicyError`` names the file and the field. A good one is compiled into a new catalog (the
run-time team overlay merged in), with a new provider pool when the providers' endpoints changed,
and swapped into the runtime in one step (no ``await`` between the assignments, so no request sees
half of it). Each request works on a snapshot of the runtime taken when it arrived, so in-flight
requests finish on the catalog and pool they started with; a replaced pool is closed once the
longest request it may still serve is over (``retire_after_s``), or at shutdown.

Applied on reload: providers, models, routes (their ``tiering`` too: what a route's tier router
learnt stays; its trained ``model`` is read again, and a file that cannot be used fails the
reload), teams (and their limits), routing. Sections built into long-lived stages at
start-up (``cache``, ``knowledge`` and any other) are reported in ``restart_required`` when they
change; they take effect at the next start.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from gateway.core.runtime import LIFECYCLE, RUNTIME, Runtime
from gateway.policy.model import Policy, load_policy
from gateway.tiering.deployed import TierModel, route_models
from gateway.tiering.router import TierRouter
from providers.pool import ProviderPool

log = logging.getLogger(__name__)

APPLIED = ("providers", "models", "routes", "teams", "routing", "quality")


def _configure_tiers(runtime: Runtime, policy: Policy, models: dict[str, TierModel]) -> bool:
    """Apply the routes' ``tiering`` (what each route learnt stays; ``models``: their trained
    models, loaded anew); ``True`` when a route gained it but the process has no embedder to
    compare prompts with (it is loaded at start-up)."""
    if runtime.tiers is not None:
        runtime.tiers.configure(policy, models)
        return False
    if not any(route.tiering for route in policy.routes):
        return False
    if runtime.embedder is None:
        return True
    tiers = TierRouter(policy, models=models)
    if runtime.tier_sync is not None:
        runtime.tier_sync.attach(tiers)  # shared from its first outcome
    runtime.tiers = tiers
    return False


def retire_after_s(policy: Policy) -> float:
    """How long a replaced pool may still carry a request: the longest deadline or stream."""
    longest_stream = max(p.timeouts.total for p in policy.providers)
    return max(policy.routing.max_deadline_s, longest_stream) + 1


async def reload_policy(app: web.Application) -> dict[str, Any]:
    """Re-read, validate and swap in the policy file; raises ``PolicyError`` if it is bad."""
    lifecycle = app[LIFECYCLE]
    runtime = app[RUNTIME]
    path = runtime.settings.config
    async with lifecycle.reload_lock:
        policy = await asyncio.to_thread(load_policy, path)
        # The routes' trained models, read and checked before anything is swapped: a broken
        # file or one trained with another embedder fails the reload (TierModelError).
        models = await asyncio.to_thread(route_models, runtime.settings, policy, runtime.embedder)
        old = lifecycle.policy
        assert runtime.teams is not None
        catalog = runtime.teams.catalog(policy)
        changed = [
            name for name in Policy.model_fields if getattr(policy, name) != getattr(old, name)
        ]
        pool, retired = runtime.pool, None
        if catalog.endpoints != runtime.catalog.endpoints:
            pool = ProviderPool(catalog.endpoints)
            await pool.start()
            retired = runtime.pool
        # The swap: synchronous, so every request sees the old runtime or the new one. The
        # catalog is compiled again here: the team overlay may have changed during the awaits.
        catalog = runtime.teams.catalog(policy)
        runtime.catalog = catalog
        runtime.pool = pool
        runtime.router.config = policy.routing
        runtime.router.hedges.share = policy.routing.hedge_max_share
        runtime.board.config = policy.routing.breaker
        runtime.quality.configure(policy.quality)
        tiering_waits = _configure_tiers(runtime, policy, models)
        lifecycle.policy = policy
        if retired is not None:
            lifecycle.retire(retired, retire_after_s(old))
    applied = [name for name in changed if name in APPLIED]
    restart = [name for name in changed if name not in APPLIED]
    if tiering_waits:
        restart.append("routes.tiering")
    result: dict[str, Any] = {
        "status": "reloaded",
        "file": str(path),
        "changed": applied,
        "restart_required": restart,
        "providers": len(policy.providers),
        "models": len(policy.models),
        "routes": len(policy.routes),
        "teams": len(catalog.policy.teams),
    }
    log.info(
        "policy reloaded from %s: changed %s%s",
        path,
        ", ".join(applied) or "nothing",
        f"; restart required for {', '.join(restart)}" if restart else "",
    )
    return result
