"""The long-lived objects the stages share, built once at start-up from gateway.yaml.

Each is an explicit, typed field: a stage's `build(policy, services)` takes what it needs from
here at policy-load time and keeps it; nothing is looked up by name at request time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.cache import make_cache_store
from gateway.cache.store import CacheStore
from gateway.config import LOCAL_PROVIDER, GatewayConfig, ModelConfig
from gateway.pricing import Pricing
from gateway.retrieval.warmup import CorpusWarmup
from gateway.state import StateBackend, make_state
from gateway.state.journal import SettleJournal
from gateway.state.leases import LeaseKeeper
from gateway.telemetry import Tracing
from gateway.upstreams.base import UpstreamClient
from gateway.upstreams.http import HTTPClient
from gateway.upstreams.local import LocalClient
from gateway.upstreams.router import Router

if TYPE_CHECKING:
    from gateway.policy import Policy
    from gateway.retrieval.embedder import Embedder
    from gateway.retrieval.service import RetrievalService
    from gateway.retrieval.tokens import TokenCounter
    from gateway.store_search import StoreSearch

log = logging.getLogger("rag_gateway.services")
Probe = Callable[[], Awaitable[tuple[bool, str]]]


class EmbedderSlot:
    """The process's one embedding model, loaded by whichever first needs it: retrieval, the
    semantic cache, semantic topics, or a /v1/embeddings call to a local model. A gateway that
    never embeds never pays its ~150 MB (the built-in `local-minilm` is always configured)."""

    def __init__(self, config: GatewayConfig, embedder: Embedder | None = None) -> None:
        self._config = config
        self._embedder = embedder
        self._lock = threading.Lock()

    @property
    def loaded(self) -> Embedder | None:
        """The embedder if something has loaded it, without loading it."""
        return self._embedder

    def __call__(self) -> Embedder:
        """The embedder, loading it on first use. Blocking: call it from a worker thread."""
        with self._lock:
            if self._embedder is None:
                self._embedder = load_embedder(self._config.retrieval.embedding_model, self._config)
            return self._embedder


@dataclass(slots=True)
class Services:
    config: GatewayConfig
    router: Router
    clients: dict[str, UpstreamClient]
    state: StateBackend  # rate limits, budgets, spend and stored responses (memory or Redis)
    pricing: Pricing
    cache_store: CacheStore
    embedders: EmbedderSlot  # the one embedding model, loaded when something first needs it
    leases: LeaseKeeper  # renews this process's open budget reservations
    journal: SettleJournal  # settlements the state store could not take yet
    tracing: Tracing | None = None
    retrieval: RetrievalService | None = None  # set once something needs it (ensure_retrieval)
    token_counter: TokenCounter | None = None  # the embedder's tokenizer, for chunk budgets
    readiness: dict[str, Probe] = field(default_factory=dict)  # what /readyz checks
    warmup: CorpusWarmup = field(default_factory=CorpusWarmup)  # seed corpora being ingested
    vector_stores: StoreSearch | None = None  # the tenants' vector stores, for the file_search tool

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
        await self.journal.close()
        await self.state.close()
        await self.cache_store.close()
        if self.retrieval is not None:
            self.retrieval.close()


def _provider_embedding(config: GatewayConfig, name: str) -> ModelConfig | None:
    """The gateway.yaml model `name` when it is an embedding model a provider serves."""
    configured = config.model(name)
    if (
        configured is not None
        and configured.mode == "embedding"
        and configured.deployments[0].provider != LOCAL_PROVIDER
    ):
        return configured
    return None


def provider_embedding_model(config: GatewayConfig) -> str | None:
    """The public name of retrieval's embedding model when a provider serves it (each query is then
    a paid call on the tenant's behalf); None for the bundled model."""
    name = config.retrieval.embedding_model
    return name if _provider_embedding(config, name) is not None else None


def load_embedder(model: str = "minilm", config: GatewayConfig | None = None) -> Embedder:
    """The bundled model, or a provider embedding model named by its public name in gateway.yaml."""
    provider_model = _provider_embedding(config, model) if config is not None else None
    if provider_model is not None:
        from gateway.retrieval.provider_embedder import ProviderEmbedder

        return ProviderEmbedder(provider_model)
    configured = config.model(model) if config is not None else None
    from gateway.retrieval.embedder import make_embedder  # onnxruntime: only when configured

    return make_embedder("minilm" if configured is not None else model)


