"""Knowledge ingestion: each format, chunking, stable ids, incremental re-ingestion, the CLI.

Everything runs against real embedded stores in tmp_path (Qdrant Edge, and qdrant-client's
local mode for the client code path) with the real embedding model.
"""

from __future__ import annotations

import itertools
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from retrieval.chunking import chunk_document, chunk_id
from retrieval.documents import (
    DocumentError,
    Heading,
    Paragraph,
    parse_faq,
    parse_html,
    parse_markdown,
    read_document,
)
from retrieval.ingest import IngestError, IngestResult, ingest
from retrieval.search import Access, access_filter
from retrieval.store import KnowledgeStore, Match
from retrieval.stores import open_store

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "kb"


def edge_store(path: Path, collection: str = "kb-test") -> KnowledgeStore:
    return open_store(collection=collection, url=None, path=path)


async def run(
    store: KnowledgeStore, embedder: Any, paths: Sequence[Path], root: Path, **kw: Any
) -> IngestResult:
    options: dict[str, Any] = {"kb": "company", "teams": ["*"], **kw}
    return await ingest(list(paths), store=store, embedder=embedder, root=root, **options)


async def stored(store: KnowledgeStore, kb: str = "company") -> dict[str, dict[str, Any]]:
    fields = ["source", "version", "kind", "section", "text", "teams", "residency"]
    return {h.id: h.payload for h in await store.scan(Match("kb", (kb,)), fields)}


# -- reading each format -----------------------------------------------------------------------
def test_markdown_sections_front_matter_and_code() -> None:
    text = (
        "---\ntitle: Handbook\nowner: hr\n---\n\nIntro line.\n\n## Leave\n\nTake it.\n\n"
        "```\n# not a heading\n\ncode\n```\n\nSetext\n------\n\nBody.\n"
    )
    doc = parse_markdown(text, "handbook.md", "Fallback")
    assert doc.title == "Handbook"
    assert doc.blocks == [
        Paragraph("Intro line."),
        Heading(2, "Leave"),
        Paragraph("Take it."),
        Paragraph("```\n# not a heading\n\ncode\n```"),
        Heading(2, "Setext"),
        Paragraph("Body."),
    ]


def test_html_drops_scripts_navigation_and_keeps_structure() -> None:
    doc = read_document(EXAMPLES / "policies/it/vpn.html", "vpn.html")
    assert doc.title == "VPN and remote access"
    text = "\n".join(b.text for b in doc.blocks)
    assert "analytics" not in text
    assert "font-family" not in text
    assert "Intranet" not in text
    assert Heading(2, "Travelling abroad") in doc.blocks
    assert Paragraph("Sign in to the access client with single sign-on. If a tool does not "
                     "load, check that the client shows Connected, then restart it from the "
                     "menu bar.") in doc.blocks  # fmt: skip
    assert any(b.text.startswith("- Production databases") for b in doc.blocks)
    table = parse_html("<h2>T</h2><table><tr><td>a</td><td>b</td></tr></table>", "t.html", "T")
    assert Paragraph("a | b") in table.blocks


def test_text_title_from_file_name() -> None:
    doc = read_document(EXAMPLES / "policies/hr/remote-work.txt", "remote-work.txt")
    assert doc.title == "Remote work"
    assert len(doc.blocks) == 4
    assert all(isinstance(b, Paragraph) for b in doc.blocks)


def test_faq_entries_and_errors_naming_the_line() -> None:
    doc = read_document(EXAMPLES / "policies/frequent-questions.jsonl", "frequent-questions.jsonl")
    assert len(doc.faq) == 10
    first = doc.faq[0]
    assert (first.key, first.section) == ("annual-leave-days", "HR")
    assert first.question == "How many days of annual leave do I get?"
    bad_lines = {
        '{"question": "Q?"}': "faq.jsonl:2: 'answer' must be a non-empty string",
        '{"question": "Q?", "anwser": "A"}': "faq.jsonl:2: unknown field(s) anwser",
        "[1, 2]": "faq.jsonl:2: each line must be a JSON object",
        '{"question": "A question?", "answer": "again"}': "duplicate question",
    }
    for line, message in bad_lines.items():
        with pytest.raises(DocumentError, match=re.escape(message)):
            parse_faq('{"question": "A question?", "answer": "A"}\n' + line, "faq.jsonl", "FAQ")


