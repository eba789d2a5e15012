"""Budget periods (UTC days and months) and the settled-spend report behind
`GET /admin/tenants/{tenant}/spend`."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

from gateway.state.base import NANOS_PER_USD, StateBackend

REPORT_RETENTION_S = 400 * 86400  # a day's report is kept a little over a year
LEDGER_GRACE_S = 2 * 86400  # a period's ledger outlives the period (late settlements still land)


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@lru_cache(maxsize=4)
def _day_of(day_number: int) -> str:
    return _dt(day_number * 86400).strftime("%Y-%m-%d")


def utc_day(ts: float) -> str:
    # Every request books to a day: formatting the date once per day, not per request.
    return _day_of(int(ts // 86400))


def utc_month(ts: float) -> str:
    return _day_of(int(ts // 86400))[:7]


def day_end(ts: float) -> int:
    # Unix time has no leap seconds: every UTC day is 86,400 of them.
    return (int(ts // 86400) + 1) * 86400


def month_end(ts: float) -> int:
    return _month_end_of(int(ts // 86400))


@lru_cache(maxsize=4)
def _month_end_of(day_number: int) -> int:
    d = _dt(day_number * 86400)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp())


def format_reset(seconds: float) -> str:
    """A duration for a message: '3h12m', '14m5s', '9s'."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 24:
        return f"{hours // 24}d{hours % 24}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _usd(nanos: int) -> float:
    return round(nanos / NANOS_PER_USD, 9)


async def spend_report(state: StateBackend, tenant: str, days: int = 30, today: date | None = None) -> dict:
    """Settled spend of the last `days` UTC days (today first), by model and by key.

    Only settled requests are counted: a reservation in flight is not spend yet."""
    days = max(1, min(days, 400))
    today = today or datetime.now(UTC).date()
    dates = [(today - timedelta(days=i)).isoformat() for i in range(days)]
    raw = await state.spend_days(tenant, dates)
    out_days: list[dict[str, Any]] = []
    model_totals: dict[str, dict[str, int]] = {}
    total_nanos = 0
    total_requests = 0
    for day in dates:
        models: dict[str, dict[str, int]] = {}
        keys: dict[str, float] = {}
        for name, value in raw.get(day, {}).items():
            kind, _, label = name.partition(":")
            if kind in ("m", "r"):
                figures = models.setdefault(label, {"cost_nanos": 0, "requests": 0})
                figures["cost_nanos" if kind == "m" else "requests"] += value
            elif kind == "k":
                keys[label] = _usd(value)
        for model, figures in models.items():
            totals = model_totals.setdefault(model, {"cost_nanos": 0, "requests": 0})
            totals["cost_nanos"] += figures["cost_nanos"]
            totals["requests"] += figures["requests"]
        day_nanos = sum(f["cost_nanos"] for f in models.values())
        day_requests = sum(f["requests"] for f in models.values())
        total_nanos += day_nanos
        total_requests += day_requests
        out_days.append(
            {
                "date": day,
                "cost_usd": _usd(day_nanos),
                "requests": day_requests,
                "models": {
                    m: {"cost_usd": _usd(f["cost_nanos"]), "requests": f["requests"]}
                    for m, f in sorted(models.items())
                },
                "keys": dict(sorted(keys.items())),
            }
        )
    return {
        "tenant": tenant,
        "currency": "USD",
        "from": dates[-1],
        "to": dates[0],
        "cost_usd": _usd(total_nanos),
        "requests": total_requests,
        "models": {
            m: {"cost_usd": _usd(t["cost_nanos"]), "requests": t["requests"]}
            for m, t in sorted(model_totals.items())
        },
        "days": out_days,
    }
