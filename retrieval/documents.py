"""Reading source files into a common shape: a title and a flat list of headings and paragraphs.

Markdown, plain text, HTML (the standard library's ``html.parser``), JSONL FAQs (one
``{"question", "answer"}`` object a line) and PDF (with the optional ``pypdf`` package). Every
reader is pure: bytes in, ``Document`` out; ``DocumentError`` names the file and what is wrong.
"""

from __future__ import annotations

import importlib
import io
import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Literal

Format = Literal["markdown", "text", "html", "faq", "pdf"]

FORMATS: dict[str, Format] = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".html": "html",
    ".htm": "html",
    ".jsonl": "faq",
    ".pdf": "pdf",
}


class DocumentError(Exception):
    """A file that cannot be read as its format says; the message names the file."""


@dataclass(frozen=True, slots=True)
class Heading:
    """A heading of ``level`` 1 (the title) to 6."""

    level: int
    text: str


@dataclass(frozen=True, slots=True)
class Paragraph:
    """A block of text: a paragraph, a list item, a table row, a code block."""

    text: str


Block = Heading | Paragraph


@dataclass(frozen=True, slots=True)
class FaqEntry:
    """One curated question and its answer."""

    question: str
    answer: str
    key: str  # stable within its file: the entry's ``id``, else its normalised question
    section: str = ""


@dataclass(slots=True)
class Document:
    """One source file, read."""

    source: str
    title: str
    format: Format
    blocks: list[Block] = field(default_factory=list)
    faq: list[FaqEntry] = field(default_factory=list)


def format_of(path: Path) -> Format | None:
    return FORMATS.get(path.suffix.lower())


