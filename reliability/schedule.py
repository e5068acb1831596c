"""When each fault happens: a timeline drawn from the run's seed.

The windowed faults (Redis down, PostgreSQL restarts, cut connections, the sidecar failing)
each get their own slot of the run, so their effects can be told apart; kills, bursts and
poison land anywhere, overlapping the rest, as they would in production.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["WINDOWED", "Event", "plan"]

WINDOWED = (
    "redis-down",
    "postgres-restart-fast",
    "postgres-restart-immediate",
    "terminate-connections",
    "sidecar-error",
    "sidecar-hang",
    "sidecar-refuse",
)
"""Faults with an end, one slot each."""

FAULT_SECONDS = 10.0
"""How long Redis stays down and the sidecar keeps failing (less in a run too short to
give each windowed fault a slot of more than 12 s)."""


@dataclass(frozen=True, order=True)
class Event:
    """``what`` happens ``at`` seconds into the run, for ``seconds`` if it has an end;
    ``target`` picks a worker slot (or a burst)."""

    at: float
    what: str
    target: int = 0
    seconds: float = 0.0


def plan(seed: int, seconds: float, *, kills: int, bursts: int, poison_waves: int) -> list[Event]:
    """The whole timeline, sorted. Faults start no earlier than 10 % into the run and end
    before 90 %, so the run opens and closes on a steady state."""
    rng = random.Random(seed)
    begin, end = 0.1 * seconds, 0.9 * seconds
    slot = (end - begin) / len(WINDOWED)
    lasts = min(FAULT_SECONDS, slot - 2)
    events = []
    for n, what in enumerate(rng.sample(WINDOWED, len(WINDOWED))):
        start = begin + n * slot + rng.uniform(0, max(0.0, slot - lasts - 2))
        events.append(Event(round(start, 2), what, seconds=round(lasts, 2)))
    events += [
        Event(round(rng.uniform(begin, end), 2), "kill", rng.randrange(1 << 16))
        for _ in range(kills)
    ]
    events += [Event(round(rng.uniform(begin, end), 2), "burst", n) for n in range(bursts)]
    events += [
        Event(round(rng.uniform(0.05 * seconds, end), 2), "poison", n) for n in range(poison_waves)
    ]
    return sorted(events)