def build_services(
    config: GatewayConfig, embedder: Embedder | None = None, tracing: Tracing | None = None
) -> Services:
    """Create clients only for the providers the config uses (litellm is heavy to import)."""
    if embedder is None and config.retrieval.enabled is True:
        embedder = load_embedder(config.retrieval.embedding_model, config)
    embedders = EmbedderSlot(config, embedder)
    clients: dict[str, UpstreamClient] = {
        "http": HTTPClient(max_connections=config.router.max_connections),
        "local": LocalClient(embedders),
    }
    if any(not d.fast_path and d.provider != LOCAL_PROVIDER for m in config.models for d in m.deployments):
        from gateway.upstreams.litellm_client import LiteLLMClient

        clients["litellm"] = LiteLLMClient()
    pricing = Pricing(config, config.pricing)
    pricing.warm()  # prices and tokenizers resolved now, not on a client's request
    state = make_state(config.state, config.ledger.lease_s)
    services = Services(
        config=config,
        router=Router(config, clients, tracing=tracing),
        clients=clients,
        state=state,
        pricing=pricing,
        cache_store=make_cache_store(config.state),
        embedders=embedders,
        leases=LeaseKeeper(state, config.ledger.lease_s),
        journal=SettleJournal(state, config.resolve(config.ledger.journal_dir)),
        tracing=tracing,
    )

    async def state_ready() -> tuple[bool, str]:
        ok = await state.ping()
        return ok, f"state {redacted_state(config.state)}: {'reachable' if ok else 'unreachable'}"

    services.readiness["state"] = state_ready
    if config.retrieval.enabled is True:
        ensure_retrieval(services)
    return services


def redacted_state(url: str) -> str:
    """gateway.yaml's `state:` for logs and /readyz, without a password."""
    if url == "memory":
        return url
    from gateway.state.redis_connect import parse

    return parse(url).redacted()


def policy_needs_embedder(policy: Policy) -> bool:
    """Retrieval, the semantic cache and semantic denied topics all embed text."""
    return (
        policy.retrieval.enabled
        or (policy.cache.enabled and policy.cache.semantic)
        or (
            policy.input_guardrails.enabled
            and any(t.examples for t in policy.input_guardrails.denied_topics.topics)
        )
    )


def ensure_retrieval(services: Services) -> bool:
    """Load the embedder and open the vector store, once, when something first needs them.

    With `retrieval.enabled` unset this happens only when a tenant's policy needs it, so a gateway
    without retrieval never pays for the model and the store (about 220 MB of RSS). Blocking: call
    it from a worker thread. False when gateway.yaml turns retrieval off (the embedder is still
    loaded: the semantic cache and semantic denied topics need it, not the store).
    """
    config = services.config
    if services.retrieval is not None:
        return True
    # Before the switch below: the semantic cache and semantic topics embed without retrieval.
    embedder = services.embedders()
    if config.retrieval.enabled is False:
        return False
    from gateway.retrieval.tokens import default_counter

    service, probe = open_retrieval(config, embedder)
    services.token_counter = default_counter()
    services.readiness["vector_store"] = probe
    services.retrieval = service
    return True


async def retrieval_if_enabled(services: Services) -> RetrievalService | None:
    """The retrieval service for an API that searches (vector stores, MCP), opened in a worker thread
    on first use; None when gateway.yaml turns retrieval off (checked first: no embedder is loaded
    for an answer that is a refusal anyway)."""
    if services.retrieval is None:
        if services.config.retrieval.enabled is False:
            return None
        await asyncio.to_thread(ensure_retrieval, services)
    return services.retrieval


def open_retrieval(config: GatewayConfig, embedder: Embedder) -> tuple[RetrievalService, Probe]:
    """The retrieval service over the configured vector store, and its readiness probe."""
    from gateway.retrieval.index import IndexStore, make_chroma_client
    from gateway.retrieval.service import RetrievalService

    store_config = config.vector_store
    path = None if store_config.url else str(config.resolve(store_config.path))
    client = make_chroma_client(path, store_config.url, store_config.connect_wait_s)
    where = f"chroma {'server ' + store_config.url if store_config.url else 'embedded at ' + str(path)}"

    async def vector_store_ready() -> tuple[bool, str]:
        beat = await asyncio.to_thread(client.heartbeat)
        return True, f"{where} (heartbeat {beat})"

    store = IndexStore(client, embedder.model_id)
    return RetrievalService(store, embedder, threads=config.retrieval.search_threads), vector_store_ready


def ingest_settings(config: GatewayConfig) -> Any:
    from gateway.retrieval.chunking import ChunkingConfig
    from gateway.retrieval.ingest import IngestSettings

    r = config.retrieval
    return IngestSettings(
        chunking=ChunkingConfig(max_tokens=r.chunk_max_tokens, overlap_tokens=r.chunk_overlap_tokens),
        max_file_bytes=r.max_file_bytes,
    )
