"""Ingesting while the gateway serves: ``POST /admin/knowledge/ingest`` and ``gateway ingest``
through it, in process and as two real processes sharing the embedded store."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.cli import ingest as ingest_cli
from gateway.policy.model import hash_key
from gateway.policy.settings import Settings
from retrieval.store import StoreLocked
from tests.conftest import LIMITED_TEAM_KEY, TEAM_KEY, Fakes, policy_for
from tests.serve_process import GatewayProcess, write_policy
from tests.test_knowledge_stage import CONTEXT_QUESTION, EXAMPLES

pytestmark = pytest.mark.timeout(240)  # embeddings on a busy 2-core machine

ADMIN_KEY = "admin-secret"
PARKING = "parking"  # a word of the expenses policy's passage the question retrieves


def ingest_args(*paths: Path, teams: str = "*", **extra: Any) -> argparse.Namespace:
    values: dict[str, Any] = {
        "paths": list(paths),
        "kb": "company",
        "teams": teams,
        "residency": "",
        "collection": None,
        "root": EXAMPLES,
        "prune": False,
        "no_progress": True,
        **extra,
    }
    return argparse.Namespace(**values)


def ask(text: str) -> dict[str, Any]:
    return {"model": "gpt", "messages": [{"role": "user", "content": text}]}


def sent_reference(fakes: Fakes) -> str:
    """The reference message the fake OpenAI received last ('' if none)."""
    messages = fakes.openai.requests[-1].body["messages"]
    return "".join(m["content"] for m in messages if m["role"] == "system")


async def test_ingest_through_the_running_gateway(
    make_gateway: Any,
    fakes: Fakes,
    embedder: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    policy = policy_for(fakes, knowledge={"kbs": ["company"]})
    client = await make_gateway(
        policy,
        embedder=embedder,
        knowledge_path=tmp_path,
        admin_key_sha256=hash_key(ADMIN_KEY),
        stage_timeout_s=20,  # a busy machine must not skip the lookup this test is about
    )
    alpha = {"Authorization": f"Bearer {TEAM_KEY}"}
    response = await client.post("/v1/chat/completions", json=ask(CONTEXT_QUESTION), headers=alpha)
    assert response.status == 200
    assert "x-gateway-knowledge" not in response.headers  # nothing ingested yet
    assert PARKING not in sent_reference(fakes).lower()

    # Only team alpha may read it: the teams semantics hold through the admin API.
    monkeypatch.setenv(ingest_cli.ADMIN_KEY_ENV, ADMIN_KEY)
    url = str(client.server.make_url("/"))
    args = ingest_args(EXAMPLES / "policies", teams="alpha")
    assert await ingest_cli._through_gateway(args, url) == 0
    out = capsys.readouterr().out
    assert "docs" in out
    assert "added" in out
    assert "through the gateway" in out

    # Searchable by the next request, without a restart; not for another team.
    response = await client.post("/v1/chat/completions", json=ask(CONTEXT_QUESTION), headers=alpha)
    assert response.headers["x-gateway-knowledge"].startswith("context;chunks=")
    assert PARKING in sent_reference(fakes).lower()
    other = {"Authorization": f"Bearer {LIMITED_TEAM_KEY}"}
    response = await client.post("/v1/chat/completions", json=ask(CONTEXT_QUESTION), headers=other)
    assert response.status == 200
    assert PARKING not in sent_reference(fakes).lower()

    # The gateway holds the embedded store now: a direct ingestion is told so (and the command
    # then goes through the gateway on its own).
    settings = Settings(knowledge_path=tmp_path, embedder="torch")
    with pytest.raises(StoreLocked, match="admin API"):
        await ingest_cli._directly(ingest_args(EXAMPLES / "policies"), settings, "company-kb")

    # Again, unchanged: nothing re-embedded.
    assert await ingest_cli._through_gateway(args, url) == 0
    assert "0 added, 0 updated, 0 removed" in capsys.readouterr().out


async def test_the_stream_shows_progress_then_the_result(
    make_gateway: Any, fakes: Fakes, embedder: Any, tmp_path: Path
) -> None:
    policy = policy_for(fakes, knowledge={"kbs": ["company"]})
    client = await make_gateway(
        policy, embedder=embedder, knowledge_path=tmp_path, admin_key_sha256=hash_key(ADMIN_KEY)
    )
    files = [(EXAMPLES / "policies" / "travel" / "expenses.html", "policies/travel/expenses.html")]
    meta = {"kb": "company", "teams": ["*"], "residency": [], "prune": []}
    form, failed = ingest_cli.upload_form(files, meta)
    assert failed == []
    response = await client.post(
        "/admin/knowledge/ingest", data=form, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    lines = [orjson.loads(line) for line in (await response.text()).splitlines()]
    progress = [line for line in lines if line["event"] == "progress"]
    assert progress[0]["done"] == 0
    assert progress[-1]["done"] == progress[-1]["total"] > 0
    result = lines[-1]
    assert result["event"] == "result"
    assert result["documents"] == 1
    assert result["added"] == progress[-1]["total"]
    assert result["failed"] == []


async def test_the_admin_api_refuses_what_it_should(
    make_gateway: Any, fakes: Fakes, embedder: Any, tmp_path: Path
) -> None:
    meta = {"kb": "company", "teams": ["*"], "residency": [], "prune": []}
    files = [(EXAMPLES / "policies" / "travel" / "expenses.html", "policies/travel/expenses.html")]
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    knowledge = policy_for(fakes, knowledge={"kbs": ["company"]})

    disabled = await make_gateway(knowledge, embedder=embedder, knowledge_path=tmp_path / "a")
    form, _ = ingest_cli.upload_form(files, meta)
    response = await disabled.post("/admin/knowledge/ingest", data=form, headers=admin)
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "admin_disabled"

    client = await make_gateway(
        knowledge,
        embedder=embedder,
        knowledge_path=tmp_path / "b",
        admin_key_sha256=hash_key(ADMIN_KEY),
    )
    form, _ = ingest_cli.upload_form(files, meta)
    response = await client.post(
        "/admin/knowledge/ingest", data=form, headers={"Authorization": f"Bearer {TEAM_KEY}"}
    )
    assert response.status == 401  # a team key is not the admin key

    for bad, param in [
        ({**meta, "kb": "bad name"}, "meta"),
        ({**meta, "teams": "alpha"}, "teams"),
        ({**meta, "collection": "other"}, "collection"),
    ]:
        form, _ = ingest_cli.upload_form(files, bad)
        response = await client.post("/admin/knowledge/ingest", data=form, headers=admin)
        assert response.status == 400, bad
        assert (await response.json())["error"]["param"] == param
    response = await client.post("/admin/knowledge/ingest", json=meta, headers=admin)
    assert response.status == 400  # not multipart

    plain = await make_gateway(
        policy_for(fakes),
        embedder=embedder,
        knowledge_path=tmp_path / "c",
        admin_key_sha256=hash_key(ADMIN_KEY),
    )
    form, _ = ingest_cli.upload_form(files, meta)
    response = await plain.post("/admin/knowledge/ingest", data=form, headers=admin)
    assert response.status == 409
    assert (await response.json())["error"]["code"] == "knowledge_not_configured"


@pytest.mark.timeout(240)
async def test_gateway_ingest_while_gateway_serve_runs(fakes: Fakes, tmp_path: Path) -> None:
    """Two real processes: ``gateway serve`` holds the embedded store, ``gateway ingest`` finds
    it locked and sends the files to the gateway, which answers from them at once."""
    policy = policy_for(fakes, knowledge={"kbs": ["company"]})
    write_policy(tmp_path / "policy.yaml", policy)
    env = {
        "GATEWAY_KNOWLEDGE_PATH": str(tmp_path / "kb"),
        "GATEWAY_ADMIN_KEY_SHA256": hash_key(ADMIN_KEY),
        "GATEWAY_EMBEDDER": "torch",  # no ONNX export into the test's empty data dir
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_TELEMETRY_PROCESS": "false",
        "GATEWAY_STAGE_TIMEOUT_S": "20",
    }
    common = ["--kb", "company", "--teams", "*", "--root", str(EXAMPLES), "--no-progress"]

    def ingest(path: Path, port: int) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "gateway", "ingest", str(path), *common]
        cli_env = {
            **os.environ,
            **env,
            "GATEWAY_CONFIG": str(tmp_path / "policy.yaml"),
            "GATEWAY_PORT": str(port),
            ingest_cli.ADMIN_KEY_ENV: ADMIN_KEY,
        }
        return subprocess.run(
            command, env=cli_env, capture_output=True, text=True, timeout=180, check=False
        )

    # The collection exists before the gateway starts, so the gateway opens (and locks) it.
    first = await asyncio.to_thread(ingest, EXAMPLES / "eu", 9)
    assert first.returncode == 0, first.stderr
    server = GatewayProcess(tmp_path / "policy.yaml", tmp_path / "gateway.log", **env)
    await server.start(timeout_s=120)
    try:
        second = await asyncio.to_thread(ingest, EXAMPLES / "policies", server.port)
        assert second.returncode == 0, second.stderr + server.log()
        assert "is open in another process" in second.stderr
        assert "through the gateway" in second.stdout
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{server.url}/v1/chat/completions",
                json=ask(CONTEXT_QUESTION),
                headers={"Authorization": f"Bearer {TEAM_KEY}"},
            ) as response,
        ):
            assert response.status == 200, await response.text()
            assert response.headers["x-gateway-knowledge"].startswith("context;chunks=")
        assert PARKING in sent_reference(fakes).lower()
    finally:
        server.stop()


async def test_prune_through_the_gateway_keeps_a_file_the_client_could_not_read(
    make_gateway: Any, fakes: Fakes, embedder: Any, tmp_path: Path
) -> None:
    policy = policy_for(fakes, knowledge={"kbs": ["company"]})
    client = await make_gateway(
        policy,
        embedder=embedder,
        knowledge_path=tmp_path / "kb",
        admin_key_sha256=hash_key(ADMIN_KEY),
    )
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nAlpha text about parking.\n")
    (docs / "b.md").write_text("# B\n\nBeta text about trains.\n")
    meta = {"kb": "company", "teams": ["*"], "residency": [], "prune": ["docs/"]}
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}

    async def upload(files: list[tuple[Path, str]]) -> tuple[dict[str, Any], list[str]]:
        form, failed = ingest_cli.upload_form(files, meta)
        response = await client.post("/admin/knowledge/ingest", data=form, headers=admin)
        assert response.status == 200
        return orjson.loads((await response.text()).splitlines()[-1]), failed

    both = [(docs / "a.md", "docs/a.md"), (docs / "b.md", "docs/b.md")]
    result, _ = await upload(both)
    assert (result["documents"], result["added"]) == (2, 2)
    # b.md exists but cannot be read here: reported, and its chunks stay (as a direct run).
    result, failed = await upload([both[0], (tmp_path / "gone" / "b.md", "docs/b.md")])
    assert failed == ["docs/b.md: cannot read: No such file or directory"]
    assert (result["removed"], result["unchanged"]) == (0, 1)
    # b.md is gone from the folder: pruned.
    result, _ = await upload([both[0]])
    assert result["removed"] == 1
