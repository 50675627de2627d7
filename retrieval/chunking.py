"""Splitting documents into chunks: by heading, then paragraph, with overlap; stable ids.

A chunk never spans two sections, so its citation (title, section) is exact. Paragraphs are
packed up to ``max_chars``; a paragraph longer than that is split at sentence ends (then at
spaces). Consecutive chunks of one section share ``overlap_chars`` of text: the next chunk
starts with the previous one's last sentences, so a fact cut at a boundary is whole in one.

Identity: a chunk's id is a UUID5 of (kb, source, key) where the key is its section path and
ordinal in that section (an FAQ entry's key is its ``id`` or its question). Editing a paragraph
therefore keeps the id and changes the ``version`` (a hash of everything the chunk says and who
may see it): re-ingesting updates that point in place and the cache can invalidate by id.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .documents import Document, Heading, Paragraph

# Fixed forever: changing it would change every id.
CHUNK_NAMESPACE = uuid.UUID("6f1c1a52-9a4e-4d0b-8f39-2b4a8d7c5e10")

MAX_CHARS = 900  # all-MiniLM-L6-v2 reads 256 word pieces, roughly 1,000 characters of English
OVERLAP_CHARS = 150

Kind = Literal["passage", "faq"]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One retrievable unit of a document."""

    source: str
    key: str
    kind: Kind
    title: str
    section: str
    text: str
    question: str = ""  # FAQ entries
    answer: str = ""

    @property
    def embedding_text(self) -> str:
        """What is embedded: an FAQ entry's question (queries are matched against questions);
        a passage with its title and section, which often carry the words a question uses."""
        if self.kind == "faq":
            return self.question
        heading = f"{self.title} - {self.section}" if self.section else self.title
        return f"{heading}\n{self.text}"


def chunk_id(kb: str, source: str, key: str) -> str:
    """The chunk's point id: stable across re-ingestion while its section and place hold."""
    return str(uuid.uuid5(CHUNK_NAMESPACE, f"{kb}\n{source}\n{key}"))


def chunk_version(
    chunk: Chunk, *, teams: Sequence[str], residency: Sequence[str], model: str
) -> str:
    """A hash of what the chunk says, who may see it and the model that embedded it."""
    material = [
        chunk.kind,
        chunk.title,
        chunk.section,
        chunk.text,
        chunk.question,
        chunk.answer,
        sorted(teams),
        sorted(residency),
        model,
    ]
    return hashlib.sha256(json.dumps(material).encode()).hexdigest()[:16]


def chunk_payload(
    chunk: Chunk,
    *,
    kb: str,
    teams: Sequence[str],
    residency: Sequence[str],
    version: str,
    updated_at: str,
    model: str,
) -> dict[str, Any]:
    """The point's payload: what search filters on and what a citation shows."""
    payload: dict[str, Any] = {
        "kb": kb,
        "source": chunk.source,
        "key": chunk.key,
        "kind": chunk.kind,
        "title": chunk.title,
        "section": chunk.section,
        "text": chunk.text,
        "teams": sorted(teams),
        "residency": sorted(residency),
        "version": version,
        "updated_at": updated_at,
        "embedding_model": model,
    }
    if chunk.kind == "faq":
        payload["question"] = chunk.question
        payload["answer"] = chunk.answer
    return payload


def chunk_document(
    document: Document, *, max_chars: int = MAX_CHARS, overlap_chars: int = OVERLAP_CHARS
) -> list[Chunk]:
    """The chunks of one document, in reading order."""
    if overlap_chars >= max_chars // 2:
        raise ValueError("overlap_chars must be under half of max_chars")
    if document.format == "faq":
        return [
            Chunk(
                source=document.source,
                key=f"faq:{entry.key}",
                kind="faq",
                title=document.title,
                section=entry.section,
                text=f"Q: {entry.question}\nA: {entry.answer}",
                question=entry.question,
                answer=entry.answer,
            )
            for entry in document.faq
        ]
    chunks: list[Chunk] = []
    for section, paragraphs in _sections(document):
        for ordinal, text in enumerate(_pack(paragraphs, max_chars, overlap_chars)):
            chunks.append(
                Chunk(
                    source=document.source,
                    key=f"{section}#{ordinal}",
                    kind="passage",
                    title=document.title,
                    section=section,
                    text=text,
                )
            )
    return chunks


def _sections(document: Document) -> list[tuple[str, list[str]]]:
    """(section path, its paragraphs) in order; a path is the headings joined by ' > '."""
    path: list[tuple[int, str]] = []
    sections: dict[str, list[str]] = {}
    current = ""
    for block in document.blocks:
        if isinstance(block, Heading):
            path = [(level, text) for level, text in path if level < block.level]
            path.append((block.level, block.text))
            current = " > ".join(text for _, text in path)
        elif isinstance(block, Paragraph):
            # A heading repeated later (two "Notes" sections) continues its section's ordinals.
            sections.setdefault(current, []).append(block.text)
    return list(sections.items())


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def _pieces(paragraph: str, max_chars: int) -> list[str]:
    """A paragraph as pieces of at most ``max_chars``: whole if it fits, else by sentences,
    and a sentence too long by words."""
    if len(paragraph) <= max_chars:
        return [paragraph]
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(paragraph):
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", 0, max_chars)
            cut = cut if cut > max_chars // 2 else max_chars
            pieces.append(sentence[:cut].rstrip())
            sentence = sentence[cut:].lstrip()
        if sentence:
            pieces.append(sentence)
    return pieces


def _tail(text: str, overlap_chars: int) -> str:
    """The end of ``text`` to repeat at the start of the next chunk: whole trailing sentences
    within ``overlap_chars``, else trailing words."""
    if overlap_chars <= 0:
        return ""
    sentences = _SENTENCE_END.split(text)
    tail = ""
    for sentence in reversed(sentences):
        candidate = f"{sentence} {tail}".strip()
        if len(candidate) > overlap_chars:
            break
        tail = candidate
    if tail and tail != text:
        return tail
    words = text[-overlap_chars:].split(" ", 1)
    return words[1] if len(words) == 2 else ""


def _pack(paragraphs: list[str], max_chars: int, overlap_chars: int) -> list[str]:
    """Paragraphs packed into chunks of at most ``max_chars`` (plus the overlap carried in)."""
    pieces = [piece for paragraph in paragraphs for piece in _pieces(paragraph, max_chars)]
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for piece in pieces:
        if current and size + len(piece) + 2 > max_chars:
            chunks.append("\n\n".join(current))
            carried = _tail(chunks[-1], overlap_chars)
            current = [carried] if carried else []
            size = len(carried)
        current.append(piece)
        size += len(piece) + 2
    if current:
        chunks.append("\n\n".join(current))
    return chunks
