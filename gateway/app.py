"""The ASGI application: the OpenAI hot path, health and model listing, and the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from gateway.admin import ingest_documents, reindex_tenant, tenant_spend
from gateway.api_routes import list_page
from gateway.chain import FILE_SEARCH_CHAIN, Handler, compose
from gateway.config import DEFAULT_DEMO_KEY, DEMO_KEY_ENV, GatewayConfig, load_config
from gateway.edge import ChatClient, EmbeddingsClient, ModelKind
from gateway.errors import GatewayError, PoliciesNotApplicable, VectorStoreUnavailable, error_response
from gateway.files_api import install as install_files_api
from gateway.mcp_api import install as install_mcp
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.observability import Observability
from gateway.policy import Policy, PolicySnapshot, PolicyStore, RetrievalPolicy, hash_key, unknown_models
from gateway.protocols.completions import CompletionsClient
from gateway.protocols.messages import CountTokensEndpoint, MessagesClient
from gateway.protocols.responses import ResponsesClient, not_found
from gateway.proxy import ProtocolEndpoint, Receive, Scope, Send, request_headers
from gateway.services import (
    Services,
    build_services,
    ensure_retrieval,
    ingest_settings,
    policy_needs_embedder,
    redacted_state,
)
from gateway.vector_stores_api import install as install_vector_stores_api
from middleware import build_embedding_stages, build_stages
from middleware.admission import admit_api_call
from middleware.auth import authenticate, bearer_or_api_key

if TYPE_CHECKING:  # the ingest pipeline is imported only when a seed corpus is ingested
    from gateway.retrieval.ingest import Ingestor

log = logging.getLogger("rag_gateway.app")
CONFIG_ENV = "RAG_GATEWAY_CONFIG"


def demo_policy() -> Policy:
    """The tenant served when no policies folder is configured: key from $RAG_GATEWAY_DEMO_KEY."""
    key = os.environ.get(DEMO_KEY_ENV) or DEFAULT_DEMO_KEY
    return Policy(
        tenant="demo",
        description="built-in demo tenant",
        api_keys=[hash_key(key)],
        models=["*"],
        retrieval=RetrievalPolicy(enabled=True),
    )


class Gateway:
    """Owns the config, the policy store, the shared services and each tenant's composed chain."""

    def __init__(
        self,
        config: GatewayConfig,
        services: Services | None = None,
        observability: Observability | None = None,
    ) -> None:
        self.config = config
        self._services = services
        self.observability = observability or Observability.from_config(config.telemetry)
        self._chains: dict[tuple[str, str], Handler] = {}
        policies_dir = config.resolve(config.policies_dir) if config.policies_dir else None
        extra = [] if policies_dir else [demo_policy()]
        self.policies = PolicyStore(policies_dir, extra=extra, on_change=self._rebuild_chains)
        self._model_modes = {m.name: m.mode for m in config.models}
        self._watcher: asyncio.Task[None] | None = None
        self._index_watcher: asyncio.Task[None] | None = None
        self._warmup: asyncio.Task[None] | None = None
        self._leases: asyncio.Task[None] | None = None  # renews this process's budget reservations
        self._startup_error: str | None = None  # what keeps the gateway from starting, in words
        self.responses = ResponsesClient(lambda: self.services.state)
        self.files = install_files_api(self)
        self.vector_stores = install_vector_stores_api(self)
        self.mcp = install_mcp(self)
        vs = self.vector_stores
        # The hot path, one entry per generating or embedding route (plain ASGI, see proxy.py).
        self._fast_routes = {
            "/v1/chat/completions": ProtocolEndpoint(self, ChatClient()),
            "/v1/embeddings": ProtocolEndpoint(self, EmbeddingsClient()),
            "/v1/completions": ProtocolEndpoint(self, CompletionsClient()),
            "/v1/responses": ProtocolEndpoint(self, self.responses),
            "/v1/messages": ProtocolEndpoint(self, MessagesClient()),
            "/v1/messages/count_tokens": CountTokensEndpoint(self),
        }
        self.starlette = Starlette(
            routes=[
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/readyz", self.readyz, methods=["GET"]),
                Route("/metrics", self.metrics, methods=["GET"]),
                Route("/v1/models", self.list_models, methods=["GET"]),
                Route("/v1/models/{model:path}", self.get_model, methods=["GET"]),
                Route("/v1/responses/{response_id}", self.get_response, methods=["GET"]),
                Route("/v1/responses/{response_id}", self.delete_response, methods=["DELETE"]),
                Route("/v1/responses/{response_id}/input_items", self.response_input_items, methods=["GET"]),
                Route("/v1/files", self.files.create, methods=["POST"]),
                Route("/v1/files", self.files.list, methods=["GET"]),
                Route("/v1/files/{file_id}", self.files.retrieve, methods=["GET"]),
                Route("/v1/files/{file_id}", self.files.delete, methods=["DELETE"]),
                Route("/v1/files/{file_id}/content", self.files.content, methods=["GET"]),
                Route("/v1/vector_stores", vs.create, methods=["POST"]),
                Route("/v1/vector_stores", vs.list, methods=["GET"]),
                Route("/v1/vector_stores/{vector_store_id}", vs.retrieve, methods=["GET"]),
                Route("/v1/vector_stores/{vector_store_id}", vs.modify, methods=["POST"]),
                Route("/v1/vector_stores/{vector_store_id}", vs.delete, methods=["DELETE"]),
                Route("/v1/vector_stores/{vector_store_id}/files", vs.attach, methods=["POST"]),
                Route("/v1/vector_stores/{vector_store_id}/files", vs.list_files, methods=["GET"]),
                Route(
                    "/v1/vector_stores/{vector_store_id}/files/{file_id}", vs.retrieve_file, methods=["GET"]
                ),
                Route("/v1/vector_stores/{vector_store_id}/files/{file_id}", vs.detach, methods=["DELETE"]),
                Route("/v1/vector_stores/{vector_store_id}/file_batches", vs.create_batch, methods=["POST"]),
                Route(
                    "/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}",
                    vs.retrieve_batch,
                    methods=["GET"],
                ),
                Route(
                    "/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/files",
                    vs.batch_files,
                    methods=["GET"],
                ),
                Route("/v1/vector_stores/{vector_store_id}/search", vs.search, methods=["POST"]),
                Mount("/mcp", app=self.mcp),
                Route("/admin/tenants/{tenant}/documents", self.admin_documents, methods=["POST"]),
                Route("/admin/tenants/{tenant}/reindex", self.admin_reindex, methods=["POST"]),
                Route("/admin/tenants/{tenant}/spend", self.admin_spend, methods=["GET"]),
            ],
            exception_handlers={HTTPException: self._http_exception, Exception: self._unexpected},
            lifespan=self._lifespan,
        )

    @property
    def services(self) -> Services:
        if self._services is None:
            raise RuntimeError("services are created at start-up")
        return self._services

    # -- ASGI ---------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self._fast_routes.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        elif scope["type"] == "lifespan":
            await self.starlette(scope, receive, self._plain_startup_failure(send))
            return
        await self.starlette(scope, receive, send)

    def _plain_startup_failure(self, send: Send) -> Send:
        """Report a known start-up failure as its message instead of a traceback (uvicorn logs it)."""

        async def report(message: Any) -> None:
            if message["type"] == "lifespan.startup.failed" and self._startup_error is not None:
                message = {**message, "message": f"rag-gateway cannot start: {self._startup_error}"}
            await send(message)

        return report

    @contextlib.asynccontextmanager
    async def _lifespan(self, _: Starlette) -> AsyncIterator[None]:
        try:
            await self.start()
        except (VectorStoreUnavailable, PoliciesNotApplicable) as exc:
            self._startup_error = str(exc)
            raise
        try:
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        for line in self.config.missing_secrets():
            log.warning("%s (requests routed there will fail)", line)
        if self._services is None:
            # Model loading reads files and builds sessions: keep it off the event loop.
            self._services = await asyncio.to_thread(
                build_services, self.config, None, self.observability.tracing
            )
        self.services.vector_stores = self.vector_stores.searcher  # the file_search tool's
        # In a thread: building the chains may load the embedder and open the vector store.
        errors = await asyncio.to_thread(self.policies.load)
        for error in errors:
            log.error("%s", error)
        configured = [m.name for m in self.config.models]
        for policy in self.policies.snapshot.policies.values():
            for problem in unknown_models(policy, configured, f"policy {policy.tenant!r}"):
                log.error("%s (requests for it get 404)", problem)
        await asyncio.to_thread(self._prepare_indexes)
        state = self.services.state
        if state is not None and state.name != "memory" and not await state.ping():
            log.warning(
                "state: %s is unreachable at start-up; limits, budgets and the cache follow each "
                "policy's on_state_error until it answers (see /readyz)",
                redacted_state(self.config.state),
            )
        self._watcher = asyncio.create_task(self.policies.watch())
        self._leases = asyncio.create_task(self.services.leases.run())
        self.services.journal.start()  # replays and batches until services.close()
        await self.vector_stores.resume()  # files a stopped process was ingesting
        if self.services.warmup.seeds:
            self._warmup = asyncio.create_task(self.services.warmup.run(self._ingestor_for))
        if self.config.vector_store.url and self.services.retrieval is not None:
            # Replicas share a Chroma server: pick up ingests and rebuilds made by other processes.
            # (An embedded store is one process's: its HNSW segments do not follow another
            # process's writes, so a CLI ingest beside a running gateway shows at its restart.)
            self._index_watcher = asyncio.create_task(self._follow_indexes())
        log.info(
            "rag-gateway ready: %d tenants, %d models",
            len(self.policies.snapshot.policies),
            len(self.config.models),
        )

    def _prepare_indexes(self) -> None:
        """Report stale indexes clearly, and ingest the configured seed corpora (incrementally)."""
        services = self.services
        retrieval = services.retrieval
        if retrieval is None:
            return
        for tenant, policy in self.policies.snapshot.policies.items():
            if not policy.retrieval.enabled:
                continue
            index = retrieval.store.tenant(tenant)
            stale = index.stale_reason(retrieval.embedder.model_id)
            if stale and len(index):
                log.error(
                    "tenant %r: its index must be rebuilt (%s): run `rag-gateway reindex --tenant %s`",
                    tenant,
                    stale,
                    tenant,
                )
        # Seed corpora are ingested after start-up, in the background (see retrieval.warmup).
        for tenant, folder in self.config.retrieval.seed_corpus.items():
            services.warmup.plan(tenant, folder, index_is_empty=len(retrieval.store.tenant(tenant)) == 0)

    def _ingestor_for(self, tenant: str) -> Ingestor:
        from gateway.retrieval.ingest import Ingestor

        retrieval = self.services.retrieval
        assert retrieval is not None
        return Ingestor(retrieval.store.tenant(tenant), retrieval.embedder, ingest_settings(self.config))

    async def _follow_indexes(self, interval_s: float = 5.0) -> None:
        retrieval = self.services.retrieval
        assert retrieval is not None
        store = retrieval.store
        while True:
            await asyncio.sleep(interval_s)
            for tenant, policy in self.policies.snapshot.policies.items():
                if policy.retrieval.enabled:
                    try:
                        await asyncio.to_thread(store.refresh_if_changed, tenant)
                    except Exception as exc:  # the vector store being briefly away must not end the loop
                        log.warning("could not check tenant %r's index for changes: %s", tenant, exc)

    async def stop(self) -> None:
        await self.mcp.close()
        for task in (self._watcher, self._index_watcher, self._warmup, self._leases):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._services is not None:
            await self._services.close()
        self.observability.close()

    # -- chains -------------------------------------------------------------------------------

    def _rebuild_chains(self, snapshot: PolicySnapshot) -> None:
        if self._services is None:
            return
        if any(policy_needs_embedder(p) for p in snapshot.policies.values()):
            ensure_retrieval(self._services)
        chains: dict[tuple[str, str], Handler] = {}
        terminal = self._services.router.call
        tracer = self.observability.tracing.tracer
        for tenant, policy in snapshot.policies.items():
            chains[(tenant, "chat")] = compose(build_stages(policy, self._services), terminal, tracer)
            with_search = build_stages(policy, self._services, file_search=True)
            chains[(tenant, FILE_SEARCH_CHAIN)] = compose(with_search, terminal, tracer)
            # Embeddings are admitted and accounted; the chat-only stages do not apply.
            embedding_stages = build_embedding_stages(policy, self._services)
            chains[(tenant, "embeddings")] = compose(embedding_stages, terminal, tracer)
        self._chains = chains
        # Everything loaded so far (litellm's tables, tokenizers, models) lives for the whole
        # process: move it out of the collector's reach, or each full collection walks millions of
        # long-lived objects and stalls every request in flight for ~100 ms.
        gc.freeze()

    def handler_for(self, tenant: str, endpoint: str) -> Handler:
        """The tenant's chain for "chat", "embeddings" or FILE_SEARCH_CHAIN (a request that carries
        the file_search tool)."""
        return self._chains[(tenant, endpoint)]

    def serves(self, model: str, kind: ModelKind) -> bool:
        return self._model_modes.get(model) == kind

    def models_of(self, policy: Policy, kind: ModelKind) -> list[str]:
        """The models of this kind the tenant may use (for "did you mean" in a 404)."""
        return [
            name for name, mode in self._model_modes.items() if mode == kind and policy.allows_model(name)
        ]

    # -- plain routes -------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(self, request: Request) -> Response:
        if not self.config.telemetry.metrics:
            return error_response(
                GatewayError(404, "Metrics are disabled (telemetry.metrics: false).", code="unknown_url")
            )
        return Response(self.observability.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def readyz(self, request: Request) -> Response:
        checks: dict[str, Any] = {}
        ready = True
        checks["policies"] = {
            "ok": bool(self.policies.snapshot.policies),
            "tenants": len(self.policies.snapshot.policies),
            "errors": self.policies.last_errors,
        }
        ready &= bool(self.policies.snapshot.policies)
        checks["services"] = {"ok": self._services is not None}
        ready &= self._services is not None
        if self._services is not None:
            for name, probe in self._services.readiness.items():
                try:
                    ok, detail = await asyncio.wait_for(probe(), timeout=2.0)
                except Exception as exc:  # a probe that raises means "not ready", never a 500
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
                checks[name] = {"ok": ok, "detail": detail}
                ready &= ok
            warmup = self._services.warmup
            if warmup.seeds:
                checks["seed_corpora"] = {
                    "ok": warmup.ready,
                    "tenants": [seed.describe() for seed in warmup.seeds],
                }
                ready &= warmup.ready
            # Upstream health is reported, not required: a provider outage must not take every
            # replica out of the load balancer (fallbacks may still answer).
            checks["upstreams"] = {"ok": True, "deployments": self._services.router.health()}
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": checks}, status_code=200 if ready else 503
        )

    def authenticated_policy(self, request: Request) -> Policy:
        """The policy of the tenant whose API key the request carries (a 401 GatewayError if none)."""
        return self.policy_of_headers(request_headers(request.scope))

    def policy_of_headers(self, headers: dict[str, str]) -> Policy:
        """The same, from ASGI headers (lower-case names)."""
        _, policy = authenticate(bearer_or_api_key(headers), self.policies.snapshot, ChatClient.key_hint)
        return policy

    async def caller_policy(self, request: Request, counted: bool) -> Policy:
        """The caller's policy; a `counted` call also takes one request from its rate limits."""
        what = f"{request.method} {request.url.path}" if counted else None
        return await self.admitted_policy(request_headers(request.scope), what)

    async def admitted_policy(self, headers: dict[str, str], counted_as: str | None) -> Policy:
        """The policy of the key in these headers; with `counted_as` (what the call is, for the
        429's message), the call takes one request from the tenant's and the key's limits."""
        owner, policy = authenticate(bearer_or_api_key(headers), self.policies.snapshot, ChatClient.key_hint)
        if counted_as is not None:
            await admit_api_call(policy, owner.key_id, self.services.state, counted_as)
        return policy

    async def list_models(self, request: Request) -> Response:
        try:
            policy = self.authenticated_policy(request)
        except GatewayError as error:
            return error_response(error)
        data = [_model_card(m.name) for m in self.config.models if policy.allows_model(m.name)]
        return JSONResponse({"object": "list", "data": data})

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        try:
            policy = self.authenticated_policy(request)
            if name not in self._model_modes or not policy.allows_model(name):
                raise GatewayError(
                    404,
                    f"The model `{name}` does not exist or you do not have access to it.",
                    code="model_not_found",
                    param="model",
                )
        except GatewayError as error:
            return error_response(error)
        return JSONResponse(_model_card(name))

    # -- stored responses (the Responses API's GET / DELETE) -------------------------------------

    async def _stored_response(self, request: Request) -> tuple[Policy, str, dict[str, Any]]:
        policy = self.authenticated_policy(request)
        response_id = request.path_params["response_id"]
        record = await self.responses.store.load(policy.tenant, response_id)
        if record is None:
            raise not_found(response_id)
        return policy, response_id, record

    async def get_response(self, request: Request) -> Response:
        try:
            _, _, record = await self._stored_response(request)
        except GatewayError as error:
            return error_response(error)
        return JSONResponse(record["response"])

    async def delete_response(self, request: Request) -> Response:
        try:
            policy, response_id, _ = await self._stored_response(request)
            await self.responses.store.delete(policy.tenant, response_id)
        except GatewayError as error:
            return error_response(error)
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})

    async def response_input_items(self, request: Request) -> Response:
        try:
            _, _, record = await self._stored_response(request)
        except GatewayError as error:
            return error_response(error)
        items = list(record["input"])
        if request.query_params.get("order", "desc") == "desc":
            items.reverse()  # OpenAI lists the newest item first unless asked otherwise
        return JSONResponse(list_page(items, has_more=False))

    async def admin_documents(self, request: Request) -> Response:
        return await ingest_documents(self, request)

    async def admin_spend(self, request: Request) -> Response:
        return await tenant_spend(self, request)

    async def admin_reindex(self, request: Request) -> Response:
        return await reindex_tenant(self, request)

    async def _unexpected(self, request: Request, exc: Exception) -> Response:
        """A bug in an admin or health route: an OpenAI envelope, never a bare 500 page."""
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(
            GatewayError(
                500,
                f"The gateway failed to handle {request.method} {request.url.path}; its log has the details.",
                type="server_error",
                code="internal_error",
            )
        )

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            error = GatewayError(
                404, f"Unknown route: {request.method} {request.url.path}", code="unknown_url"
            )
        elif exc.status_code == 405:
            error = GatewayError(
                405,
                f"Method {request.method} is not allowed on {request.url.path}",
                code="method_not_allowed",
            )
        else:
            error = GatewayError(exc.status_code, str(exc.detail), code="http_error")
        return error_response(error)


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "rag-gateway"}


def create_app(config: GatewayConfig | None = None, services: Services | None = None) -> Gateway:
    return Gateway(config or load_config(None), services)


def app_from_env() -> Gateway:
    """Factory for uvicorn (also used by worker processes): config path from $RAG_GATEWAY_CONFIG."""
    path = os.environ.get(CONFIG_ENV)
    return create_app(load_config(Path(path) if path else None))
