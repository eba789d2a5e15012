"""Tenant policies: `policies/_default.yaml` plus one `<tenant>.yaml` per tenant that overrides it.

A tenant file is deep-merged over the default, then validated against `Policy`. Keys are stored
only as SHA-256 hashes. The store re-reads the folder when a file changes; an invalid edit keeps
that tenant's last good policy and logs why.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.cache.settings import CachePolicy
from gateway.config import format_validation_error
from gateway.guardrails.settings import InputGuardrailsPolicy, OutputGuardrailsPolicy
from gateway.state.settings import BudgetPolicy, RateLimitPolicy

log = logging.getLogger("rag_gateway.policy")

DEFAULT_POLICY_FILE = "_default.yaml"
KEY_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class PolicyError(Exception):
    """A policy file that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


DEFAULT_SOURCES_TEMPLATE = (
    "Answer the user's question using only the numbered sources below. Cite every claim with the "
    "number of its source in square brackets, like [1] or [2][3]. If the sources do not contain the "
    "answer, say that you do not know rather than guessing.\n\n{sources}"
)
DEFAULT_REFUSAL = (
    "I could not find this in the documents I have access to, so I won't guess. "
    "Try rephrasing the question or ask about a topic the documents cover."
)
DEFAULT_UNCERTAINTY_NOTE = (
    "The retrieved sources may not answer this question well. Say clearly how certain you are, "
    "and do not state anything the sources do not support."
)
DEFAULT_CONFLICT_NOTE = (
    "Some sources disagree with each other (marked as conflicts below). Point out the disagreement, "
    "give each source's date or version, and prefer the newest unless the question asks otherwise."
)


class RerankPolicy(_Strict):
    model: str | None = Field(
        default=None, description="Public model that reranks the fused candidates (off: null)"
    )
    candidates: int = Field(default=20, ge=2, le=100, description="Fused candidates shown to the reranker")


class RetrievalPolicy(_Strict):
    """Retrieval injection and refusal: what is searched, what is injected, when to refuse."""

    enabled: bool = False
    top_k: int = Field(default=5, ge=1, le=50, description="Sources injected at most")
    candidates: int = Field(
        default=100, ge=1, le=1000, description="Candidates from each retriever before fusion"
    )
    max_context_tokens: int = Field(default=1500, ge=50, description="Token budget for the injected sources")
    min_confidence: float = Field(
        # gateway.retrieval.confidence.DEFAULT_REFUSAL_THRESHOLD: chosen on the calibration data
        # (a test keeps the two equal).
        default=0.52,
        ge=0,
        le=1,
        description="Below this retrieval confidence, on_low_confidence applies",
    )
    on_low_confidence: Literal["refuse", "warn", "passthrough"] = "refuse"
    refusal_message: str = DEFAULT_REFUSAL
    uncertainty_note: str = DEFAULT_UNCERTAINTY_NOTE
    template: str = Field(
        default=DEFAULT_SOURCES_TEMPLATE, description="System message; {sources} is replaced"
    )
    conflict_note: str = DEFAULT_CONFLICT_NOTE
    prefer_newest_on_conflict: bool = False
    rewrite_follow_ups: bool = Field(
        default=True, description="Expand a follow-up question with the previous turn"
    )
    filters: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Metadata equality filters applied to every search (e.g. kind: text)",
    )
    rerank: RerankPolicy = Field(default_factory=RerankPolicy)

    @field_validator("template")
    @classmethod
    def _has_sources(cls, value: str) -> str:
        if "{sources}" not in value:
            raise ValueError("the template must contain {sources} where the numbered sources go")
        return value


def _check_key_hash(value: str) -> str:
    if not KEY_HASH_RE.match(value):
        raise ValueError(
            "an api key must be stored as 'sha256:<64 lower-case hex>' "
            "(run `rag-gateway keys create --tenant T`), never the key itself"
        )
    return value


KeyHash = Annotated[str, AfterValidator(_check_key_hash)]


class ResponsesPolicy(_Strict):
    """The Responses API's stored responses (`store: true`, `previous_response_id`)."""

    store_ttl_s: int = Field(
        default=30 * 86400,
        ge=60,
        le=365 * 86400,
        description="How long a stored response (and the conversation it carries) is kept; "
        "OpenAI keeps 30 days",
    )
    store_by_default: bool = Field(
        default=True, description="What a request without `store` gets (OpenAI's default is true)"
    )


