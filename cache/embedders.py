"""Pick the embedding backend by a setting: ``torch``, ``onnx`` or ``onnx-int8``.

- ``torch``: sentence-transformers on torch, the reference.
- ``onnx``: the same weights exported once to ONNX and run on onnxruntime; vectors match the
  reference (cosine > 0.999999), so indexes built by either are interchangeable.
- ``onnx-int8`` (the gateway's default): dynamically int8-quantised weights; the fastest (one
  query: ~2.3 ms against ~3.8 ms fp32 and ~12 ms torch), which is what brings a semantic cache
  hit under 5 ms through the API. Its vectors differ (cosine ~0.99 to the reference), so it gets
  its own ``name``: cache entries are tagged with it and never compared with another embedder's.
  It runs one text per forward pass, without waiting for company (``max_wait_s`` 0): dynamic
  quantisation scales activations over the whole batch, so a batched text's vector would depend
  on its neighbours (cosine down to 0.987 to itself alone), and the same query could hit or miss
  depending on concurrent traffic.

The exported files live under ``<data_dir>/models/`` and are built on first use (torch,
transformers and onnx are needed then, not afterwards).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from cache.embedder import BUNDLED_MODEL_NAME, BatchingEmbedder, bundled_model_path

EmbedderKind = Literal["torch", "onnx", "onnx-int8"]
EMBEDDER_KINDS: tuple[str, ...] = get_args(EmbedderKind)


def make_embedder(
    kind: str,
    data_dir: Path,
    *,
    model_path: str | Path | None = None,
    max_batch: int = 32,
    max_wait_s: float = 0.002,
    threads: int | None = None,
) -> BatchingEmbedder:
    """The embedder of ``kind`` for the model in ``model_path`` (default: the bundled
    all-MiniLM-L6-v2), exporting it under ``data_dir / "models"`` first if ONNX needs it.

    ``max_batch`` and ``max_wait_s`` are ignored for ``onnx-int8``, which always encodes one
    text per pass, at once, on one thread unless ``threads`` says otherwise."""
    if kind not in EMBEDDER_KINDS:
        raise ValueError(f"unknown embedder kind {kind!r}; expected one of {EMBEDDER_KINDS}")
    if kind == "torch":
        from cache.embedder import SentenceEmbedder

        return SentenceEmbedder(
            model_path, max_batch=max_batch, max_wait_s=max_wait_s, threads=threads
        )

    from cache.onnx_embedder import OnnxEmbedder, export_onnx

    model_dir = Path(model_path) if model_path else bundled_model_path()
    name = model_dir.name if model_path else BUNDLED_MODEL_NAME
    quantize = kind == "onnx-int8"
    exported = export_onnx(model_dir, Path(data_dir) / "models" / f"{name}.onnx", quantize)
    onnx_path = exported.int8 if quantize and exported.int8 else exported.fp32
    return OnnxEmbedder(
        onnx_path,
        model_dir,
        # Same name as the torch reference for identical vectors; int8 vectors are not.
        name=f"{name}-int8" if quantize else name,
        max_batch=1 if quantize else max_batch,  # int8: batch-invariant vectors (see above)
        max_wait_s=0.0 if quantize else max_wait_s,  # nobody to wait for with one per pass
        # One short text per pass: a second intra-op thread costs more in hand-offs than it
        # saves (measured: 0.87 ms on one thread, 1.16 ms on two) and is the first to stall
        # when the cores are busy; it also leaves the other core to the event loop.
        threads=threads or (1 if quantize else None),
    )
