"""gateway.yaml: models and their deployments, where policies live, and the shared backends.

The schema is defined once here (pydantic); `rag-gateway policy schema` exports the policy half
for editors. Secrets are never inline: a deployment names the environment variable holding its key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.pricing import PriceOverride

# Providers forwarded on the fast path: they speak the OpenAI wire format over HTTP.
OPENAI_COMPATIBLE_PROVIDERS = frozenset({"openai", "openai_compatible", "azure", "vllm", "ollama"})
ANTHROPIC_PROVIDER = "anthropic"  # spoken natively (the Messages API), no litellm
Api = Literal["chat", "responses", "completions", "messages"]
# What each provider speaks unless a deployment says otherwise (`apis:`).
DEFAULT_APIS: dict[str, tuple[Api, ...]] = {
    "openai": ("chat", "responses", "completions"),
    ANTHROPIC_PROVIDER: ("messages",),
}
LOCAL_PROVIDER = "local"
DEMO_KEY_ENV = "RAG_GATEWAY_DEMO_KEY"
DEFAULT_DEMO_KEY = "sk-demo-rag-gateway"
LOCAL_CHAT_MODEL = "local-extractive"
LOCAL_EMBEDDING_MODEL = "local-minilm"
# The sample corpus shipped in the repository; the embedded defaults serve it to the demo tenant.
SAMPLE_CORPUS = Path(__file__).resolve().parents[1] / "samples" / "corpus"

# Request fields that would let a client pick the upstream, its credentials or its headers.
FORBIDDEN_REQUEST_FIELDS = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "custom_llm_provider",
        "extra_headers",
        "headers",
        "organization",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_region_name",
        "vertex_credentials",
        "azure_ad_token",
        "mock_response",
        "litellm_params",
        "metadata_api_base",
    }
)


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names the file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeploymentConfig(_Strict):
    """One concrete upstream serving a public model name."""

    provider: str = Field(
        description="openai, azure, vllm, ollama, openai_compatible, local, or any litellm provider"
    )
    model: str = Field(description="The model name the upstream knows (Azure: the deployment name)")
    api_base: str | None = None
    api_key_env: str | None = Field(default=None, description="Environment variable holding the upstream key")
    api_version: str | None = Field(default=None, description="Azure API version")
    weight: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    provider_params: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Extra litellm parameters for non-OpenAI providers (e.g. aws_region_name)",
    )
    apis: list[Api] | None = Field(
        default=None,
        description="The APIs this deployment serves natively: requests in one of them are relayed "
        "as sent; others are translated to chat (default: openai chat, responses, completions; "
        "anthropic messages; every other provider chat)",
    )

    @property
    def fast_path(self) -> bool:
        return self.provider in OPENAI_COMPATIBLE_PROVIDERS or self.provider == ANTHROPIC_PROVIDER

    @property
    def speaks(self) -> tuple[Api, ...]:
        if self.apis:
            return tuple(self.apis)
        return DEFAULT_APIS.get(self.provider, ("chat",))

    @model_validator(mode="after")
    def _check_base(self) -> DeploymentConfig:
        if self.provider in {"azure", "vllm", "ollama", "openai_compatible"} and not self.api_base:
            raise ValueError(f"provider {self.provider!r} needs api_base")
        if self.provider == "azure" and not self.api_version:
            raise ValueError("provider 'azure' needs api_version")
        return self

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def label(self) -> str:
        return f"{self.provider}/{self.model}@{self.api_base or 'default'}"


class ModelConfig(_Strict):
    """A public model name and the deployments behind it."""

    name: str
    mode: Literal["chat", "embedding"] = "chat"
    deployments: list[DeploymentConfig] = Field(min_length=1)
    fallbacks: list[str] = Field(
        default_factory=list, description="Public model names tried after every deployment failed"
    )


class RouterConfig(_Strict):
    backoff_base_s: float = Field(default=0.25, ge=0)
    backoff_max_s: float = Field(default=8.0, ge=0)
    max_retry_after_s: float = Field(
        default=30.0, ge=0, description="A longer Retry-After moves on to the next deployment"
    )
    circuit_breaker_failures: int = Field(default=5, ge=1)
    circuit_breaker_cooldown_s: float = Field(default=30.0, ge=0)
    max_connections: int = Field(default=1000, ge=1)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    drain_timeout_s: float = Field(default=30.0, ge=0)
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="A client that has not sent its request headers by then is dropped"
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="A request body not fully received by then gets 408"
    )
    admin_key_env: str | None = Field(
        default=None, description="Environment variable holding the admin API key"
    )


class VectorStoreConfig(_Strict):
    path: str = ".data/chroma"
    url: str | None = Field(default=None, description="Chroma server URL for multi-replica deployments")
    connect_wait_s: float = Field(
        default=30,
        ge=0,
        le=600,
        description="How long start-up (and the CLI) waits for the Chroma server at `url` to answer",
    )


class LedgerConfig(_Strict):
    """How budget reservations and settlements survive a dead replica or an unreachable state store."""

    lease_s: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="A reservation whose replica stops renewing it is released this long after",
    )
    journal_dir: str = Field(
        default=".data/journal",
        description="Settlements the state store did not take wait here (one file per process) and are "
        "replayed, also by the next process to start, until it does",
    )


class FilesConfig(_Strict):
    """Files uploaded through OpenAI's Files API (`POST /v1/files`), per tenant."""

    dir: str = Field(
        default=".data/files", description="Where uploads are kept; a folder every replica shares"
    )
    max_bytes: int = Field(default=50_000_000, ge=1, description="The largest file accepted (413 above)")
    ingest_concurrency: int = Field(
        default=1, ge=1, le=16, description="Files ingested at once per process (each uses the embedder)"
    )
    ingest_queue_max: int = Field(
        default=1000, ge=1, description="Files waiting or being ingested per process; more is a 503"
    )
    ingest_queue_per_tenant: int = Field(
        default=200, ge=1, description="Of those, the most one tenant may have; more is a 429"
    )