class Policy(_Strict):
    """Everything a tenant may do and how each stage of the chain treats its requests."""

    tenant: str = Field(description="Tenant id; must match the file name")
    description: str = ""
    api_keys: list[KeyHash] = Field(default_factory=list, description="Keys as 'sha256:<hex>' of the key")
    models: list[str] = Field(
        default_factory=list, description="Public model names this tenant may use; '*' for all"
    )
    log_content: bool = Field(default=False, description="Allow prompts and completions in traces and logs")
    retrieval: RetrievalPolicy = Field(default_factory=RetrievalPolicy)
    rate_limit: RateLimitPolicy = Field(default_factory=RateLimitPolicy)
    budget: BudgetPolicy = Field(default_factory=BudgetPolicy)
    cache: CachePolicy = Field(default_factory=CachePolicy)
    input_guardrails: InputGuardrailsPolicy = Field(default_factory=InputGuardrailsPolicy)
    output_guardrails: OutputGuardrailsPolicy = Field(default_factory=OutputGuardrailsPolicy)
    responses: ResponsesPolicy = Field(default_factory=ResponsesPolicy)

    @field_validator("tenant")
    @classmethod
    def _tenant_id(cls, value: str) -> str:
        if not TENANT_RE.match(value):
            raise ValueError("tenant ids are lower-case letters, digits, '-' and '_' (at most 63)")
        return value

    def allows_model(self, name: str) -> bool:
        return "*" in self.models or name in self.models


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return "sk-rg-" + secrets.token_urlsafe(32)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Override wins; mappings merge recursively; lists and scalars replace."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: expected a mapping at the top level")
    return data


def build_policy(source: str, default: dict[str, Any], tenant_raw: dict[str, Any]) -> Policy:
    try:
        return Policy.model_validate(deep_merge(default, tenant_raw))
    except ValidationError as exc:
        raise PolicyError(format_validation_error(source, exc)) from exc


def load_default(directory: Path) -> dict[str, Any]:
    path = directory / DEFAULT_POLICY_FILE
    if not path.exists():
        return {}
    raw = _read_yaml(path)
    if "tenant" in raw or "api_keys" in raw:
        raise PolicyError(f"{path}: 'tenant' and 'api_keys' belong in a tenant's own file, not the default")
    # Validate the defaults on their own so an error names this file, not every tenant.
    build_policy(str(path), {"tenant": "default-check"}, raw)
    return raw


def load_tenant_file(path: Path, default: dict[str, Any]) -> Policy:
    raw = _read_yaml(path)
    policy = build_policy(str(path), default, raw)
    if policy.tenant != path.stem:
        raise PolicyError(f"{path}: tenant: {policy.tenant!r} does not match the file name {path.stem!r}")
    return policy


def tenant_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.yaml") if not p.name.startswith("_"))


def validate_dir(
    directory: Path, configured_models: Iterable[str] | None = None
) -> tuple[list[Policy], list[str]]:
    """Every policy in a folder, and every problem found (file, field, what is wrong); with
    `configured_models`, also each model a policy names that the gateway does not serve."""
    problems: list[str] = []
    policies: list[Policy] = []
    if not directory.is_dir():
        return [], [f"{directory}: not a directory"]
    try:
        default = load_default(directory)
    except PolicyError as exc:
        return [], [str(exc)]
    seen_keys: dict[str, str] = {}
    for path in tenant_files(directory):
        try:
            policy = load_tenant_file(path, default)
        except PolicyError as exc:
            problems.append(str(exc))
            continue
        for key in policy.api_keys:
            owner = seen_keys.setdefault(key, policy.tenant)
            if owner != policy.tenant:
                problems.append(f"{path}: api_keys: a key is also listed by tenant {owner!r}")
        if configured_models is not None:
            problems += unknown_models(policy, configured_models, str(path))
        policies.append(policy)
    return policies, problems


