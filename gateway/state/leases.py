"""Lease renewal for this process's open budget reservations.

A reservation is held under a lease (gateway.state.base); the process serving the request keeps
it alive by renewing every lease_s / 3, so a request may run as long as it needs while a replica
that dies stops renewing and its reservations lapse within one lease. One renewal call per tick
covers every open reservation of the process (one script per tenant on Redis).
"""

from __future__ import annotations

import asyncio
import logging

from gateway.state.base import StateBackend, StateUnavailable, Ticket

log = logging.getLogger("rag_gateway.state")


class LeaseKeeper:
    def __init__(self, state: StateBackend, lease_s: float) -> None:
        self.state = state
        self.lease_s = lease_s
        self.held: dict[str, Ticket] = {}  # ticket id -> ticket, while its request runs

    def hold(self, ticket: Ticket) -> None:
        if ticket.budgets:
            self.held[ticket.id] = ticket

    def release(self, ticket: Ticket) -> None:
        self.held.pop(ticket.id, None)

    async def run(self) -> None:
        """Renew every held reservation each lease_s / 3, until cancelled."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            if not self.held:
                continue
            try:
                await self.state.renew(list(self.held.values()))
            except StateUnavailable as exc:
                # A reservation whose lease lapses meanwhile is released; its settle then books the
                # whole cost, so the ledger stays right either way.
                log.debug("leases: renewal failed: %s", exc)
            except Exception:  # a bug must not stop the renewals of every later request
                log.exception("leases: renewal failed")
