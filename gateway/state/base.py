"""What the limit and budget stages ask of the shared state, and what it answers.

One request is admitted with a single `admit` call carrying every check that applies to it (rate
limits and budget reservations together): either all of them pass and all are applied, or none is
applied. After the upstream call, one `settle` call replaces the estimates with what was used.
Both backends (memory, redis) implement exactly these semantics.

The ledger heals itself. A budget reservation holds a lease (`lease_s`, 30 s by default) that the
process serving the request renews while it runs (`renew`); a reservation whose process died is
released by the first admit or ledger read after its lease ran out. A settle is idempotent by its
ticket id: sending it again (a retry after a timeout that Redis did apply, a journal replayed at
start-up) changes nothing. The id is remembered for `SETTLED_KEEP_S` when the settle ran promptly
(a lost reply is then retried within seconds), and for `LATE_SETTLED_KEEP_S` when it ran more than
`LATE_AFTER_S` after it was sent (Redis was frozen or stalled: the sender has surely given up and
journalled it, and its retry may come from another process, later). Remembering every id for a day
would cost Redis ~80 bytes per request. A settle for a reservation that no longer exists
(its lease ran out, or nothing was reserved because the store was down at admission) books the
whole cost.

Rate limits are sliding-window logs: every admitted request is an entry (time, cost) and a
request passes when the costs inside the last `window` plus its own stay within the limit. Unlike
a token bucket or fixed windows, no window of that length ever admits more than the limit.
Money is counted in integer nano-dollars so concurrent increments add up exactly.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Literal, Protocol

NANOS_PER_USD = 1_000_000_000
DEFAULT_LEASE_S = 30.0
SETTLED_KEEP_S = 600  # how long the id of a settle that ran promptly is remembered
LATE_SETTLED_KEEP_S = 86_400  # ...and of one that ran late, whose retry may come much later
LATE_AFTER_S = 1.0  # a settle that ran this long after it was sent ran late
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
    def unreserved(cls, budgets: tuple[BudgetCheck, ...] = ()) -> Ticket:
        """For booking a request nothing was reserved for: no limits apply, or the store was down at
        admission (fail_open). Its settle books the whole cost to `budgets`."""
        return cls(new_ticket_id(), 0, (), budgets)


def new_ticket_id() -> str:
    return uuid.uuid4().hex[:20]


@dataclass(frozen=True, slots=True)
class Settlement:
    """One request's booking, applied at most once by `settle` however often it is sent; or a batch
    of report lines (many requests that had nothing else to settle), under the batch's own id."""

    tenant: str  # whose settle ids remember it: the hash tag of the ticket's keys ("{acme}:..." -> "acme")
    ticket: Ticket
    tokens: int | None = None  # what was used, replacing the token estimates; None keeps them
    cost_nanos: int = 0  # what it cost, replacing the budget reservations (0: nothing was generated)
    records: tuple[SpendRecord, ...] = ()  # the settled-spend report lines (none: no known price)

    def line_cost(self, record: SpendRecord) -> int:
        """What a report line books: its own cost (a batch's line), else the settlement's."""
        return self.cost_nanos if record.cost_nanos is None else record.cost_nanos

    def corrects_tokens(self) -> bool:
        return self.tokens is not None and any(
            c.kind == "tokens" and c.cost != self.tokens for c in self.ticket.rates
        )

    def reports_only(self) -> bool:
        """Nothing to settle but report lines: no budget, no token estimate to replace. Such
        settlements may be batched (see gateway.state.journal)."""
        return not self.ticket.budgets and not self.corrects_tokens()

    def is_noop(self) -> bool:
        return self.reports_only() and not self.records


BATCH_PREFIX = "batch-"  # the ticket id of a batch of report lines, never merged again


def merge_reports(settlements: list[Settlement]) -> list[Settlement]:
    """Report-only settlements as one batch per tenant, their lines added up per day, model and key."""
    lines: dict[str, dict[tuple[str, str, str], list[int]]] = {}
    for settlement in settlements:
        per_tenant = lines.setdefault(settlement.tenant, {})
        for record in settlement.records:
            line = per_tenant.setdefault((record.day, record.model, record.key_id), [0, 0, 0])
            line[0] += settlement.line_cost(record)
            line[1] += record.requests
            line[2] = max(line[2], record.expires_at)
    batches = []
    for tenant, per_tenant in lines.items():
        records = tuple(
            SpendRecord(tenant, day, model, key_id, expires_at, cost, requests)
            for (day, model, key_id), (cost, requests, expires_at) in per_tenant.items()
        )
        ticket = Ticket(BATCH_PREFIX + new_ticket_id(), 0, (), ())
        batches.append(Settlement(tenant, ticket, records=records))
    return batches


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
    """A line of settled spend for the admin report: by UTC day, model and key."""

    tenant: str
    day: str  # YYYY-MM-DD
    model: str
    key_id: str
    expires_at: int
    cost_nanos: int | None = None  # None: the settlement's cost
    requests: int = 1


class StateBackend(Protocol):
    name: str
    batches_reports: bool  # report-only settlements are worth batching (a network round trip each)

    async def admit(self, rates: list[RateCheck], budgets: list[BudgetCheck]) -> Verdict:
        """Check every limit and reserve every budget in one atomic step (all or nothing)."""
        ...

    async def settle(self, settlement: Settlement) -> bool:
        """Replace the estimates: token checks by `tokens`, budget reservations by `cost_nanos`, and
        book the report line. False when this settlement was applied before (nothing changed)."""
        ...

    async def renew(self, tickets: list[Ticket]) -> None:
        """Extend the lease of these tickets' open reservations (the requests are still running)."""
        ...

    async def spend_days(self, tenant: str, days: list[str]) -> dict[str, dict[str, int]]:
        """The settled-spend report fields of each day (missing days are empty)."""
        ...

    async def ledger(self, key: str) -> int:
        """A budget ledger's current value in nano-dollars (settled spend plus open reservations),
        after releasing the reservations whose lease has run out."""
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
