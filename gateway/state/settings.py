"""Policy sections for the limit stages: `rate_limit:` and `budget:` in a tenant's policy file.

Kept apart from the stages so gateway.policy can import them without importing the middleware.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

OnStateError = Literal["fail_open", "fail_closed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRateLimit(_Strict):
    rpm: int | None = Field(
        default=None, ge=1, description="Requests per minute to this model (whole tenant)"
    )
    tpm: int | None = Field(default=None, ge=1, description="Tokens per minute to this model (whole tenant)")


class RateLimitPolicy(_Strict):
    """Requests and tokens per minute, over a sliding minute (no bursts at window edges)."""

    enabled: bool = False
    rpm: int | None = Field(default=None, ge=1, description="Requests per minute for the whole tenant")
    tpm: int | None = Field(
        default=None, ge=1, description="Tokens per minute for the whole tenant (prompt + completion)"
    )
    per_key_rpm: int | None = Field(default=None, ge=1, description="Requests per minute for each API key")
    per_key_tpm: int | None = Field(default=None, ge=1, description="Tokens per minute for each API key")
    per_model: dict[str, ModelRateLimit] = Field(
        default_factory=dict, description="Limits per public model name, shared by the tenant's keys"
    )
    on_state_error: OnStateError = Field(
        default="fail_open",
        description="When the state store is unreachable: serve without limits, or answer 503",
    )

    def limits_tokens(self) -> bool:
        return bool(self.tpm or self.per_key_tpm or any(m.tpm for m in self.per_model.values()))


class BudgetPolicy(_Strict):
    """Spend caps in USD per UTC day and month, reserved before the call and settled after it."""

    enabled: bool = False
    daily_usd: float | None = Field(default=None, ge=0, description="Tenant spend per UTC day")
    monthly_usd: float | None = Field(default=None, ge=0, description="Tenant spend per UTC month")
    per_key_daily_usd: float | None = Field(default=None, ge=0, description="Spend per API key per UTC day")
    per_key_monthly_usd: float | None = Field(
        default=None, ge=0, description="Spend per API key per UTC month"
    )
    on_exceed: Literal["reject", "downgrade"] = Field(
        default="reject", description="reject: 429 insufficient_quota; downgrade: switch to downgrade_to"
    )
    downgrade_to: str | None = Field(default=None, description="The cheaper public model used on downgrade")
    soft_alert_ratio: float | None = Field(
        default=0.8, gt=0, le=1, description="Log a warning once per period when spend crosses this share"
    )
    default_max_output_tokens: int = Field(
        default=4096,
        ge=1,
        description="Worst-case completion size when neither the request nor the price map gives one",
    )
    on_state_error: OnStateError = Field(
        default="fail_open",
        description="When the state store is unreachable: serve without budgets, or answer 503",
    )

    @model_validator(mode="after")
    def _downgrade_target(self) -> BudgetPolicy:
        if self.on_exceed == "downgrade" and not self.downgrade_to:
            raise ValueError("on_exceed: downgrade needs downgrade_to (the cheaper model to use)")
        return self
