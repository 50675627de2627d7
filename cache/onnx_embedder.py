"""The sentence-transformers model on onnxruntime: same tokens, same pooling, no torch at run time.

``export_onnx`` traces the model's transformer once with ``torch.onnx.export`` (dynamic batch and
sequence axes) into a file the caller keeps (the gateway: ``./data/models/``), and optionally a
dynamically int8-quantised copy. ``OnnxEmbedder`` then needs only onnxruntime, ``tokenizers`` and
numpy: it tokenises with the model's own ``tokenizer.json``, runs the graph, mean-pools the token
embeddings over the attention mask and L2-normalises, which is what sentence-transformers' modules
(Transformer, Pooling with mean tokens, Normalize) do for all-MiniLM-L6-v2.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped]  # no type information shipped
from tokenizers import Tokenizer

from cache.embedder import BUNDLED_MODEL_NAME, BatchingEmbedder, TokenWindow, bundled_model_path

log = logging.getLogger(__name__)

OPSET = 17  # the first with a LayerNormalization op, which onnxruntime fuses further
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"


@dataclass(frozen=True)
class OnnxExport:
    """Where ``export_onnx`` left the models; ``int8`` is ``None`` unless quantisation was asked."""

    fp32: Path
    int8: Path | None


def quantized_path(out_path: Path) -> Path:
    """The int8 copy's path next to the fp32 model: ``model.onnx`` -> ``model.int8.onnx``."""
    return out_path.with_suffix(".int8" + out_path.suffix)


def export_onnx(model_dir: str | Path, out_path: str | Path, quantize: bool) -> OnnxExport:
    """Export the sentence-transformers model in ``model_dir`` to ``out_path`` once.

    A file is reused while its stamp (``<file>.stamp.json``) matches the source model's files
    (names, sizes, modification times) and the recipe; otherwise it is rebuilt, written to a
    temporary name and renamed into place, so a crash or a concurrent start never leaves a
    half-written model behind. Needs torch, transformers and onnx; loading does not.
    """
    model_dir, out_path = Path(model_dir), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Replicas starting together share data_dir: one exports, the others wait and reuse its
    # files (onnxruntime's quantizer also writes a scratch "-inferred" model next to its input).
    with _exclusive(out_path):
        return _export_locked(model_dir, out_path, quantize)


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An exclusive lock on ``<path>.lock`` across processes, held for the block."""
    with path.with_name(path.name + ".lock").open("a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _export_locked(model_dir: Path, out_path: Path, quantize: bool) -> OnnxExport:
    source = _fingerprint(model_dir)
    fp32_stamp = {"source": source, "recipe": f"torch.onnx legacy exporter, opset {OPSET}"}
    if not _fresh(out_path, fp32_stamp):
        log.info("exporting %s to %s", model_dir, out_path)
        with _replacing(out_path) as tmp:
            _export_fp32(model_dir, tmp)
        _write_stamp(out_path, fp32_stamp)
    if not quantize:
        return OnnxExport(out_path, None)
    int8_path = quantized_path(out_path)
    int8_stamp = {**fp32_stamp, "quantization": "dynamic, int8 weights, per channel"}
    if not _fresh(int8_path, int8_stamp):
        log.info("quantising %s to %s", out_path, int8_path)
        with _replacing(int8_path) as tmp:
            _quantize(out_path, tmp)
        _write_stamp(int8_path, int8_stamp)
    return OnnxExport(out_path, int8_path)


class OnnxEmbedder(BatchingEmbedder):
    """An exported model on onnxruntime's CPU provider, one worker thread, micro-batched.

    ``model_dir`` supplies the tokenizer and the sentence-transformers settings (maximum sequence
    length, pooling); it defaults to the bundled all-MiniLM-L6-v2. ``threads`` sets onnxruntime's
    intra-op threads (default: one per physical core).
    """

    def __init__(
        self,
        onnx_path: str | Path,
        model_dir: str | Path | None = None,
        *,
        name: str | None = None,
        max_batch: int = 32,
        max_wait_s: float = 0.002,
        threads: int | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        model_dir = Path(model_dir) if model_dir else bundled_model_path()
        _require_mean_pooling(model_dir)
        self._tokenizer = _load_tokenizer(model_dir)
        self.window = token_window(model_dir)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or 0
        # Idle intra-op threads would otherwise spin after every run: on two cores that burnt a
        # whole core beside the event loop for no gain in latency (measured: p50 equal).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: its fusion notices are not ours to act on
        self._session = ort.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}
        hidden = self._session.get_outputs()[0].shape[-1]
        self.dim = hidden if isinstance(hidden, int) else _hidden_size(model_dir)
        bundled = model_dir == bundled_model_path()
        self.name = name or (BUNDLED_MODEL_NAME if bundled else model_dir.name)
        super().__init__(max_batch=max_batch, max_wait_s=max_wait_s)

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Synchronous batch encoding, ``max_batch`` texts per forward pass.

        Texts are sorted by length first (as sentence-transformers does) so that each pass pads
        to similar lengths; rows come back in the caller's order.
        """
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), self.max_batch):
            chunk = order[start : start + self.max_batch]
            out[chunk] = self._forward([texts[i] for i in chunk])
        return out

    def _forward(self, texts: list[str]) -> npt.NDArray[np.float32]:
        # One text (the int8 embedder's every pass): ``encode`` tokenises on this thread;
        # ``encode_batch`` hands even one text to the tokenizer's thread pool and waits for it.
        # Same ids either way (padding pads to the batch's longest: none for one text).
        if len(texts) == 1:
            encodings = [self._tokenizer.encode(texts[0])]
        else:
            encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        (hidden,) = self._session.run([OUTPUT_NAME], feed)
        return mean_pool_normalize(np.asarray(hidden, dtype=np.float32), mask)


