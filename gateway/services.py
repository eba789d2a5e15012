"""The long-lived objects the stages share, built once at start-up from gateway.yaml."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.config import LOCAL_PROVIDER, GatewayConfig
from gateway.upstreams.base import UpstreamClient
from gateway.upstreams.local import LocalClient
from gateway.upstreams.openai_http import OpenAIHTTPClient
from gateway.upstreams.router import Router

if TYPE_CHECKING:
    from gateway.retrieval.embedder import Embedder

log = logging.getLogger("rag_gateway.services")


@dataclass(slots=True)
class Services:
    config: GatewayConfig
    router: Router
    clients: dict[str, UpstreamClient]
    embedder: Embedder | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


def needs_local_embedder(config: GatewayConfig) -> bool:
    return any(
        dep.provider == LOCAL_PROVIDER
        for m in config.models
        if m.mode == "embedding"
        for dep in m.deployments
    )


def load_local_embedder() -> Embedder:
    from gateway.retrieval.embedder import LocalMiniLMEmbedder  # onnxruntime: only when configured

    return LocalMiniLMEmbedder()


def build_services(config: GatewayConfig, embedder: Embedder | None = None) -> Services:
    """Create clients only for the providers the config uses (litellm is heavy to import)."""
    if embedder is None and needs_local_embedder(config):
        embedder = load_local_embedder()
    clients: dict[str, UpstreamClient] = {
        "openai": OpenAIHTTPClient(max_connections=config.router.max_connections),
        "local": LocalClient(embedder),
    }
    if any(not d.fast_path and d.provider != LOCAL_PROVIDER for m in config.models for d in m.deployments):
        from gateway.upstreams.litellm_client import LiteLLMClient

        clients["litellm"] = LiteLLMClient()
    return Services(config=config, router=Router(config, clients), clients=clients, embedder=embedder)
