"""Embedding backends: the ONNX export reproduces sentence-transformers, and the shared
micro-batching worker batches, fails and stops as it promises."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from cache.embedder import (
    BatchingEmbedder,
    SentenceEmbedder,
    ThenFailed,
    TokenWindow,
    bundled_model_path,
    fits_window,
    fits_window_off_loop,
)
from cache.embedders import make_embedder
from cache.onnx_embedder import OnnxEmbedder, OnnxExport, export_onnx

TEXTS = [
    "How do I locate my card?",
    "I still have not received my new card, I ordered over a week ago.",
    "  leading and trailing spaces  ",
    "Ünïcödé café: naïve façade",
    "",
    "why " * 300,  # past the 256-token limit: truncated like sentence-transformers does
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedder-data")


@pytest.fixture(scope="module")
def exported(data_dir: Path) -> OnnxExport:
    # export_onnx silences the exporter's known, checked warnings itself (see
    # _known_export_warnings_ignored); any other warning still fails the tests.
    path = data_dir / "models" / "all-MiniLM-L6-v2.onnx"
    return export_onnx(bundled_model_path(), path, quantize=True)


@pytest.fixture(scope="module")
def onnx(exported: OnnxExport) -> Iterator[OnnxEmbedder]:
    embedder = OnnxEmbedder(exported.fp32)
    yield embedder
    asyncio.run(embedder.close())


@pytest.fixture(scope="module")
def onnx_int8(exported: OnnxExport) -> Iterator[OnnxEmbedder]:
    assert exported.int8 is not None
    embedder = OnnxEmbedder(exported.int8, name="all-MiniLM-L6-v2-int8")
    yield embedder
    asyncio.run(embedder.close())


@pytest.fixture(scope="module")
def reference(embedder: SentenceEmbedder) -> npt.NDArray[np.float32]:
    """sentence-transformers' own vectors for TEXTS (the session's torch model)."""
    return embedder.encode(TEXTS)


@pytest.fixture
def patient(exported: OnnxExport) -> Iterator[OnnxEmbedder]:
    """A fresh embedder that waits 200 ms for company: concurrent calls surely share a pass."""
    embedder = OnnxEmbedder(exported.fp32, max_wait_s=0.2)
    yield embedder
    asyncio.run(embedder.close())


def cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return np.asarray((a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("backend", ["embedder", "onnx", "onnx_int8"])
def test_vectors_are_unit_length_float32(backend: str, request: pytest.FixtureRequest) -> None:
    embedder: BatchingEmbedder = request.getfixturevalue(backend)
    vectors = embedder.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), embedder.dim) == (len(TEXTS), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_onnx_matches_sentence_transformers(
    embedder: SentenceEmbedder, reference: npt.NDArray[np.float32], onnx: OnnxEmbedder
) -> None:
    assert onnx.name == embedder.name  # identical vectors: indexes are interchangeable
    assert cosines(onnx.encode(TEXTS), reference).min() > 0.999


def test_onnx_vector_does_not_depend_on_its_batch(onnx: OnnxEmbedder) -> None:
    batched = onnx.encode(TEXTS)  # padded to the longest text
    alone = np.stack([onnx.encode([text])[0] for text in TEXTS])
    assert cosines(alone, batched).min() > 0.99999


def test_int8_is_close_to_sentence_transformers(
    reference: npt.NDArray[np.float32], onnx_int8: OnnxEmbedder
) -> None:
    assert cosines(onnx_int8.encode(TEXTS), reference).min() > 0.95


@pytest.mark.parametrize("backend", ["embedder", "onnx", "onnx_int8"])
def test_the_token_window_is_where_the_vector_stops_changing(
    backend: str, request: pytest.FixtureRequest
) -> None:
    embedder: BatchingEmbedder = request.getfixturevalue(backend)
    window = embedder.window
    assert window is not None
    assert window.max_tokens == 256
    # "why" is one word piece; [CLS] and [SEP] take two places of the window.
    assert window.count("why " * 254) == 256
    assert fits_window(embedder, "why " * 254)
    assert not fits_window(embedder, "why " * 255)
    tail = "Now tell me why the sky is blue."
    inside, past = "why " * 240, "why " * 300
    assert fits_window(embedder, inside)
    assert not fits_window(embedder, past)
    vectors = embedder.encode([inside, inside + tail, past, past + tail])
    assert float(vectors[0] @ vectors[1]) < 0.999  # the model sees what follows...
    assert float(vectors[2] @ vectors[3]) > 0.99999  # ...until the window is full


def test_fits_agrees_with_the_whole_count_on_every_path(embedder: SentenceEmbedder) -> None:
    """Short texts are counted whole; long ones are settled by their word count or by a
    probe of their beginning (cut between words, or anywhere in text without spaces)."""
    window = embedder.window
    assert window is not None
    texts = [
        "",
        "How do I locate my card?",
        "why " * 254,  # exactly the window
        "why " * 255,  # over it by the word count alone
        "antidisestablishmentarianism " * 40,  # few words, many word pieces
        "antidisestablishmentarianism " * 400,  # past the first probe, settled by it
        " " * 20_000 + "why",  # long, and a handful of word pieces: counted whole
        "数据" * 3_000,  # no space to cut at
        "x" * 101 + " why" * 250,  # a word over 100 characters is one [UNK]
        "갃 " * 42,  # short enough to fit uncounted: three jamo a syllable at most
        "갃" * 84,
        "갃 " * 43,  # just past the shortcut: counted
    ]
    for text in texts:
        assert window.fits(text) == (window.count(text) <= 256), text[:40]
        assert window.count(text) <= 3 * len(text) + 2  # the shortcut's bound


async def test_a_requests_window_check_tokenises_off_the_event_loop(onnx: OnnxEmbedder) -> None:
    """A turn the shortcuts cannot settle is tokenised on a thread (0.4-0.8 ms for 1,000
    characters would hold up every other request); the shortcuts answer on the loop. Same
    answers as ``fits``."""
    import threading

    window = onnx.window
    assert window is not None
    tokenizer = window._tokenizer
    threads: list[int] = []

    class Recording:
        """The window's tokenizer, noting which thread tokenises."""

        def encode_batch(self, texts: list[str], add_special_tokens: bool) -> Any:
            threads.append(threading.get_ident())
            return tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)

    window._tokenizer = Recording()  # type: ignore[assignment]
    try:
        loop_thread = threading.get_ident()
        for text, fits in (
            ("why " * 250, True),  # counted
            ("antidisestablishmentarianism " * 40, False),  # counted: few words, many pieces
            ("How do I locate my card?", True),  # short: settled without tokenising
            ("why " * 300, False),  # settled by the word count
        ):
            threads.clear()
            assert await fits_window_off_loop(onnx, text) is fits
            assert window.fits(text) is fits
            if window.settle(text) is None:
                assert threads
                assert threads[0] != loop_thread
            else:
                assert threads == []
    finally:
        window._tokenizer = tokenizer