class RetrievalConfig(_Strict):
    enabled: bool | None = Field(
        default=None,
        description="true: load the embedder and vector store at start-up; false: never; "
        "unset: load them when a tenant's policy first needs them",
    )
    embedding_model: str = Field(
        default="minilm",
        description="'minilm' (bundled, offline), or the public name of a mode: embedding model in `models`",
    )
    chunk_max_tokens: int = Field(default=240, ge=32, le=2048)
    chunk_overlap_tokens: int = Field(default=40, ge=0, le=512)
    max_file_bytes: int = Field(default=50_000_000, ge=1)
    search_threads: int = Field(default=2, ge=1, le=64)
    seed_corpus: dict[str, str] = Field(
        default_factory=dict, description="tenant -> folder ingested (incrementally) at start-up"
    )


class RequestLogConfig(_Strict):
    enabled: bool = True
    path: str | None = Field(default=None, description="JSON lines file (rotated); stdout when unset")
    max_bytes: int = Field(default=100 * 1024 * 1024, ge=1024, description="Rotate the file at this size")
    backups: int = Field(default=5, ge=0, description="Rotated files kept")


class TelemetryConfig(_Strict):
    """Traces over OTLP, the request log and Prometheus metrics. Standard OTEL_* variables apply too."""

    service_name: str | None = Field(default=None, description="Default: $OTEL_SERVICE_NAME or rag-gateway")
    otlp_endpoint: str | None = Field(
        default=None,
        description="Collector URL; default $OTEL_EXPORTER_OTLP_ENDPOINT; tracing is off without one",
    )
    otlp_protocol: Literal["grpc", "http/protobuf"] | None = Field(
        default=None, description="Default: $OTEL_EXPORTER_OTLP_PROTOCOL or grpc"
    )
    traces: bool = True
    metrics: bool = True
    request_log: RequestLogConfig = Field(default_factory=RequestLogConfig)


