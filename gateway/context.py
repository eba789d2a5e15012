"""The per-request context: the internal request, and what each stage decided about it.

Stages record typed decisions here (`decide`) and the few facts a later stage or the edge needs
(the retrieval outcome for refusal and citations, the deployment that answered, the usage and
cost that were settled). At the end the proxy folds all of it into one `Exchange` summary that
metrics, the request log and the SERVER span all read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span

from gateway.policy import Policy
from gateway.protocols.facts import AnswerFacts
from gateway.protocols.model import Usage
from gateway.protocols.request import GatewayRequest

if TYPE_CHECKING:
    from gateway.config import DeploymentConfig
    from middleware.retrieval import RetrievalOutcome


@dataclass(slots=True)
class Decision:
    """What one stage decided, in a form the request log and the span can record."""

    stage: str
    action: str  # e.g. "allow", "hit", "miss", "refuse", "redact", "retry"
    detail: dict[str, Any] | None = None


@dataclass(slots=True)
class Attempt:
    """One upstream call: which deployment, how it ended, how long it took."""

    model: str
    deployment: str
    outcome: str  # "ok" | "retry" | "failed" | "skipped"
    status: int | None
    duration_ms: float
    error: str | None = None


@dataclass(slots=True)
class SideCall:
    """A model call the gateway made on the tenant's behalf (a reranker, an embedder)."""

    model: str
    usage: Usage


@dataclass(slots=True)
class RequestContext:
    request_id: str
    started: float  # perf_counter() when the request arrived
    policy: Policy
    key_id: str
    request: GatewayRequest
    client_headers: dict[str, str]
    response_headers: dict[str, str] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    upstream_s: float = 0.0  # time spent waiting on upstreams (excluded from the overhead figure)
    stage_ms: dict[str, float] = field(default_factory=dict)  # each stage's own time, excluding later stages
    usage: Usage | None = None  # settled by the admission stage (real, or counted when none came)
    cost_nanos: int | None = None  # settled cost; None when the model has no known price
    side_calls: list[SideCall] = field(default_factory=list)
    retrieval: RetrievalOutcome | None = None  # set by the retrieval stage
    deployment: DeploymentConfig | None = None  # the deployment that answered
    served_model: str | None = None  # the public model that answered (a fallback may have)
    upstream_span: Span | None = None  # the answering attempt's CLIENT span, ended with the exchange
    response_facts: AnswerFacts | None = None  # id, model, finish reasons, usage of the answer
    first_token_at: float | None = None  # perf_counter() of the first generated text (streams)
    output_events: int = 0  # text events streamed (for time per output chunk)

    @classmethod
    def internal(
        cls, policy: Policy, body: dict[str, Any], request_id: str, key_id: str = "internal"
    ) -> RequestContext:
        """A context for a call the gateway makes itself (an eval, a replay, a reranker, a judge)."""
        import time

        return cls(request_id, time.perf_counter(), policy, key_id, GatewayRequest(body), {})

    @property
    def tenant(self) -> str:
        return self.policy.tenant

    @property
    def model(self) -> str:
        """The public model asked for (after any budget downgrade)."""
        return self.request.model

    @property
    def protocol(self) -> str:
        return self.request.protocol

    @property
    def stream(self) -> bool:
        return self.request.stream

    @property
    def operation(self) -> str:
        """The GenAI operation name: chat for every generating protocol."""
        return "embeddings" if self.request.protocol == "embeddings" else "chat"

    def decide(self, stage: str, action: str, **detail: Any) -> None:
        self.decisions.append(Decision(stage, action, detail or None))