def test_a_token_window_needs_a_window() -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(bundled_model_path() / "tokenizer.json"))
    with pytest.raises(ValueError, match="max_tokens"):
        TokenWindow(tokenizer, 0)


def test_an_embedder_that_cannot_count_counts_as_fitting() -> None:
    class Fake:
        """What the tests' fakes and wrappers look like: no tokenizer."""

        name, dim = "fake", 3

        async def embed(self, text: str) -> npt.NDArray[np.float32]:
            return self.encode([text])[0]

        async def embed_many(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
            return self.encode(texts)

        def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
            return np.full((len(texts), 3), 3**-0.5, dtype=np.float32)

        async def close(self) -> None:
            return None

    assert fits_window(Fake(), "why " * 1000)


async def test_embed_and_embed_many_match_encode(onnx: OnnxEmbedder) -> None:
    expected = onnx.encode(TEXTS[:3])
    one = await onnx.embed(TEXTS[0])
    many = await onnx.embed_many(TEXTS[:3])
    np.testing.assert_allclose(one, expected[0], atol=1e-6)
    np.testing.assert_allclose(many, expected, atol=1e-6)


async def test_embed_then_runs_the_follow_up_on_the_worker(onnx: OnnxEmbedder) -> None:
    threads: list[str] = []

    def follow_up(vector: npt.NDArray[np.float32]) -> float:
        threads.append(threading.current_thread().name)
        return float(vector.sum())

    vector, total = await onnx.embed_then(TEXTS[0], follow_up)
    np.testing.assert_allclose(vector, onnx.encode(TEXTS[:1])[0], atol=1e-6)
    assert total == pytest.approx(float(vector.sum()))
    assert threads == [onnx._thread.name]  # not the event loop's


async def test_a_failing_follow_up_fails_its_caller_only(onnx: OnnxEmbedder) -> None:
    def broken(vector: npt.NDArray[np.float32]) -> None:
        raise LookupError("index fell over")

    failed, fine = await asyncio.gather(
        onnx.embed_then(TEXTS[0], broken), onnx.embed(TEXTS[1]), return_exceptions=True
    )
    assert isinstance(failed, ThenFailed)
    assert isinstance(failed.__cause__, LookupError)
    np.testing.assert_allclose(failed.vector, onnx.encode(TEXTS[:1])[0], atol=1e-6)
    assert isinstance(fine, np.ndarray)
    assert fine.shape == (384,)


async def test_concurrent_embeds_share_forward_passes(patient: OnnxEmbedder) -> None:
    texts = [f"{text} #{i}" for i, text in enumerate(TEXTS[:4] * 4)]
    vectors = await asyncio.gather(*(patient.embed(text) for text in texts))
    assert patient.texts == len(texts)
    assert patient.batches < len(texts)
    # Each caller gets its own text's vector back, not a neighbour's.
    np.testing.assert_allclose(np.stack(vectors), patient.encode(texts), atol=1e-5)


async def test_failing_encode_raises_to_every_waiter(
    patient: OnnxEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    failure = RuntimeError("onnxruntime fell over")

    def broken(texts: Sequence[str]) -> npt.NDArray[np.float32]:
        raise failure

    with monkeypatch.context() as patch:
        patch.setattr(patient, "encode", broken)
        results = await asyncio.gather(*(patient.embed(t) for t in TEXTS), return_exceptions=True)
    assert results == [failure] * len(TEXTS)
    # The worker survived the failure and serves the next callers.
    assert (await patient.embed(TEXTS[0])).shape == (384,)


async def test_close_answers_queued_texts_then_stops_the_worker(patient: OnnxEmbedder) -> None:
    pending = [asyncio.ensure_future(patient.embed(text)) for text in TEXTS]
    await asyncio.sleep(0)  # queued; the worker is waiting up to 200 ms for more
    await patient.close()
    assert all(vector.shape == (384,) for vector in await asyncio.gather(*pending))
    assert not patient.running
    with pytest.raises(RuntimeError, match="closed"):
        await patient.embed("too late")


async def test_make_embedder_reuses_the_export(data_dir: Path, exported: OnnxExport) -> None:
    assert exported.int8 is not None
    before = {path: path.stat().st_mtime_ns for path in (exported.fp32, exported.int8)}
    for kind, name in (("onnx", "all-MiniLM-L6-v2"), ("onnx-int8", "all-MiniLM-L6-v2-int8")):
        embedder = make_embedder(kind, data_dir)
        try:
            assert isinstance(embedder, OnnxEmbedder)
            assert embedder.name == name
        finally:
            await embedder.close()
    assert {path: path.stat().st_mtime_ns for path in before} == before
    with pytest.raises(ValueError, match="unknown embedder kind"):
        make_embedder("tensorflow", data_dir)


async def test_int8_vectors_do_not_depend_on_their_batch(
    data_dir: Path, exported: OnnxExport
) -> None:
    # Dynamic quantisation scales activations over the whole batch; make_embedder therefore runs
    # int8 one text per pass, so a query embeds the same alone, in a batch, or under load.
    embedder = make_embedder("onnx-int8", data_dir, max_batch=32, max_wait_s=0.01)
    try:
        assert (embedder.max_batch, embedder.max_wait_s) == (1, 0.0)  # never waits for company
        alone = np.stack([embedder.encode([text])[0] for text in TEXTS])
        assert np.array_equal(embedder.encode(TEXTS), alone)
        concurrent = await asyncio.gather(*(embedder.embed(text) for text in TEXTS))
        assert np.array_equal(np.stack(concurrent), alone)
    finally:
        await embedder.close()


@pytest.mark.timeout(240)
def test_replicas_exporting_into_one_fresh_directory_at_once(tmp_path: Path) -> None:
    """Two processes starting together on an empty data_dir (found by CI: onnxruntime's quantizer
    writes a scratch model next to its input, and a second exporter read it half-written)."""
    import subprocess
    import sys

    out = tmp_path / "models" / "m.onnx"
    script = (
        "import sys; from pathlib import Path; "
        "from cache.embedder import bundled_model_path; "
        "from cache.onnx_embedder import export_onnx; "
        "e = export_onnx(bundled_model_path(), Path(sys.argv[1]), True); print(e.int8)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=220) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()[-2000:]
    int8 = out.with_suffix(".int8.onnx")
    assert {r[0].decode().strip() for r in results} == {str(int8)}
    OnnxEmbedder(int8)  # loads: not a half-written file
    assert not list(out.parent.glob("*inferred*"))  # no scratch model left behind


def test_only_a_bert_tokenizer_gets_the_short_text_shortcut() -> None:
    """The shortcut's bound (three normalised characters to one) holds for BERT's normaliser;
    a tokenizer that normalises otherwise (NFKC can make 18 characters of one) counts every
    text."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from tokenizers.normalizers import NFKC

    bert = Tokenizer.from_file(str(bundled_model_path() / "tokenizer.json"))
    assert TokenWindow(bert, 256).short_chars == 84
    other = Tokenizer(BPE())
    other.normalizer = NFKC()
    assert TokenWindow(other, 256).short_chars == 0


async def test_a_text_whose_caller_gave_up_is_not_encoded(patient: OnnxEmbedder) -> None:
    """A lookup cut off by its time budget cancels its wait: the worker skips that text, so a
    backlog does not keep it busy on vectors nobody will read."""
    gave_up = [asyncio.ensure_future(patient.embed(f"abandoned {i}")) for i in range(3)]
    await asyncio.sleep(0)  # queued; the worker waits up to 200 ms for company
    for waiting in gave_up:
        waiting.cancel()
    wanted = await patient.embed(TEXTS[0])
    assert wanted.shape == (384,)
    assert patient.skipped == 3
    assert patient.texts == 1  # only the live caller's text was encoded
