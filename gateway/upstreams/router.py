"""Choosing a deployment, retrying it, ejecting it when it keeps failing, and falling back.

Per deployment: a timeout, retries with exponential backoff and full jitter on 429/5xx/connect
errors (a Retry-After header wins when it is short enough), a circuit breaker that ejects the
deployment after N consecutive failures for T seconds, and weighted random choice among the
healthy ones. When every deployment of a model failed, the model's fallbacks are tried in order.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import orjson
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode

from gateway.config import LOCAL_PROVIDER, DeploymentConfig, GatewayConfig, ModelConfig, RouterConfig
from gateway.context import Attempt, RequestContext
from gateway.errors import GatewayError
from gateway.response import GatewayResponse
from gateway.telemetry import Tracing
from gateway.upstreams.base import UpstreamClient, UpstreamFailure

log = logging.getLogger("rag_gateway.router")


@dataclass(slots=True)
class Breaker:
    """Consecutive-failure circuit breaker for one deployment."""

    failures: int = 0
    open_until: float = 0.0

    def available(self, now: float) -> bool:
        # After the cooldown the breaker is half-open: the next request is the trial.
        return now >= self.open_until

    def success(self) -> None:
        self.failures = 0
        self.open_until = 0.0

    def failure(self, now: float, threshold: int, cooldown_s: float) -> bool:
        """Record a failure; True when this one opened the circuit."""
        self.failures += 1
        if self.failures >= threshold:
            self.open_until = now + cooldown_s
            self.failures = 0
            return True
        return False


def weighted_order(deployments: list[DeploymentConfig], rng: random.Random) -> list[DeploymentConfig]:
    """A random order where heavier deployments tend to come first (Efraimidis-Spirakis keys)."""
    if len(deployments) == 1:
        return deployments
    return sorted(deployments, key=lambda d: rng.random() ** (1.0 / d.weight), reverse=True)


class Router:
    def __init__(
        self,
        config: GatewayConfig,
        clients: dict[str, UpstreamClient],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = asyncio.sleep,
        rng: random.Random | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._models = {m.name: m for m in config.models}
        self._settings: RouterConfig = config.router
        self._clients = clients
        # One breaker per deployment, made once: the lookup runs on every request.
        self._breakers: dict[int, Breaker] = {id(d): Breaker() for m in config.models for d in m.deployments}
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._tracer = tracing.tracer if tracing is not None else None
        self._propagator = tracing.propagator if tracing is not None else None
        # Every configured upstream key: scrubbed from any upstream message a tenant may see.
        self._secrets = tuple(k for m in config.models for d in m.deployments if (k := d.api_key()))

    def client_for(self, deployment: DeploymentConfig) -> UpstreamClient:
        if deployment.provider == LOCAL_PROVIDER:
            return self._clients["local"]
        return self._clients["http" if deployment.fast_path else "litellm"]

    def breaker(self, deployment: DeploymentConfig) -> Breaker:
        return self._breakers[id(deployment)]

    def health(self) -> list[dict[str, Any]]:
        now = self._clock()
        return [
            {
                "model": model.name,
                "deployment": dep.label(),
                "ejected_for_s": round(max(0.0, self.breaker(dep).open_until - now), 1),
            }
            for model in self._models.values()
            for dep in model.deployments
        ]

    def backoff(self, attempt: int) -> float:
        ceiling = min(self._settings.backoff_max_s, self._settings.backoff_base_s * (2**attempt))
        return self._rng.uniform(0, ceiling)  # full jitter: spreads retries of many clients apart

    def _chain(self, model: ModelConfig) -> list[ModelConfig]:
        chain, seen, queue = [], set(), [model]
        while queue:
            current = queue.pop(0)
            if current.name in seen:
                continue
            seen.add(current.name)
            chain.append(current)
            queue.extend(self._models[name] for name in current.fallbacks if name in self._models)
        return chain

    async def call(self, ctx: RequestContext) -> GatewayResponse:
        """The chain's terminal handler: send the request to the first deployment that answers."""
        model = self._models.get(ctx.model)
        if model is None:
            raise GatewayError(
                404,
                f"The model `{ctx.model}` does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )
        last: UpstreamFailure | None = None
        last_model = ctx.model
        for candidate in self._chain(model):
            if candidate is not model and not ctx.policy.allows_model(candidate.name):
                continue  # a fallback the tenant may not use is skipped, not leaked
            now = self._clock()
            healthy = [d for d in candidate.deployments if self.breaker(d).available(now)]
            for skipped in candidate.deployments:
                if skipped not in healthy:
                    ctx.attempts.append(
                        Attempt(candidate.name, skipped.label(), "skipped", None, 0.0, "circuit open")
                    )
            for deployment in weighted_order(healthy, self._rng):
                try:
                    return await self._try_deployment(ctx, candidate, deployment)
                except UpstreamFailure as failure:
                    if not failure.retryable:
                        raise failure.to_gateway_error(candidate.name, self._secrets) from None
                    last = failure
                    last_model = candidate.name
        if last is None:
            raise GatewayError(
                503,
                f"every deployment of `{ctx.model}` is temporarily ejected after repeated failures; "
                "retry shortly",
                type="server_error",
                code="upstream_unavailable",
            )
        raise last.to_gateway_error(last_model, self._secrets)

    def _start_span(
        self, ctx: RequestContext, model: ModelConfig, deployment: DeploymentConfig, attempt: int
    ):
        if self._tracer is None:
            return None
        operation = ctx.operation
        body = ctx.request.body
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": deployment.provider,
            "gen_ai.request.model": deployment.model,
            "gateway.model": model.name,
            "gateway.tenant": ctx.tenant,
            "gateway.attempt": attempt,
            "server.address": _host(deployment),
        }
        for attribute, key in (
            ("gen_ai.request.temperature", "temperature"),
            ("gen_ai.request.max_tokens", "max_tokens"),
            ("gen_ai.request.top_p", "top_p"),
            ("gen_ai.request.seed", "seed"),
        ):
            value = body.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attributes[attribute] = value
        if ctx.policy.log_content and operation == "chat":
            attributes["gen_ai.input.messages"] = orjson.dumps(body.get("messages", [])).decode()
        return self._tracer.start_span(
            f"{operation} {deployment.model}", kind=SpanKind.CLIENT, attributes=attributes
        )

    def _trace_headers(self, span: Span | None) -> dict[str, str] | None:
        if span is None or self._propagator is None:
            return None
        headers: dict[str, str] = {}
        self._propagator.inject(headers, context=trace.set_span_in_context(span))
        return headers

    async def _try_deployment(
        self, ctx: RequestContext, model: ModelConfig, deployment: DeploymentConfig
    ) -> GatewayResponse:
        client = self.client_for(deployment)
        breaker = self.breaker(deployment)
        attempt = 0
        while True:
            span = self._start_span(ctx, model, deployment, attempt)
            headers = self._trace_headers(span)
            started = time.perf_counter()
            try:
                if ctx.operation == "embeddings":
                    response = await client.embeddings(deployment, ctx.request, headers)
                else:
                    response = await client.generate(deployment, ctx.request, headers)
            except UpstreamFailure as failure:
                elapsed = time.perf_counter() - started
                ctx.upstream_s += elapsed
                if failure.where is not None:
                    log.info("deployment %s at %s: %s", deployment.label(), failure.where, failure.message)
                if span is not None:
                    span.set_attribute("error.type", str(failure.status or failure.kind))
                    span.set_status(StatusCode.ERROR, failure.message)
                    span.end()
                if failure.counts_against_health and breaker.failure(
                    self._clock(),
                    self._settings.circuit_breaker_failures,
                    self._settings.circuit_breaker_cooldown_s,
                ):
                    log.warning(
                        "deployment %s ejected for %ss",
                        deployment.label(),
                        self._settings.circuit_breaker_cooldown_s,
                    )
                delay = failure.retry_after_s if failure.retry_after_s is not None else self.backoff(attempt)
                can_retry = (
                    failure.retryable
                    and attempt < deployment.max_retries
                    and breaker.available(self._clock())
                    and delay <= self._settings.max_retry_after_s
                )
                ctx.attempts.append(
                    Attempt(
                        model.name,
                        deployment.label(),
                        "retry" if can_retry else "failed",
                        failure.status,
                        elapsed * 1000,
                        failure.message,
                    )
                )
                if not can_retry:
                    raise
                attempt += 1
                await self._sleep(delay)
                continue
            except BaseException:
                if span is not None:  # cancelled (client gone) or a bug: the span still ends
                    span.end()
                raise
            elapsed = time.perf_counter() - started
            ctx.upstream_s += elapsed
            breaker.success()
            ctx.attempts.append(
                Attempt(model.name, deployment.label(), "ok", response.status, elapsed * 1000)
            )
            if model.name != ctx.model:
                ctx.decide("router", "fallback", model=model.name)
            ctx.deployment = deployment
            ctx.served_model = model.name
            # The CLIENT span stays open until the answer is complete (a stream's last byte); the
            # proxy ends it with the usage and finish reasons it settled (see gateway.exchange).
            ctx.upstream_span = span
            return response


def _host(deployment: DeploymentConfig) -> str:
    if deployment.api_base:
        return urlparse(deployment.api_base).hostname or ""
    return "api.openai.com" if deployment.provider == "openai" else deployment.provider
