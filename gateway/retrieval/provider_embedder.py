"""Embeddings from a provider model configured in gateway.yaml (OpenAI-compatible deployments).

`retrieval.embedding_model: <public model name>` names a `mode: embedding` model; its deployments
are called in order (the next one when one fails), with the key from its `api_key_env`. Calls are
synchronous because the embedder runs in worker threads, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx
import numpy as np

from gateway.config import ModelConfig
from gateway.errors import EmbeddingUnavailable
from gateway.retrieval.embedder import l2_normalise
from gateway.upstreams.http import auth_headers, endpoint_url

BATCH = 64


class ProviderEmbedder:
    def __init__(self, model: ModelConfig, timeout_s: float | None = None) -> None:
        unsupported = [d.provider for d in model.deployments if not d.fast_path]
        if unsupported:
            raise ValueError(
                f"embedding model {model.name!r}: only OpenAI-compatible providers can embed for retrieval "
                f"(not {', '.join(unsupported)})"
            )
        self._model = model
        first = model.deployments[0]
        # The index records this id: a different provider model means a different vector space.
        self.model_id = f"{first.provider}/{first.model}"
        self.dim = 0  # known after the first call
        self._client = httpx.Client(timeout=timeout_s or max(d.timeout_s for d in model.deployments))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows: list[list[float]] = []
        for start in range(0, len(texts), BATCH):
            rows.extend(self._batch(list(texts[start : start + BATCH])))
        vectors = l2_normalise(np.asarray(rows, dtype=np.float32))
        self.dim = int(vectors.shape[1]) if vectors.size else self.dim
        return vectors

    def _batch(self, texts: list[str]) -> list[list[float]]:
        errors = []
        for deployment in self._model.deployments:
            try:
                response = self._client.post(
                    endpoint_url(deployment, "embeddings"),
                    json={"model": deployment.model, "input": texts},
                    headers=auth_headers(deployment),
                )
                response.raise_for_status()
                data = sorted(response.json()["data"], key=lambda item: item["index"])
                if len(data) != len(texts):
                    raise ValueError(f"{len(data)} embeddings for {len(texts)} inputs")
                return [item["embedding"] for item in data]
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                # Never include the request (it may carry the key in headers): type and status only.
                status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else None
                errors.append(f"{deployment.label()}: {type(exc).__name__}{f' {status}' if status else ''}")
        raise EmbeddingUnavailable(f"embedding model {self._model.name!r} failed: " + "; ".join(errors))