def read_document(path: Path, source: str) -> Document:
    """Read ``path`` (named ``source`` in the knowledge base) by its extension."""
    kind = format_of(path)
    if kind is None:
        raise DocumentError(f"{source}: unsupported file type {path.suffix!r}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DocumentError(f"{source}: cannot read: {exc.strerror}") from exc
    if kind == "pdf":
        return parse_pdf(data, source, default_title(path))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if kind == "markdown":
        return parse_markdown(text, source, default_title(path))
    if kind == "html":
        return parse_html(text, source, default_title(path))
    if kind == "faq":
        return parse_faq(text, source, default_title(path))
    return parse_text(text, source, default_title(path))


def default_title(path: Path) -> str:
    """``travel-policy.md`` -> ``Travel policy``."""
    words = re.sub(r"[-_]+", " ", path.stem).strip()
    return words[:1].upper() + words[1:] if words else path.name


_ATX = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_SETEXT = re.compile(r"^(=+|-+)\s*$")


def parse_markdown(text: str, source: str, fallback_title: str) -> Document:
    """ATX and setext headings, paragraphs split on blank lines, fenced code kept whole."""
    lines = text.splitlines()
    title = fallback_title
    if lines and lines[0].strip() == "---":  # YAML front matter: only its title is used
        for end in range(1, len(lines)):
            if lines[end].strip() in ("---", "..."):
                for line in lines[1:end]:
                    key, _, value = line.partition(":")
                    if key.strip() == "title" and value.strip():
                        title = value.strip().strip("\"'")
                lines = lines[end + 1 :]
                break
    blocks: list[Block] = []
    buffer: list[str] = []
    fence: str | None = None

    def flush() -> None:
        if paragraph := "\n".join(buffer).strip():
            blocks.append(Paragraph(paragraph))
        buffer.clear()

    for line in lines:
        if fence is not None:
            buffer.append(line)
            if line.strip().startswith(fence):
                fence = None
                flush()
            continue
        if match := _FENCE.match(line):
            flush()
            fence = match.group(1)
            buffer.append(line)
        elif match := _ATX.match(line):
            flush()
            blocks.append(Heading(len(match.group(1)), match.group(2)))
        elif _SETEXT.match(line) and len(buffer) == 1 and buffer[0].strip():
            level = 1 if line.lstrip().startswith("=") else 2
            blocks.append(Heading(level, buffer[0].strip()))
            buffer.clear()
        elif not line.strip():
            flush()
        else:
            buffer.append(line)
    flush()
    return _titled(Document(source, title, "markdown", blocks))


def parse_text(text: str, source: str, title: str) -> Document:
    """Paragraphs split on blank lines; the title is the file's name."""
    blocks: list[Block] = [
        Paragraph(p.strip()) for p in re.split(r"\n\s*\n", text.replace("\r\n", "\n")) if p.strip()
    ]
    return Document(source, title, "text", blocks)


def _titled(document: Document) -> Document:
    """A leading level-1 heading is the document's title rather than a section."""
    blocks = document.blocks
    if blocks and isinstance(blocks[0], Heading) and blocks[0].level == 1:
        document.title = blocks[0].text
        document.blocks = blocks[1:]
    return document


_SKIP_TAGS = frozenset({"script", "style", "noscript", "template", "svg", "nav", "head"})
_BLOCK_TAGS = frozenset(
    {
        "p", "div", "section", "article", "main", "aside", "header", "footer", "blockquote",
        "pre", "ul", "ol", "li", "dl", "dt", "dd", "table", "tr", "br", "hr", "figure",
        "figcaption", "form", "details", "summary", "body", "html",
    }
)  # fmt: skip
_HEADINGS = {f"h{i}": i for i in range(1, 7)}


class _HtmlBlocks(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.title = ""
        self._text: list[str] = []
        self._skip = 0
        self._in_title = False
        self._heading: int | None = None
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _SKIP_TAGS:
            self._skip += 1
        elif tag in _HEADINGS:
            self._flush()
            self._heading = _HEADINGS[tag]
        elif tag in _BLOCK_TAGS:
            self._flush()
            if tag == "pre":
                self._pre += 1
            elif tag == "li":
                self._text.append("- ")
        elif tag in ("td", "th") and self._text:
            self._text.append(" | ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _SKIP_TAGS:
            self._skip = max(0, self._skip - 1)
        elif tag in _HEADINGS or tag in _BLOCK_TAGS:
            if tag == "pre":
                self._pre = max(0, self._pre - 1)
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip:
            self._text.append(data)

    def _flush(self) -> None:
        raw = "".join(self._text)
        self._text.clear()
        text = raw.strip("\n") if self._pre else " ".join(raw.split())
        if text and text != "-":
            if self._heading is not None:
                self.blocks.append(Heading(self._heading, " ".join(text.split())))
            else:
                self.blocks.append(Paragraph(text))
        self._heading = None

    def close(self) -> None:
        super().close()
        self._flush()


def parse_html(text: str, source: str, fallback_title: str) -> Document:
    """Headings ``h1``-``h6`` and block elements' text; scripts, styles and navigation dropped."""
    parser = _HtmlBlocks()
    parser.feed(text)
    parser.close()
    document = _titled(Document(source, fallback_title, "html", parser.blocks))
    if title := " ".join(parser.title.split()):
        document.title = title
    return document


_FAQ_KEYS = frozenset({"question", "answer", "id", "section"})


def parse_faq(text: str, source: str, title: str) -> Document:
    """One JSON object a line: ``question`` and ``answer`` (required), ``id``, ``section``."""
    entries: list[FaqEntry] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DocumentError(f"{where}: not JSON: {exc.msg}") from exc
        if not isinstance(item, dict):
            raise DocumentError(f"{where}: each line must be a JSON object")
        if unknown := sorted(set(item) - _FAQ_KEYS):
            raise DocumentError(f"{where}: unknown field(s) {', '.join(unknown)}")
        fields = {}
        for name in ("question", "answer"):
            value = item.get(name)
            if not isinstance(value, str) or not value.strip():
                raise DocumentError(f"{where}: {name!r} must be a non-empty string")
            fields[name] = value.strip()
        for name in ("id", "section"):
            if name in item and not isinstance(item[name], str):
                raise DocumentError(f"{where}: {name!r} must be a string")
        key = item.get("id") or " ".join(fields["question"].lower().split())
        if key in seen:
            raise DocumentError(f"{where}: duplicate question or id {key!r}")
        seen.add(key)
        entries.append(
            FaqEntry(fields["question"], fields["answer"], key, item.get("section", "").strip())
        )
    return Document(source, title, "faq", faq=entries)


def parse_pdf(data: bytes, source: str, fallback_title: str) -> Document:
    """Each page's text (``pypdf``, optional) as one section: ``Page N``."""
    try:
        # Imported by name: an optional dependency, absent from some installs (and from mypy's).
        pypdf: Any = importlib.import_module("pypdf")
    except ImportError as exc:
        raise DocumentError(f"{source}: reading PDF needs the optional pypdf package") from exc
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        title = fallback_title
        if reader.metadata is not None and reader.metadata.title:
            title = str(reader.metadata.title).strip() or fallback_title
        blocks: list[Block] = []
        for number, page in enumerate(reader.pages, start=1):
            text = page.extract_text() or ""
            paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
            if paragraphs:
                blocks.append(Heading(2, f"Page {number}"))
                blocks.extend(Paragraph(p) for p in paragraphs)
    except (pypdf.errors.PyPdfError, ValueError, KeyError) as exc:
        raise DocumentError(f"{source}: not a readable PDF: {exc}") from exc
    return Document(source, title, "pdf", blocks)