def unknown_models(policy: Policy, configured: Iterable[str], source: str) -> list[str]:
    """Each model a policy names that gateway.yaml does not define, with the closest configured name."""
    names = sorted(set(configured))
    named: list[tuple[str, str]] = [("models", m) for m in policy.models if m != "*"]
    if policy.budget.downgrade_to:
        named.append(("budget.downgrade_to", policy.budget.downgrade_to))
    if policy.retrieval.rerank.model:
        named.append(("retrieval.rerank.model", policy.retrieval.rerank.model))
    named += [("rate_limit.per_model", m) for m in policy.rate_limit.per_model]
    problems = []
    for where, model in named:
        if model in names:
            continue
        close = difflib.get_close_matches(model, names, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else f"; configured: {', '.join(names) or 'none'}"
        problems.append(
            f"{source}: tenant {policy.tenant!r}: {where}: {model!r} is not a model gateway.yaml "
            f"defines{hint}"
        )
    return problems


@dataclass(frozen=True, slots=True)
class KeyOwner:
    tenant: str
    key_id: str  # a short, non-secret label for the key (limits, logs)
    digest: bytes


@dataclass(slots=True)
class PolicySnapshot:
    """An immutable view of every tenant, swapped whole on reload."""

    policies: dict[str, Policy]
    keys: dict[bytes, KeyOwner] = field(default_factory=dict)

    @classmethod
    def of(cls, policies: dict[str, Policy]) -> PolicySnapshot:
        keys: dict[bytes, KeyOwner] = {}
        for policy in policies.values():
            for key_hash in policy.api_keys:
                digest = bytes.fromhex(key_hash.removeprefix("sha256:"))
                keys[digest] = KeyOwner(policy.tenant, key_hash[7:19], digest)
        return cls(policies, keys)

    def owner_of(self, presented_key: str) -> KeyOwner | None:
        digest = hashlib.sha256(presented_key.encode("utf-8")).digest()
        owner = self.keys.get(digest)
        # The dict lookup finds the candidate; the final equality check is constant-time.
        if owner is not None and hmac.compare_digest(owner.digest, digest):
            return owner
        return None


class PolicyStore:
    """Holds the current snapshot and reloads it when the policy folder changes."""

    def __init__(
        self,
        directory: Path | None,
        extra: list[Policy] | None = None,
        on_change: Callable[[PolicySnapshot], None] | None = None,
    ) -> None:
        self.directory = directory
        self._extra = extra or []
        self._on_change = on_change
        self._fingerprint: tuple[tuple[str, int, int], ...] = ()
        self._default_raw: dict[str, Any] = {}
        self.snapshot = PolicySnapshot.of({})
        self.last_errors: list[str] = []

    def load(self) -> list[str]:
        """Load (or reload) every file; returns the problems found. Invalid tenants keep their last policy."""
        errors: list[str] = []
        current = dict(self.snapshot.policies)
        loaded: dict[str, Policy] = {}
        previous_fingerprint = self._fingerprint
        if self.directory is not None and not self.directory.is_dir():
            # Not fatal (the folder may be mounted later and is picked up then), but say so:
            # without it no tenant can authenticate.
            errors.append(f"policies folder {self.directory} does not exist: no tenant can authenticate")
        if self.directory is not None:
            self._fingerprint = self._scan()
            try:
                self._default_raw = load_default(self.directory)
            except PolicyError as exc:
                errors.append(str(exc))
                log.error("policy reload rejected, keeping the last good policies: %s", exc)
                self.last_errors = errors
                return errors
            for path in tenant_files(self.directory):
                try:
                    policy = load_tenant_file(path, self._default_raw)
                except PolicyError as exc:
                    errors.append(str(exc))
                    if path.stem in current:
                        loaded[path.stem] = current[path.stem]
                        log.error(
                            "policy for tenant %r rejected, keeping the last good one: %s", path.stem, exc
                        )
                    else:
                        log.error("policy rejected: %s", exc)
                    continue
                loaded[policy.tenant] = policy
        for policy in self._extra:
            merged = build_policy(f"<built-in {policy.tenant}>", self._default_raw, policy.model_dump())
            loaded.setdefault(merged.tenant, merged)
        snapshot = PolicySnapshot.of(loaded)
        if self._on_change is not None:
            # Build what the new policies need (chains, models, the vector store) before anyone sees
            # them: if that fails, requests keep the last good policies and the next poll retries.
            try:
                self._on_change(snapshot)
            except Exception as exc:
                self._fingerprint = previous_fingerprint
                self.last_errors = [*errors, f"the policies could not be applied: {exc}"]
                raise
        self.snapshot = snapshot
        self.last_errors = errors
        return errors

    def _scan(self) -> tuple[tuple[str, int, int], ...]:
        assert self.directory is not None
        entries = []
        try:
            with os.scandir(self.directory) as it:
                for entry in it:
                    if entry.name.endswith(".yaml"):
                        st = entry.stat()
                        entries.append((entry.name, st.st_mtime_ns, st.st_size))
        except OSError:
            return ()
        return tuple(sorted(entries))

    def changed(self) -> bool:
        return self.directory is not None and self._scan() != self._fingerprint

    async def watch(self, interval_s: float = 0.5) -> None:
        """Poll the folder's mtimes (cheap, works on every filesystem and in containers)."""
        failures = 0
        while True:
            # After a failed apply, retry with backoff (up to 30 s) rather than every poll.
            await asyncio.sleep(min(30.0, interval_s * 2**failures) if failures else interval_s)
            try:
                if self.changed():
                    # In a thread: building a new stage may load a tokenizer or a model.
                    await asyncio.to_thread(self.load)
                    log.info("policies reloaded: %d tenants", len(self.snapshot.policies))
                failures = 0
            except Exception as exc:  # a reload must never kill the watcher
                failures = min(failures + 1, 10)
                log.error("policy reload failed, keeping the last good policies (retrying): %s", exc)
