"""Knowledge ACLs, residency and fail-open: a team only ever retrieves what it may, and a broken
store never fails a request."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from gateway.policy.settings import Settings
from gateway.stages.knowledge import open_knowledge
from gateway.telemetry.metrics import Metrics
from retrieval.stores import open_store
from tests.test_knowledge_stage import (
    EXAMPLES,
    FAQ_QUESTION,
    FINANCE_QUESTION,
    PAYROLL_QUESTION,
    kb_store,
    knowledge_policy,
    make_ctx,
    reference,
    stage_for,
)

__all__ = ["kb_store"]  # the module's fixture: the sample knowledge base, ingested once


async def test_a_team_never_sees_another_teams_chunks(kb_store: Any, embedder: Any) -> None:
    policy = knowledge_policy(context_threshold=0.05, top_k=20, max_context_chars=100_000)
    stage = stage_for(kb_store, policy)
    secret = (EXAMPLES / "finance" / "quarter-close.md").read_text()
    for question in [FINANCE_QUESTION, secret, "journal entries second approver controller"]:
        ctx = make_ctx(policy, "support", question, embedder=embedder)
        assert await stage.before(ctx) is None
        block = reference(ctx)
        assert block.count("</source>") >= 5  # plenty retrieved, none of them finance's
        assert "quarter-close" not in block
        assert "fifth working day" not in block
    ctx = make_ctx(policy, "finance", FINANCE_QUESTION, embedder=embedder)
    await stage.before(ctx)
    assert 'ref="finance/quarter-close.md"' in reference(ctx).split("</source>")[0]


async def test_acl_filter_runs_inside_the_search(kb_store: Any, embedder: Any) -> None:
    """With top_k=1 a post-filter would find finance's chunk first and return nothing."""
    policy = knowledge_policy(context_threshold=0.05, top_k=1)
    stage = stage_for(kb_store, policy)
    ctx = make_ctx(policy, "support", FINANCE_QUESTION, embedder=embedder)
    await stage.before(ctx)
    assert ctx.headers["x-gateway-knowledge"] == "context;chunks=1"
    assert "quarter-close" not in reference(ctx)


@pytest.mark.parametrize(
    ("team", "header", "sees"),
    [
        ("support", None, False),  # may go to any region: never EU-only text
        ("eu-team", None, True),  # only the EU
        ("finance", None, False),  # EU and onprem: onprem is not in the chunk's regions
        ("eu-us", None, False),  # one allowed region outside the EU is enough to refuse
        ("eu-us", ["eu"], True),  # narrowed to the EU by x-gateway-regions
        ("support", ["eu"], True),
    ],
)
async def test_residency_tagged_chunks_only_where_every_allowed_region_fits(
    kb_store: Any, embedder: Any, team: str, header: list[str] | None, sees: bool
) -> None:
    policy = knowledge_policy(context_threshold=0.05, top_k=20, max_context_chars=100_000)
    stage = stage_for(kb_store, policy)
    ctx = make_ctx(policy, team, PAYROLL_QUESTION, embedder=embedder, regions=header)
    await stage.before(ctx)
    assert ("eu/payroll-eu.md" in reference(ctx)) is sees


# -- fail-open ---------------------------------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_qdrant_down_passes_through_and_counts(embedder: Any) -> None:
    policy = knowledge_policy(retry_after_s=60)
    store = open_store(collection="c", url=f"http://127.0.0.1:{closed_port()}", path=Path("."))
    metrics = Metrics()
    stage = stage_for(store, policy, metrics=metrics)
    try:
        ctx = make_ctx(policy, "support", FAQ_QUESTION, embedder=embedder)
        original = ctx.chat
        assert await stage.before(ctx) is None
        assert ctx.chat is original
        assert ctx.notes["knowledge"] == "error"
        assert stage.errors == 1
        assert metrics.registry.get_sample_value("gateway_knowledge_errors_total") == 1
        ctx = make_ctx(policy, "support", FAQ_QUESTION, embedder=embedder)
        assert await stage.before(ctx) is None
        assert ctx.notes["knowledge"] == "skipped"  # no new attempt before retry_after_s
        assert stage.errors == 1
    finally:
        await stage.close()


async def test_a_locked_embedded_store_passes_through(
    kb_store: Any, embedder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The module's store holds the shard: a second opener (a second process, say) fails."""
    assert isinstance(kb_store.path, Path)
    other = open_store(collection="company-kb", url=None, path=kb_store.path.parent.parent)
    # A generous lookup timeout: on a loaded machine the embedding alone can pass the default
    # 0.5 s, and this test is about the lock, not the timeout.
    policy = knowledge_policy(timeout_s=30)
    stage = stage_for(other, policy)
    ctx = make_ctx(policy, "support", FAQ_QUESTION, embedder=embedder)
    assert await stage.before(ctx) is None
    assert stage.errors == 1
    assert "is open in another process (a running gateway?)" in caplog.text
    await stage.close()


async def test_open_knowledge(tmp_path: Path, embedder: Any, kb_store: Any) -> None:
    settings = Settings(knowledge_path=tmp_path)
    assert await open_knowledge(settings, knowledge_policy(enabled=False), embedder) is None
    empty = await open_knowledge(settings, knowledge_policy(), embedder)
    assert empty is not None
    ctx = make_ctx(knowledge_policy(), "support", FAQ_QUESTION, embedder=embedder)
    assert await empty.before(ctx) is None
    assert ctx.notes["knowledge"] == "empty"
    await empty.close()
    on = await open_knowledge(settings, knowledge_policy(), embedder, store=kb_store)
    assert on is not None
    assert on.store is kb_store