def mean_pool_normalize(
    hidden: npt.NDArray[np.float32], mask: npt.NDArray[np.int64]
) -> npt.NDArray[np.float32]:
    """Mean of the unmasked token embeddings, L2-normalised (sentence-transformers' Pooling with
    ``pooling_mode_mean_tokens`` then Normalize, with the same epsilons)."""
    weights = mask[..., None].astype(np.float32)
    summed = (hidden * weights).sum(axis=1)
    pooled = summed / np.maximum(weights.sum(axis=1), 1e-9)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    unit: npt.NDArray[np.float32] = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


def _load_tokenizer(model_dir: Path) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    # tokenizer.json pads every text to a fixed 128 and truncates there; sentence-transformers
    # pads to the longest text in the batch and truncates at the model's max_seq_length.
    tokenizer.enable_truncation(max_length=_max_seq_length(model_dir))
    pad_id = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tokenizer


def token_window(model_dir: Path) -> TokenWindow:
    """The model's window check: its own tokenizer (a copy, for counting only) and the maximum
    sequence length sentence-transformers truncates at."""
    return TokenWindow(
        Tokenizer.from_file(str(model_dir / "tokenizer.json")), _max_seq_length(model_dir)
    )


def _max_seq_length(model_dir: Path) -> int:
    config = _read_json(model_dir / "sentence_bert_config.json")
    if isinstance(config.get("max_seq_length"), int):
        return int(config["max_seq_length"])
    return int(_read_json(model_dir / "tokenizer_config.json").get("model_max_length", 512))


def _hidden_size(model_dir: Path) -> int:
    return int(_read_json(model_dir / "config.json")["hidden_size"])


def _require_mean_pooling(model_dir: Path) -> None:
    pooling = _read_json(model_dir / "1_Pooling" / "config.json")
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v is True]
    if modes != ["pooling_mode_mean_tokens"]:
        raise ValueError(f"{model_dir}: OnnxEmbedder implements mean pooling only, not {modes}")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


# -- export -------------------------------------------------------------------------------------


def _export_fp32(model_dir: Path, out_path: Path) -> None:
    import torch
    from transformers import AutoModel

    # Eager attention traces to the plain MatMul/Softmax pattern that onnxruntime fuses into one
    # Attention op; the SDPA path traces to a larger graph that it does not fuse.
    model = AutoModel.from_pretrained(
        str(model_dir), attn_implementation="eager", local_files_only=True
    ).eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            hidden: torch.Tensor = out.last_hidden_state
            return hidden

    # Trace with a padded batch: a mask of all ones could let the model skip its masking path.
    encodings = _load_tokenizer(model_dir).encode_batch(["a padded example sentence", "short"])
    sample = tuple(
        torch.tensor([getattr(e, attr) for e in encodings], dtype=torch.int64)
        for attr in ("ids", "attention_mask", "type_ids")
    )
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad(), _known_export_warnings_ignored():
        torch.onnx.export(
            LastHiddenState(),
            sample,
            str(out_path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={name: axes for name in (*INPUT_NAMES, OUTPUT_NAME)},
            opset_version=OPSET,
            dynamo=False,
        )


@contextmanager
def _known_export_warnings_ignored() -> Iterator[None]:
    """The warnings this export is known to raise, each checked and harmless here.

    - The legacy TorchScript exporter is deprecated: the torch.export-based one needs onnxscript,
      which the project does not install. The legacy one still exports this model exactly
      (cosine 1.0 to sentence-transformers on padded batches of any length).
    - TracerWarnings from transformers' shape checks (padding length, causal flag): they freeze
      branches that are constant for an encoder whose mask is as long as its input.
    - ``aten::index`` with negative indices: the model indexes position ids from zero.
    Anything else still surfaces (pytest runs with warnings as errors).
    """
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # type: ignore[attr-defined]
        warnings.filterwarnings(
            "ignore", message="You are using the legacy TorchScript-based ONNX export"
        )
        warnings.filterwarnings("ignore", message="The feature will be removed")
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        yield


def _quantize(fp32_path: Path, out_path: Path) -> None:
    from onnxruntime.quantization import (  # type: ignore[import-untyped]
        QuantType,
        quantize_dynamic,
    )

    # Per-channel weights: per-tensor int8 drops the mean cosine to the fp32 vectors from 0.993 to
    # 0.968 (minimum 0.983 -> 0.910 over banking77 queries) for no measurable speed-up.
    with _root_log_filtered("Please consider to run pre-processing before quantization"):
        # The pre-processing it suggests fails on this graph (incomplete symbolic shapes).
        quantize_dynamic(fp32_path, out_path, weight_type=QuantType.QInt8, per_channel=True)


@contextmanager
def _root_log_filtered(prefix: str) -> Iterator[None]:
    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefix)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _fingerprint(model_dir: Path) -> list[list[str | int]]:
    """The source model's files by name, size and mtime: cheap, and changes on any reinstall."""
    return [
        [p.name, p.stat().st_size, p.stat().st_mtime_ns]
        for p in sorted(model_dir.iterdir())
        if p.is_file()
    ]


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".stamp.json")


def _fresh(path: Path, stamp: dict[str, Any]) -> bool:
    stamp_path = _stamp_path(path)
    if not path.exists() or not stamp_path.exists():
        return False
    try:
        return bool(json.loads(stamp_path.read_text(encoding="utf-8")) == stamp)
    except ValueError:
        return False


def _write_stamp(path: Path, stamp: dict[str, Any]) -> None:
    with _replacing(_stamp_path(path)) as tmp:
        tmp.write_text(json.dumps(stamp, indent=1), encoding="utf-8")


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` renamed over it when the block succeeds."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
