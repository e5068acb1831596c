"""Growing waits between tries of something that is down (a database, a transport).

The runtime's every "try again until it works" loop waits with one :class:`GrowingDelay`:
doubling from ``first`` to ``cap``, optionally jittered, started over by :meth:`reset` once a
try succeeds. (Per-message retry delays are a different thing: :mod:`outbox.primitives.backoff`.)
"""

from __future__ import annotations

import random

__all__ = ["GrowingDelay"]


class GrowingDelay:
    """``first``, twice that, ... up to ``cap`` seconds; with ``jitter``, each in ``[d/2, d]``."""

    def __init__(self, first: float = 0.05, cap: float = 5.0, *, jitter: bool = False) -> None:
        if not first > 0 or not cap > 0:
            raise ValueError(f"delays must be positive, got first={first!r} cap={cap!r}")
        self.first = min(first, cap)
        self.cap = cap
        self.jitter = jitter
        self.failures = 0

    def next(self) -> float:
        """The wait before the next try; each call counts one more failure."""
        ceiling = min(self.cap, self.first * 2 ** min(self.failures, 60))
        self.failures += 1
        return random.uniform(ceiling / 2, ceiling) if self.jitter else ceiling

    def reset(self) -> None:
        """A try succeeded: the next failure waits ``first`` again."""
        self.failures = 0
