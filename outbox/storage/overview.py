"""What the dashboard's overview reads: counts per type prefix, the published rate, leases.

Read-only, and cheap at any table size: every statement reads one status's partial index
(``ix_outbox_claimable_type`` for pending rows, ``ix_outbox_lease`` for in-progress rows,
``ix_outbox_dead_at`` for dead rows) and, of the published history, only the rows
published inside the sampled window (``ix_outbox_published_at``), never the rest. Its cost
grows with the pending, in-progress and dead rows and with the publish rate times the
window, not with the size of the published history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from outbox.primitives.errors import InvalidArgumentError
from outbox.storage import statements as sql
from outbox.storage.admin import database_now
from outbox.storage.execution import AsyncDB, fetch_all
from outbox.storage.schema import Status

__all__ = ["MAX_WINDOW", "LeaseHolder", "Overview", "PrefixOverview", "overview"]

MAX_WINDOW = timedelta(minutes=5)
"""The longest published window one overview reads (older ``since`` values are clipped)."""


@dataclass(frozen=True)
class PrefixOverview:
    """One type prefix (``message.``, ``document.``): rows per status now, the age in
    seconds of its longest-waiting claimable row (``None``: none is due), and how many of
    its rows were published inside the overview's window."""

    prefix: str
    pending: int = 0
    in_progress: int = 0
    dead: int = 0
    oldest_due_age: float | None = None
    published: int = 0


@dataclass(frozen=True)
class LeaseHolder:
    """A worker holding leases now: how many rows, and its earliest and latest lease end
    (an earliest end in the past is an expired lease the reaper has not taken back yet)."""

    worker_id: str | None
    rows: int
    earliest_lease_end: datetime
    latest_lease_end: datetime


@dataclass(frozen=True)
class Overview:
    """One reading: ``taken_at`` (database clock), the published window ``(since,
    taken_at]``, per-prefix figures (sorted by prefix) and the lease holders."""

    taken_at: datetime
    since: datetime
    prefixes: list[PrefixOverview] = field(default_factory=list)
    lease_holders: list[LeaseHolder] = field(default_factory=list)

    @property
    def published(self) -> int:
        return sum(p.published for p in self.prefixes)

    @property
    def published_per_second(self) -> float | None:
        seconds = (self.taken_at - self.since).total_seconds()
        return self.published / seconds if seconds > 0 else None

    def total(self, status: Status) -> int:
        """All prefixes' rows in ``status`` (pending, in progress or dead)."""
        name = {
            Status.PENDING: "pending",
            Status.IN_PROGRESS: "in_progress",
            Status.DEAD: "dead",
        }[status]
        return sum(getattr(p, name) for p in self.prefixes)


async def overview(
    db: AsyncDB,
    *,
    since: datetime | None = None,
    window: timedelta = timedelta(seconds=60),
    now: datetime | None = None,
) -> Overview:
    """Read the overview; rows published after ``since`` (default ``now - window``; never
    earlier than ``now -`` :data:`MAX_WINDOW`) count as published in the window.

    Three statements (the clock, the per-prefix counts, the lease holders), each on its own
    snapshot when ``db`` is an engine or pool, so totals can be a few rows apart while
    workers run.
    """
    if window <= timedelta(0) or window > MAX_WINDOW:
        raise InvalidArgumentError(f"window must be above zero and at most {MAX_WINDOW}")
    taken_at = await database_now(db, now=now)
    start = taken_at - window if since is None else max(since, taken_at - MAX_WINDOW)
    start = min(start, taken_at)
    params = {"now": taken_at, "since": start, "until": taken_at}
    figures: dict[str, dict[str, object]] = {}
    for prefix, status, count, due in await fetch_all(db, sql.OVERVIEW_BY_PREFIX, params):
        entry = figures.setdefault(prefix, {"prefix": prefix})
        entry[status] = count  # the statuses are the field names
        if due is not None:
            entry["oldest_due_age"] = max(0.0, (taken_at - due).total_seconds())
    holders = [
        LeaseHolder(worker, rows, earliest, latest)
        for worker, rows, earliest, latest in await fetch_all(db, sql.LEASE_HOLDERS)
    ]
    prefixes = [PrefixOverview(**figures[name]) for name in sorted(figures)]  # type: ignore[arg-type]
    return Overview(taken_at, start, prefixes, holders)
