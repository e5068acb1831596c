"""Where a worker's claims start walking the claim indexes.

Every claim and acknowledgement leaves the row's old version behind, and with it an entry
in the claim indexes (``ix_outbox_claimable``, ``ix_outbox_claimable_type``) at the row's
old place: the oldest end, where every claim starts. Vacuum removes them, but not while a
snapshot older than them is held (``pg_dump``, a long report, an idle transaction) or while
autovacuum lags: a claim that walks from the oldest entry then reads every message claimed
since, and slows down as the backlog of dead entries grows.

A :class:`ClaimFrontier` remembers where the last claim found the oldest claimable row
(``since``), and the next claim's walk starts there: a bound on the index's first column, so
PostgreSQL descends to it and never reads the entries before it. Rows that become claimable
later are not older than the moment they become so (retries, releases, reaped leases and
operator retries are due at ``now`` or later), except a row whose transaction commits later
than its ``next_attempt_at``: a producer's transaction open longer than ``lookback_seconds``,
or a message enqueued with an ``available_at`` in the past. The frontier stays
``lookback_seconds`` behind the claim's clock for those, and every ``full_walk_seconds`` a
claim walks from the oldest entry, so that anything older is claimed within that time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from outbox.primitives.errors import InvalidArgumentError

__all__ = ["DEFAULT_FULL_WALK_SECONDS", "DEFAULT_LOOKBACK_SECONDS", "ClaimFrontier"]

DEFAULT_LOOKBACK_SECONDS = 5.0
DEFAULT_FULL_WALK_SECONDS = 10.0


@dataclass
class ClaimFrontier:
    """One worker's claim walk position; pass the same one to each of its claims.

    Not shared between workers: each keeps its own. ``clock`` is the monotonic clock that
    times the walks from the oldest entry (a parameter for tests).
    """

    lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS
    full_walk_seconds: float = DEFAULT_FULL_WALK_SECONDS
    clock: Callable[[], float] = time.monotonic
    since: datetime | None = None
    """Where the next walk starts (``None``: from the oldest entry)."""
    last_full_walk: float = field(default=-math.inf)

    def __post_init__(self) -> None:
        for name, value, low in (
            ("lookback_seconds", self.lookback_seconds, 0.0),
            ("full_walk_seconds", self.full_walk_seconds, 0.001),
        ):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
                raise InvalidArgumentError(f"{name} must be a finite number >= {low:g}: {value!r}")

    def next_start(self) -> datetime | None:
        """``:since`` for the next claim: ``None`` (from the oldest entry) for the first
        claim and once every ``full_walk_seconds``, else where the last claim left off."""
        if self.clock() - self.last_full_walk >= self.full_walk_seconds:
            return None
        return self.since

    def moved(self, started: datetime | None, frontier: datetime | None) -> None:
        """Record a claim that started at ``started`` and reported ``frontier``."""
        if started is None:
            self.last_full_walk = self.clock()
        if frontier is not None:
            self.since = frontier