def _pdf(text: str) -> bytes:
    """A minimal one-page PDF with ``text`` in Helvetica and a correct xref table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def test_pdf_pages_become_sections(tmp_path: Path) -> None:
    pytest.importorskip("pypdf")
    path = tmp_path / "badge-policy.pdf"
    path.write_bytes(_pdf("Badge access is logged for 90 days."))
    doc = read_document(path, "badge-policy.pdf")
    assert doc.title == "Badge policy"
    assert doc.blocks == [Heading(2, "Page 1"), Paragraph("Badge access is logged for 90 days.")]
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 nothing else")
    with pytest.raises(DocumentError, match=r"broken\.pdf"):
        read_document(tmp_path / "broken.pdf", "broken.pdf")


# -- chunking ----------------------------------------------------------------------------------
def test_chunks_stay_in_their_section_overlap_and_keep_stable_keys() -> None:
    sentences = " ".join(f"Rule {i} says the limit is {i * 10} euros." for i in range(60))
    text = f"# Policy\n\n## Long\n\n{sentences}\n\n## Short\n\nOne line.\n"
    chunks = chunk_document(parse_markdown(text, "p.md", "P"), max_chars=400, overlap_chars=100)
    long = [c for c in chunks if c.section == "Long"]
    assert len(long) > 3
    assert all(len(c.text) <= 400 + 100 for c in chunks)
    for previous, current in itertools.pairwise(long):
        first_sentence = current.text.split(". ")[0]
        assert first_sentence in previous.text  # the next chunk repeats the previous' tail
    assert [c.key for c in long] == [f"Long#{i}" for i in range(len(long))]
    assert chunks[-1].section == "Short"
    assert chunks[-1].text == "One line."
    assert chunks[-1].title == "Policy"
    again = chunk_document(parse_markdown(text, "p.md", "P"), max_chars=400, overlap_chars=100)
    assert [c.key for c in again] == [c.key for c in chunks]
    assert chunk_id("company", "p.md", "Long#0") == chunk_id("company", "p.md", "Long#0")
    assert chunk_id("company", "p.md", "Long#0") != chunk_id("finance", "p.md", "Long#0")


# -- ingestion ---------------------------------------------------------------------------------
async def test_ingest_every_format_with_its_payload(tmp_path: Path, embedder: Any) -> None:
    store = edge_store(tmp_path / "store")
    try:
        result = await run(store, embedder, [EXAMPLES / "policies"], EXAMPLES, teams=["hr", "it"])
        assert result.documents == 8
        assert not result.failed
        points = await stored(store)
        assert len(points) == result.chunks == len(result.added)
        sources = {p["source"] for p in points.values()}
        assert {s.rsplit(".", 1)[1] for s in sources} == {"md", "txt", "html", "jsonl"}
        assert "policies/hr/leave.md" in sources
        faq = [p for p in points.values() if p["kind"] == "faq"]
        assert len(faq) == 10
        full = (await store.scan(Match("kind", ("faq",)), ["question", "answer", "updated_at"]))[0]
        assert full.payload["question"]
        assert full.payload["answer"]
        assert full.payload["updated_at"].endswith("+00:00")
        for payload in points.values():
            assert payload["teams"] == ["hr", "it"]
            assert payload["residency"] == []
            assert len(payload["version"]) == 16
    finally:
        await store.close()


async def test_reingest_updates_changed_removes_deleted_and_keeps_ids(
    tmp_path: Path, embedder: Any
) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(EXAMPLES / "policies", docs)
    store = edge_store(tmp_path / "store")
    try:
        first = await run(store, embedder, [docs], tmp_path)
        before = await stored(store)
        leave = docs / "hr" / "leave.md"
        leave.write_text(leave.read_text().replace("27 days", "28 days"))
        devices = docs / "it" / "devices.md"
        head, _, _ = devices.read_text().partition("## Returning devices")
        devices.write_text(head)
        faq = docs / "frequent-questions.jsonl"
        faq.write_text("".join(faq.read_text().splitlines(keepends=True)[1:]))
        (docs / "hr" / "pensions.md").write_text("# Pensions\n\nThe company adds 5 %.\n")

        second = await run(store, embedder, [docs], tmp_path)
        after = await stored(store)

        annual = chunk_id("company", "docs/hr/leave.md", "Annual leave#0")
        returning = chunk_id("company", "docs/it/devices.md", "Returning devices#0")
        faq_first = chunk_id("company", "docs/frequent-questions.jsonl", "faq:annual-leave-days")
        assert second.updated == [annual]
        assert before[annual]["version"] != after[annual]["version"]
        assert "28 days" in after[annual]["text"]
        assert set(second.removed) == {returning, faq_first}
        assert returning not in after
        assert faq_first not in after
        assert [after[i]["source"] for i in second.added] == ["docs/hr/pensions.md"]
        assert second.stale_ids == [annual, *second.removed]
        assert second.unchanged == first.chunks - 3
        for cid, payload in before.items():  # everything else kept its id and version
            if cid not in (annual, returning, faq_first):
                assert after[cid]["version"] == payload["version"]

        third = await run(store, embedder, [docs], tmp_path, teams=["support"])
        assert not third.added
        assert not third.removed
        assert len(third.updated) == third.chunks  # an ACL change is a new version
    finally:
        await store.close()


async def test_a_broken_file_is_reported_and_its_chunks_kept(tmp_path: Path, embedder: Any) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(EXAMPLES / "policies" / "frequent-questions.jsonl", docs)
    store = edge_store(tmp_path / "store")
    try:
        await run(store, embedder, [docs], tmp_path)
        (docs / "frequent-questions.jsonl").write_text('{"question": "no answer"}\n')
        result = await run(store, embedder, [docs], tmp_path)
        assert result.failed == [
            "docs/frequent-questions.jsonl:1: 'answer' must be a non-empty string"
        ]
        assert not result.removed
        kinds = [p["kind"] for p in (await stored(store)).values()]
        assert kinds.count("faq") == 10
    finally:
        await store.close()


async def test_prune_removes_files_gone_from_the_folder(tmp_path: Path, embedder: Any) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(EXAMPLES / "policies" / "hr", docs)
    store = edge_store(tmp_path / "store")
    try:
        await run(store, embedder, [docs], tmp_path)
        (docs / "remote-work.txt").unlink()
        kept = await run(store, embedder, [docs], tmp_path)
        assert not kept.removed
        pruned = await run(store, embedder, [docs], tmp_path, prune=True)
        assert len(pruned.removed) == 1
        sources = {p["source"] for p in (await stored(store)).values()}
        assert sources == {"docs/leave.md"}
    finally:
        await store.close()


async def test_bad_arguments_and_incompatible_collections(tmp_path: Path, embedder: Any) -> None:
    store = edge_store(tmp_path / "store")
    try:
        with pytest.raises(IngestError, match="no such file"):
            await run(store, embedder, [tmp_path / "missing"], tmp_path)
        with pytest.raises(IngestError, match="--teams"):
            await run(store, embedder, [EXAMPLES / "eu"], tmp_path, teams=[])
        await store.create(8)
        with pytest.raises(IngestError, match="8-wide vectors"):
            await run(store, embedder, [EXAMPLES / "eu"], tmp_path)
    finally:
        await store.close()


@pytest.mark.parametrize("engine", ["edge", "qdrant-local"])
async def test_both_embedded_engines_filter_inside_the_store(
    tmp_path: Path, embedder: Any, engine: str
) -> None:
    store = open_store(collection="kb", url=None, path=tmp_path, engine=engine)
    try:
        await run(store, embedder, [EXAMPLES / "policies" / "hr"], EXAMPLES)
        await run(store, embedder, [EXAMPLES / "finance"], EXAMPLES, kb="fin", teams=["finance"])
        vector = (await embedder.embed("When do the books close after quarter end?")).tolist()
        finance = await store.search(vector, access_filter(Access("finance", None)), 1, 0.1)
        assert finance[0].payload["source"] == "finance/quarter-close.md"
        other = await store.search(vector, access_filter(Access("support", None)), 1, 0.1)
        assert len(other) == 1
        assert other[0].payload["kb"] == "company"
    finally:
        await store.close()


def test_cli_ingest_prints_a_summary(
    tmp_path: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from gateway.api import app
    from gateway.cli import main as cli

    class Shared:  # the session's model, which the command must not close
        name, dim = embedder.name, embedder.dim
        embed_many = embedder.embed_many

        async def close(self) -> None:
            pass

    monkeypatch.setattr(app, "make_embedder", lambda settings: Shared())
    monkeypatch.setenv("GATEWAY_KNOWLEDGE_PATH", str(tmp_path))
    monkeypatch.chdir(EXAMPLES)
    argv = ["ingest", "eu", "--kb", "payroll", "--teams", "hr,finance", "--residency", "eu"]
    assert cli.main([*argv, "--collection", "kb", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "kb 'payroll' in 'kb': 1 docs, 3 chunks (3 added, 0 updated, 0 removed" in out
    assert cli.main([*argv, "--collection", "kb", "--no-progress"]) == 0
    assert "(0 added, 0 updated, 0 removed, 3 unchanged)" in capsys.readouterr().out
    assert cli.main(["ingest", "eu", "--kb", "bad name", "--teams", "*", "--collection", "kb"]) == 2
    assert "--kb 'bad name'" in capsys.readouterr().err
