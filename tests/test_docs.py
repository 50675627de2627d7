"""The Markdown documentation's relative links resolve: every linked file exists and every
``#anchor`` names a heading of the page it points into (GitHub's slugs). The README stays short."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 260

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target), with an optional "title"; text may hold one level of [...]
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def doc_pages() -> list[Path]:
    pages = [ROOT / "README.md", ROOT / "bench" / "README.md"]
    pages += sorted((ROOT / "docs").glob("*.md"))
    pages += sorted((ROOT / "deploy").glob("*.md"))
    return [p for p in pages if p.is_file()]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out: list[tuple[int, str]] = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            continue
        if fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = None
            continue
        out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: inline Markdown reduced to its text, lowercase,
    punctuation dropped except ``-`` and ``_``, spaces to ``-``; unicode letters kept."""
    text = INLINE_CODE.sub(lambda m: m.group(2).strip(), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(page: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        reference = REFERENCE.match(line)
        if reference:
            found.append((number, reference.group(1)))
            continue
        without_code = INLINE_CODE.sub("", line)
        found += [(number, m.group(1)) for m in LINK.finditer(without_code)]
    return found


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    problems: list[str] = []
    name = page.relative_to(root)
    for number, target in links(page):
        if not target or SCHEME.match(target) or target.startswith("//"):
            continue
        path_part, _, fragment = target.partition("#")
        linked = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not linked.exists():
            problems.append(f"{name}:{number}: {target}: no such file")
            continue
        if not fragment:
            continue
        if linked.is_dir() or linked.suffix.lower() != ".md":
            problems.append(f"{name}:{number}: {target}: anchor into a non-Markdown file")
        elif unquote(fragment) not in anchors(linked):
            problems.append(f"{name}:{number}: {target}: no heading with that anchor")
    return problems


def test_slugs_follow_github() -> None:
    assert slug("Teams: limits, budgets, keys") == "teams-limits-budgets-keys"
    assert slug("Fault, fuzz and soak suites") == "fault-fuzz-and-soak-suites"
    assert slug("`python -m bench.overhead --telemetry`") == "python--m-benchoverhead---telemetry"
    assert slug("Figures (2 cores, Python 3.11.7)") == "figures-2-cores-python-3117"
    assert slug("Cost-tier routing") == "cost-tier-routing"
    assert slug("Größe und Ähnlichkeit") == "größe-und-ähnlichkeit"
    assert slug("`gateway_tier_outcomes_total`") == "gateway_tier_outcomes_total"


def test_duplicate_headings_are_numbered(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Notes\n\n## Notes\n\n```\n# Notes\n```\n\n## Notes\n", encoding="utf-8")
    assert anchors(page) == {"notes", "notes-1", "notes-2"}


def test_the_checker_finds_broken_links(tmp_path: Path) -> None:
    page = tmp_path / "a.md"
    (tmp_path / "b.md").write_text("# B title\n", encoding="utf-8")
    page.write_text(
        "# A\n\n[ok](b.md#b-title) [self](#a) [web](https://example.com) `[code](nope.md)`\n"
        "[gone](c.md) [bad anchor](b.md#nope) [bad self](#nope)\n\n```\n[fenced](nope.md)\n```\n",
        encoding="utf-8",
    )
    problems = [p.split(": ", 1)[1] for p in broken_links(page, tmp_path)]
    assert problems == [
        "c.md: no such file",
        "b.md#nope: no heading with that anchor",
        "#nope: no heading with that anchor",
    ]


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_the_docs_are_linked_from_the_readme() -> None:
    readme = ROOT / "README.md"
    linked = {(readme.parent / t.partition("#")[0]).resolve() for _, t in links(readme)}
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert missing == []


def test_readme_fits_on_a_screen() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines < README_MAX_LINES


SOURCE_PATH = re.compile(
    r"`((?:gateway|providers|cache|retrieval|tests|bench|deploy|examples)/[\w./-]*\w)`"
)


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_source_paths_exist(page: Path) -> None:
    # A page that names `gateway/x/y.py` sends a reader there: a module that moved must not
    # leave the docs pointing at nothing.
    missing = [
        path
        for path in SOURCE_PATH.findall(page.read_text())
        if "*" not in path and not (ROOT / path).exists()
    ]
    assert missing == []