class GatewayConfig(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    models: list[ModelConfig] = Field(default_factory=list)
    builtin_models: bool = Field(
        default=True,
        description="Keep the offline built-ins (local-extractive, local-minilm) beside `models:`; "
        "false serves only the models listed",
    )
    policies_dir: str | None = None
    router: RouterConfig = Field(default_factory=RouterConfig)
    state: str = Field(
        default="memory",
        description="'memory', redis://host:port/db, redis+cluster://h1:p1,h2:p2, "
        "redis+sentinel://h1:26379/service/db (valkey:// forms too)",
    )
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    files: FilesConfig = Field(default_factory=FilesConfig)
    vector_store: VectorStoreConfig = Field(default_factory=VectorStoreConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    pricing: dict[str, PriceOverride] = Field(
        default_factory=dict, description="Prices per public model name, for self-hosted or unlisted models"
    )
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    # Where this config was read from; relative paths inside it resolve against its folder.
    base_dir: str = Field(default=".", exclude=True)

    @field_validator("state")
    @classmethod
    def _state_url(cls, url: str) -> str:
        if url != "memory":
            from gateway.state.redis_connect import parse

            parse(url)  # a ValueError naming the URL forms there are
        return url

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        seen: set[str] = set()
        for model in models:
            if model.name in seen:
                raise ValueError(f"model name {model.name!r} appears twice")
            seen.add(model.name)
        return models

    @model_validator(mode="after")
    def _fallbacks_exist(self) -> GatewayConfig:
        names = {m.name for m in self.models}
        for model in self.models:
            for fallback in model.fallbacks:
                if fallback not in names:
                    raise ValueError(f"model {model.name!r}: fallback {fallback!r} is not a configured model")
        return self

    def model(self, name: str) -> ModelConfig | None:
        for model in self.models:
            if model.name == name:
                return model
        return None

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else Path(self.base_dir) / p

    def missing_secrets(self) -> list[str]:
        """Deployments whose key variable is named but unset, as readable lines."""
        missing = []
        for model in self.models:
            for dep in model.deployments:
                if dep.api_key_env and not os.environ.get(dep.api_key_env):
                    missing.append(
                        f"model {model.name!r} deployment {dep.label()}: ${dep.api_key_env} is not set"
                    )
        return missing


def default_models() -> list[ModelConfig]:
    """The built-in offline models: an extractive answerer and the local embedder."""
    return [
        ModelConfig(
            name=LOCAL_CHAT_MODEL, deployments=[DeploymentConfig(provider=LOCAL_PROVIDER, model="extractive")]
        ),
        ModelConfig(
            name=LOCAL_EMBEDDING_MODEL,
            mode="embedding",
            deployments=[DeploymentConfig(provider=LOCAL_PROVIDER, model="all-MiniLM-L6-v2")],
        ),
    ]


def format_validation_error(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def load_config(path: str | Path | None) -> GatewayConfig:
    """Read gateway.yaml, or return the embedded defaults when no file is given."""
    if path is None:
        config = GatewayConfig(models=default_models())
        # `make run` from a checkout: the shipped policies are the tenants, so a tenant added
        # there (keys create + its policy file) is served and hot-reloaded like any other.
        if (Path.cwd() / "policies").is_dir():
            config.policies_dir = str(Path.cwd() / "policies")
        # From a source checkout the corpus sits beside the package; in the container, in the workdir.
        for corpus in (SAMPLE_CORPUS, Path.cwd() / "samples" / "corpus"):
            if corpus.is_dir():
                config.retrieval.seed_corpus = {"demo": str(corpus)}
                break
        return config
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw["base_dir"] = str(path.resolve().parent)
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc)) from exc
    add_builtin_models(config)
    return config


def add_builtin_models(config: GatewayConfig) -> None:
    """The offline built-ins join the configured models unless switched off (or renamed over)."""
    if not config.builtin_models and config.models:
        return
    names = {m.name for m in config.models}
    config.models = config.models + [m for m in default_models() if m.name not in names]
