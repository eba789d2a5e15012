"""What the limit and budget stages ask of the shared state, and what it answers.

One request is admitted with a single `admit` call carrying every check that applies to it (rate
limits and budget reservations together): either all of them pass and all are applied, or none is
applied. After the upstream call, one `settle` call replaces the estimates with what was used.
Both backends (memory, redis) implement exactly these semantics.

Rate limits are sliding-window logs: every admitted request is an entry (time, cost) and a
request passes when the costs inside the last `window` plus its own stay within the limit. Unlike
a token bucket or fixed windows, no window of that length ever admits more than the limit.
Money is counted in integer nano-dollars so concurrent increments add up exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

NANOS_PER_USD = 1_000_000_000
RateKind = Literal["requests", "tokens"]


class StateUnavailable(Exception):
    """The state store cannot be reached; the stages apply their fail_open / fail_closed policy."""


@dataclass(frozen=True, slots=True)
class RateCheck:
    key: str  # unique per limited thing, e.g. "{acme}:rpm" (the braces keep a tenant on one cluster slot)
    limit: int
    cost: int  # what this request takes: 1 request, or its estimated tokens
    window_s: float = 60.0
    kind: RateKind = "requests"
    scope: str = "tenant"  # who is limited, for messages: "tenant", "key", "model gpt-4o"


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    key: str  # the ledger, e.g. "{acme}:usd:day:2026-11-28"
    limit_nanos: int
    amount_nanos: int  # the reservation: the worst case this request may cost
    expires_at: int  # unix seconds after which the ledger may be dropped (period end plus a margin)
    alert_nanos: int | None = None  # crossing this is reported once per ledger (the soft alert)
    scope: str = "tenant"
    period: str = "day"
    resets_at: int = 0  # unix seconds when the period ends (for messages)


@dataclass(slots=True)
class RateState:
    check: RateCheck
    used: int  # inside the window, including this request when admitted
    reset_s: float  # until the window holds nothing of what is in it now (OpenAI's "reset")
    retry_after_s: float = 0.0  # when denied: until enough has left the window for this request

    @property
    def remaining(self) -> int:
        return max(0, self.check.limit - self.used)


@dataclass(slots=True)
class BudgetState:
    check: BudgetCheck
    spent_nanos: (
        int  # in the ledger (settled spend plus open reservations), including this request if admitted
    )
    alert: bool = False  # this request is the one that crossed the soft-alert threshold


@dataclass(frozen=True, slots=True)
class Ticket:
    """What `settle` needs to replace this request's estimates with the real figures."""

    id: str
    at_us: int  # server time of admission; corrections are filed at this time so they age out with it
    rates: tuple[RateCheck, ...]
    budgets: tuple[BudgetCheck, ...]

    @classmethod
    def empty(cls) -> Ticket:
        """For booking spend of a request nothing was admitted for (no limits, no budget)."""
        return cls("", 0, (), ())


@dataclass(slots=True)
class Verdict:
    allowed: bool
    now_us: int
    rates: list[RateState] = field(default_factory=list)
    budgets: list[BudgetState] = field(default_factory=list)
    denied: RateState | BudgetState | None = None  # the first check that failed
    ticket: Ticket | None = None  # set when allowed


@dataclass(frozen=True, slots=True)
class SpendRecord:
    """Settled spend for the admin report: by UTC day, model and key."""

    tenant: str
    day: str  # YYYY-MM-DD
    model: str
    key_id: str
    expires_at: int


class StateBackend(Protocol):
    name: str

    async def admit(self, rates: list[RateCheck], budgets: list[BudgetCheck]) -> Verdict:
        """Check every limit and reserve every budget in one atomic step (all or nothing)."""
        ...

    async def settle(
        self,
        ticket: Ticket,
        tokens: int | None,
        cost_nanos: int | None,
        record: SpendRecord | None = None,
    ) -> None:
        """Replace the estimates: token checks by `tokens`, budget reservations by `cost_nanos`.

        None keeps the estimate as it is (for tokens) or releases nothing (for cost)."""
        ...

    async def spend_days(self, tenant: str, days: list[str]) -> dict[str, dict[str, int]]:
        """The settled-spend report fields of each day (missing days are empty)."""
        ...

    async def ledger(self, key: str) -> int:
        """A budget ledger's current value in nano-dollars."""
        ...

    async def put_record(self, key: str, value: bytes, ttl_s: int) -> None:
        """Keep an opaque record (a stored response) for `ttl_s` seconds, replacing any."""
        ...

    async def get_record(self, key: str) -> bytes | None:
        """A record kept by `put_record`, None when absent or expired."""
        ...

    async def delete_record(self, key: str) -> bool:
        """Forget a record; whether it existed."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


def entry_cost(member: str) -> int:
    """The cost stored at the end of a window entry's name ("<id>:<cost>")."""
    return int(member.rpartition(":")[2])


def usd(nanos: int) -> float:
    return nanos / NANOS_PER_USD


def nanos(usd_amount: float) -> int:
    return round(usd_amount * NANOS_PER_USD)
