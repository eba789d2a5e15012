"""cache: answer a repeated or paraphrased question from an earlier answer, without the upstream.

Sits after the input guardrails and before retrieval, so a hit skips retrieval and the model.
1. exact: the same request (canonicalised) for the same tenant, model and corpus version;
2. semantic: the last user turn, embedded, against the tenant's entries in the same scope (model,
   system prompt, earlier turns, parameters), served when cosine >= the threshold and the
   paraphrase check passes: with `rules` (the default) gateway.cache.paraphrase (same kind of
   question, numbers, negation, people and content words), with `judge` the learned model of
   gateway.cache.judge (numbers and negation still must match). Both questions are compared in
   their normal form (gateway.cache.normalize: case, contractions, punctuation, whitespace). The
   few most similar entries are tried in order, so a near-miss that fails the check does not
   hide a true paraphrase behind it.
Hits come back in the request's own format (a stream is replayed as SSE) with
`x-gateway-cache: hit | semantic-hit`, else `miss` or `bypass`, and `x-gateway-cache-similarity`
when a semantic candidate was compared.

Stored on the way back, off the response path: complete 200 answers only (a JSON body with a
finish reason, or a stream that reached [DONE] with no error event). Refusals are cached exactly
(the corpus version is in the key, so they go when the corpus changes) but never served to a
paraphrase: a reworded question may well find sources. Answers with tool calls, and requests that
offer tools, are cached exactly only. `Cache-Control: no-cache` skips the lookup (the fresh answer
replaces the cached one); `no-store` also skips storing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable

import numpy as np

from gateway.cache.entry import REPLAYED_HEADERS, CachedAnswer, answer_from_completion, replay
from gateway.cache.judge import ParaphraseJudge, load_judge
from gateway.cache.keys import RequestKeys, cache_control, request_keys, uncacheable_reason
from gateway.cache.normalize import NORMAL_FORM, normalize_question
from gateway.cache.paraphrase import QuestionShape, mismatch, question_shape
from gateway.cache.settings import CachePolicy
from gateway.cache.store import CacheStore, CacheUnavailable, Limits
from gateway.chain import Handler
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.policy import Policy
from gateway.protocols.model import ZERO_USAGE, CompletionBuilder, Events
from gateway.response import GatewayResponse
from gateway.retrieval.embedder import Embedder
from gateway.services import Services

NAME = "cache"
HEADER = "x-gateway-cache"
SIMILARITY_HEADER = "x-gateway-cache-similarity"
# Entries above the threshold that are checked against the question before giving up.
CANDIDATES = 4
log = logging.getLogger("rag_gateway.cache")


def policy_fingerprint(policy: Policy) -> str:
    """Anything in the policy that may change an answer (retrieval settings, templates, ...).

    Keys, the description and the cache block itself are left out; any other edit starts the
    tenant's cache afresh, which is the safe side for a rare event.
    """
    dumped = policy.model_dump_json(exclude={"api_keys", "description", "cache"})
    return hashlib.sha256(dumped.encode()).hexdigest()[:16]


class CacheStage:
    name = NAME

    def __init__(
        self,
        settings: CachePolicy,
        store: CacheStore,
        embedder: Embedder | None,
        *,
        fingerprint: str = "",
        corpus_version: Callable[[str], int] | None = None,  # None: the tenant has no retrieval
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder if settings.semantic else None
        # Raises JudgeUnavailable (the policy is not built) when the judge has no weights for it.
        self.judge: ParaphraseJudge | None = (
            load_judge(self.embedder.model_id)
            if self.embedder is not None and settings.paraphrase_check == "judge"
            else None
        )
        self.threshold = settings.threshold
        self.fingerprint = fingerprint
        self._corpus_version = corpus_version
        self.limits = Limits(settings.ttl_s, settings.max_entries_per_tenant)
        self._writes: set[asyncio.Task[None]] = set()

    # -- the request path ------------------------------------------------------------------------

    async def handle(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        reason = uncacheable_reason(ctx.request.body, self.settings)
        if ctx.request.file_search is not None:
            # Its answer depends on the named stores' contents, which the key does not follow.
            reason = "file_search"
        if reason is not None:
            return await self._bypass(ctx, call_next, reason)
        directives = cache_control(ctx.client_headers)
        keys = self._keys(ctx)
        if "no-cache" in directives or "no-store" in directives:
            response = await self._bypass(ctx, call_next, "cache-control")
            return (
                response if "no-store" in directives else self._store_on_way_back(ctx, response, keys, None)
            )
        try:
            hit = await self._lookup(ctx, keys)
        except CacheUnavailable as exc:
            if self.settings.on_state_error == "fail_closed":
                ctx.decide(NAME, "unavailable", on_state_error="fail_closed", error=str(exc))
                raise GatewayError(
                    503,
                    "The response cache is unavailable and this tenant's policy does not allow "
                    "answering without it; retry shortly.",
                    type="server_error",
                    code="cache_unavailable",
                ) from exc
            ctx.decide(NAME, "unavailable", on_state_error="fail_open", error=str(exc))
            ctx.response_headers[HEADER] = "bypass"
            return await call_next(ctx)
        if isinstance(hit, GatewayResponse):
            return hit
        vector = hit
        response = await call_next(ctx)
        return self._store_on_way_back(ctx, response, keys, vector)

    def _keys(self, ctx: RequestContext) -> RequestKeys:
        version = self._corpus_version(ctx.tenant) if self._corpus_version is not None else 0
        model_id = f"{self.embedder.model_id}/{NORMAL_FORM}" if self.embedder is not None else ""
        return request_keys(ctx.tenant, ctx.model, version, self.fingerprint, model_id, ctx.request.body)

    async def _lookup(self, ctx: RequestContext, keys: RequestKeys) -> GatewayResponse | np.ndarray | None:
        """A hit's response, else the query vector (None without semantic) for storing the answer."""
        if self.settings.exact:
            answer = self._valid(await self.store.get(ctx.tenant, keys.exact), ctx, keys)
            if answer is not None:
                return self._replay(ctx, answer, "hit", keys.exact)
        normal = normalize_question(keys.query) if self.embedder is not None and keys.query else ""
        vector = await self._embed(normal) if normal else None
        similarity = rejected = None
        if vector is not None:
            match = await self.store.search(
                ctx.tenant, keys.scope, vector, self.threshold, self.limits, CANDIDATES
            )
            similarity = match.similarity
            if similarity is not None:
                ctx.response_headers[SIMILARITY_HEADER] = f"{similarity:.4f}"
            shape: QuestionShape | None = None
            for candidate in match.candidates:
                answer = self._valid(candidate.payload, ctx, keys)
                if answer is None:
                    continue
                probability = None
                if self.settings.paraphrase_check != "off":
                    if answer.question is None:
                        rejected = rejected or "cached answer has no question to compare"
                        continue
                    shape = shape or question_shape(normal)
                    cached_shape = question_shape(normalize_question(answer.question))
                    reason, probability = self._check(cached_shape, candidate.vector, shape, vector)
                    if reason is not None:
                        rejected = rejected or reason
                        continue
                ctx.response_headers[SIMILARITY_HEADER] = f"{candidate.similarity:.4f}"
                return self._replay(
                    ctx, answer, "semantic-hit", candidate.key, candidate.similarity, probability
                )
        ctx.response_headers[HEADER] = "miss"
        ctx.decide(NAME, "miss", key=keys.exact[:16], similarity=_rounded(similarity), rejected=rejected)
        return vector

    def _check(
        self, cached: QuestionShape, cached_vector: np.ndarray, new: QuestionShape, new_vector: np.ndarray
    ) -> tuple[str | None, float | None]:
        """(why the cached answer may not serve the new question or None, the judge's probability)."""
        if self.judge is None:
            return mismatch(cached, new), None
        # A number or a negation changes the answer however alike the sentences are.
        if cached.numbers != new.numbers:
            return "numbers differ", None
        if cached.negations != new.negations:
            return "negation differs", None
        probability = self.judge.probability(cached_vector, cached, new_vector, new)
        if probability < self.settings.judge_min_probability:
            return (
                f"judge: probability {probability:.2f} below {self.settings.judge_min_probability:g}",
                probability,
            )
        return None, probability

    async def _embed(self, text: str) -> np.ndarray | None:
        assert self.embedder is not None
        try:
            # CPU-bound (a few ms): off the event loop.
            return (await asyncio.to_thread(self.embedder.embed, [text]))[0]
        except Exception:  # the exact cache still works without the embedder
            log.exception("cache: embedding the query failed; semantic lookup skipped")
            return None

    def _valid(self, payload: bytes | None, ctx: RequestContext, keys: RequestKeys) -> CachedAnswer | None:
        if payload is None:
            return None
        answer = CachedAnswer.decode(payload)
        # The keys already separate tenants and scopes; this check makes a mix-up impossible to serve.
        if answer is None or answer.tenant != ctx.tenant or answer.scope != keys.scope:
            return None
        # max_tokens is not part of the key (a whole answer is the same under any larger cap), so
        # an answer longer than this request allows is not served to it.
        cap, length = ctx.request.max_output_tokens(), answer.output_tokens
        if cap is not None and (length is None or length > cap):
            return None
        return answer

    def _replay(
        self,
        ctx: RequestContext,
        answer: CachedAnswer,
        kind: str,
        key: str,
        similarity: float | None = None,
        probability: float | None = None,
    ) -> GatewayResponse:
        ctx.response_headers[HEADER] = kind
        for name, value in answer.headers.items():
            ctx.response_headers[name] = value
        ctx.usage = ZERO_USAGE
        ctx.decide(
            NAME,
            kind,
            key=key[:16],
            similarity=_rounded(similarity),
            paraphrase_probability=_rounded(probability),
            age_s=round(time.time() - answer.stored_at, 1),
            original_usage=answer.usage,
        )
        return GatewayResponse.answer(replay(answer, ctx.model), ctx.stream)

    async def _bypass(self, ctx: RequestContext, call_next: Handler, reason: str) -> GatewayResponse:
        ctx.response_headers[HEADER] = "bypass"
        ctx.decide(NAME, "bypass", reason=reason)
        return await call_next(ctx)

    # -- the way back ----------------------------------------------------------------------------

    def _store_on_way_back(
        self, ctx: RequestContext, response: GatewayResponse, keys: RequestKeys, vector: np.ndarray | None
    ) -> GatewayResponse:
        if response.status != 200:
            return response  # errors are never cached
        if response.is_stream:
            response.map_events(lambda events: self._capture(ctx, keys, vector, events))
        else:
            self._schedule(
                ctx, keys, vector, answer_from_completion(response.completion(), ctx.tenant, keys.scope)
            )
        return response

    async def _capture(
        self, ctx: RequestContext, keys: RequestKeys, vector: np.ndarray | None, events: Events
    ) -> Events:
        """Relay the events; store the answer they spell once the stream ended cleanly (a stream
        that breaks, reports an error or is cut by the client raises out of here instead)."""
        builder = CompletionBuilder()
        async for event in events:
            builder.feed(event)
            yield event
        self._schedule(ctx, keys, vector, answer_from_completion(builder.build(), ctx.tenant, keys.scope))

    def _schedule(
        self, ctx: RequestContext, keys: RequestKeys, vector: np.ndarray | None, answer: CachedAnswer | None
    ) -> None:
        if answer is None:
            return
        answer.headers = {h: ctx.response_headers[h] for h in REPLAYED_HEADERS if h in ctx.response_headers}
        answer.question = keys.query
        # Only a plain answer to a plain question may serve paraphrases (see the module docstring).
        semantic = (
            vector is not None and not answer.has_tool_calls and "x-gateway-refused" not in answer.headers
        )
        task = asyncio.create_task(self._write(ctx.tenant, keys, answer, vector if semantic else None))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(
        self, tenant: str, keys: RequestKeys, answer: CachedAnswer, vector: np.ndarray | None
    ) -> None:
        try:
            await self.store.put(
                tenant,
                keys.exact,
                answer.encode(),
                self.limits,
                scope=keys.scope if vector is not None else None,
                vector=vector,
            )
        except CacheUnavailable as exc:  # the client has its answer; only the caching is lost
            log.warning("cache: answer not stored for tenant %s: %s", tenant, exc)
        except Exception:
            log.exception("cache: storing an answer failed")

    async def drain(self) -> None:
        """Wait for pending writes (tests, benchmarks, shutdown)."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def corpus_version_reader(policy: Policy, services: Services) -> Callable[[str], int] | None:
    """(tenant) -> the corpus version, an in-memory read; None when retrieval is off for the tenant."""
    service = services.retrieval
    if not policy.retrieval.enabled or service is None:
        return None
    return lambda tenant: service.store.tenant(tenant).corpus_version()


def build(policy: Policy, services: Services) -> CacheStage | None:
    settings = policy.cache
    if not settings.enabled or not (settings.exact or settings.semantic):
        return None
    return CacheStage(
        settings,
        services.cache_store,
        services.embedders.loaded,
        fingerprint=policy_fingerprint(policy),
        corpus_version=corpus_version_reader(policy, services),
    )
