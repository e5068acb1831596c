"""Retry delays: pure functions of the attempt number (and randomness passed in).

A policy is any callable ``(attempt, type) -> seconds``; ``attempt`` is the number of the
attempt that just failed, starting at 1. :class:`ExponentialBackoff` (full jitter, capped) is
the default; :class:`FixedSchedule` reproduces schedules like 60s/300s/900s;
:class:`PerTypeBackoff` picks a policy by message type prefix.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from outbox.primitives.errors import InvalidArgumentError

__all__ = [
    "BackoffPolicy",
    "ExponentialBackoff",
    "FixedSchedule",
    "PerTypeBackoff",
]


class BackoffPolicy(Protocol):
    """Seconds to wait before the next attempt, after attempt number ``attempt`` failed."""

    def __call__(self, attempt: int, message_type: str, /) -> float: ...


@dataclass(frozen=True)
class ExponentialBackoff:
    """Full-jitter exponential backoff: ``uniform(0, min(cap, base * factor**(attempt-1)))``.

    Full jitter spreads retries of a burst of failures evenly instead of in waves. ``floor``
    is a minimum delay so that a retry never spins. ``rng`` is injectable for tests.
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0
    floor: float = 0.1
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.factor >= 1 and self.cap >= self.floor >= 0):
            raise InvalidArgumentError(
                "ExponentialBackoff needs base > 0, factor >= 1 and cap >= floor >= 0"
            )

    def ceiling(self, attempt: int) -> float:
        """The largest delay the policy may return after ``attempt`` failed."""
        exponent = max(attempt, 1) - 1
        # Avoid float overflow on absurd attempt numbers: once past the cap, stay there.
        if exponent > 1024:
            return self.cap
        return min(self.cap, self.base * self.factor**exponent)

    def __call__(self, attempt: int, message_type: str, /) -> float:
        return max(self.floor, self.rng.uniform(0.0, self.ceiling(attempt)))


@dataclass(frozen=True)
class FixedSchedule:
    """Delays taken from a list by attempt: attempt 1 -> ``delays[0]``; past the end, the last."""

    delays: Sequence[float]

    def __post_init__(self) -> None:
        if not self.delays or any(d < 0 for d in self.delays):
            raise InvalidArgumentError("FixedSchedule needs at least one delay, all >= 0")

    def __call__(self, attempt: int, message_type: str, /) -> float:
        index = min(max(attempt, 1), len(self.delays)) - 1
        return float(self.delays[index])


@dataclass(frozen=True)
class PerTypeBackoff:
    """Chooses a policy by the longest matching type prefix, else ``default``.

    ``PerTypeBackoff({"document.": FixedSchedule([60, 300, 900])})`` keeps the default
    exponential policy for every other type.
    """

    by_prefix: Mapping[str, BackoffPolicy]
    default: BackoffPolicy = field(default_factory=ExponentialBackoff)

    def __call__(self, attempt: int, message_type: str, /) -> float:
        best: str | None = None
        for prefix in self.by_prefix:
            if message_type.startswith(prefix) and (best is None or len(prefix) > len(best)):
                best = prefix
        policy = self.default if best is None else self.by_prefix[best]
        return policy(attempt, message_type)
