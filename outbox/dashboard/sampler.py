"""The overview's sampling, shared by every open page, and its published-rate chart.

Pages poll every few seconds; a new reading is taken at most once per
``min_interval`` seconds whatever the number of viewers, and each reading counts only the
rows published since the previous one (see :func:`outbox.storage.overview.overview`), so a
refresh never reads the published history. The rates of the readings of the last
:data:`HISTORY` make the chart; the first reading of a process looks one window back.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio

from outbox.storage.execution import AsyncDB
from outbox.storage.overview import Overview, overview
from outbox.storage.schema import Status

__all__ = ["HISTORY", "Point", "Sampler", "chart_points", "overview_json"]

HISTORY = timedelta(minutes=5)
CHART_WIDTH = 600
CHART_HEIGHT = 120


@dataclass(frozen=True)
class Point:
    """A reading's published rate: ``rate`` rows per second over ``(since, at]``."""

    at: datetime
    rate: float


class Sampler:
    """Takes overview readings for the dashboard (one at a time, at most one per
    ``min_interval`` seconds) and keeps the last :data:`HISTORY` of published rates."""

    def __init__(self, db: AsyncDB, *, min_interval: float = 1.0) -> None:
        self._db = db
        self._min_interval = min_interval
        self._lock = anyio.Lock()
        self._latest: Overview | None = None
        self._taken_monotonic = 0.0
        self.points: deque[Point] = deque()

    async def read(self) -> Overview:
        async with self._lock:
            fresh = time.monotonic() - self._taken_monotonic < self._min_interval
            if self._latest is not None and fresh:
                return self._latest
            since = None if self._latest is None else self._latest.taken_at
            reading = await overview(self._db, since=since)
            self._latest, self._taken_monotonic = reading, time.monotonic()
            rate = reading.published_per_second
            if rate is not None:
                self.points.append(Point(reading.taken_at, rate))
            while self.points and reading.taken_at - self.points[0].at > HISTORY:
                self.points.popleft()
            return reading


def chart_points(points: list[Point], now: datetime) -> tuple[str, float]:
    """An SVG ``polyline`` ``points`` value for the rates over the last :data:`HISTORY`
    (x: time, right edge ``now``; y: rate, top = the peak) and that peak."""
    peak = max((p.rate for p in points), default=0.0)
    scale = peak if peak > 0 else 1.0
    span = HISTORY.total_seconds()
    coordinates = []
    for point in points:
        age = (now - point.at).total_seconds()
        x = CHART_WIDTH * max(0.0, 1 - age / span)
        y = CHART_HEIGHT - (CHART_HEIGHT - 4) * point.rate / scale
        coordinates.append(f"{x:.1f},{y:.1f}")
    return " ".join(coordinates), peak


def overview_json(reading: Overview, points: list[Point]) -> dict[str, Any]:
    """What the overview page's script renders (and the page's first render uses)."""
    chart, peak = chart_points(points, reading.taken_at)
    return {
        "taken_at": reading.taken_at.isoformat(),
        "totals": {
            "pending": reading.total(Status.PENDING),
            "in_progress": reading.total(Status.IN_PROGRESS),
            "dead": reading.total(Status.DEAD),
            "published_per_second": round(reading.published_per_second or 0.0, 2),
        },
        "prefixes": [
            {
                "prefix": p.prefix,
                "pending": p.pending,
                "in_progress": p.in_progress,
                "dead": p.dead,
                "oldest_due_age": None if p.oldest_due_age is None else round(p.oldest_due_age, 1),
                "published": p.published,
            }
            for p in reading.prefixes
        ],
        "lease_holders": [
            {
                "worker_id": h.worker_id,
                "rows": h.rows,
                "earliest_lease_end": h.earliest_lease_end.isoformat(),
                "earliest_lease_in": round(
                    (h.earliest_lease_end - reading.taken_at).total_seconds(), 1
                ),
            }
            for h in reading.lease_holders
        ],
        "chart": {"points": chart, "peak": round(peak, 2)},
    }
