"""Read-only counts for dashboards, the CLI and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from outbox.storage import key_order
from outbox.storage import statements as sql
from outbox.storage.execution import AsyncDB, fetch_all
from outbox.storage.schema import Status

__all__ = ["OutboxStats", "TableGauges", "stats", "table_gauges", "type_prefix_of"]


@dataclass(frozen=True)
class OutboxStats:
    """A snapshot of the table.

    ``by_status`` has every status (zero included); ``by_prefix`` maps a type prefix (the
    type up to and including its first dot, e.g. ``document.``) to its counts by status;
    ``oldest_claimable_age`` is how many seconds the longest-waiting claimable row has been
    claimable (``None`` when nothing is claimable).
    """

    by_status: dict[Status, int]
    by_prefix: dict[str, dict[Status, int]] = field(default_factory=dict)
    oldest_claimable_age: float | None = None
    keys_in_flight: int = 0
    """Keys with a batch in flight (ordered workers)."""
    keys_held: int = 0
    """Keys held behind a dead head (``ORDERING_DEAD=hold``) until it is retried or purged."""

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


def type_prefix_of(message_type: str) -> str:
    """``'document.preprocess.v1'`` -> ``'document.'``; a type without a dot is its own."""
    head, dot, _ = message_type.partition(".")
    return head + dot


async def stats(db: AsyncDB, *, now: datetime | None = None) -> OutboxStats:
    """Counts per status and per type prefix, and the oldest claimable row's age.

    Three statements. The counts read every row (published ones included): fine for an
    operator's command, too heavy to run every second on a very large table.
    """
    by_status = dict.fromkeys(Status, 0)
    by_prefix: dict[str, dict[Status, int]] = {}
    for name, status, count in await fetch_all(db, sql.counts_by_prefix_and_status):
        state = Status(status)
        by_status[state] += count
        by_prefix.setdefault(name, dict.fromkeys(Status, 0))[state] += count
    age_rows = await fetch_all(db, sql.OLDEST_CLAIMABLE_AGE, {"now": now})
    age = age_rows[0][0] if age_rows else None
    in_flight, held = (await fetch_all(db, key_order.KEY_COUNTS))[0]
    return OutboxStats(
        by_status=by_status,
        by_prefix=dict(sorted(by_prefix.items())),
        oldest_claimable_age=None if age is None else max(0.0, float(age)),
        keys_in_flight=in_flight,
        keys_held=held,
    )


@dataclass(frozen=True)
class TableGauges:
    """Counts cheap enough to take every few seconds (see :func:`table_gauges`)."""

    pending: int
    in_progress: int
    dead: int
    oldest_claimable_age: float | None


async def table_gauges(db: AsyncDB) -> TableGauges:
    """Pending, in-progress and dead counts and the oldest claimable age, in one statement.

    Each count reads only its status's partial index, never the published rows.
    """
    pending, in_progress, dead, age = (await fetch_all(db, sql.TABLE_GAUGES, {"now": None}))[0]
    return TableGauges(
        pending=pending,
        in_progress=in_progress,
        dead=dead,
        oldest_claimable_age=None if age is None else max(0.0, float(age)),
    )
