"""Durations as operators type them: ``90s``, ``15m``, ``2h``, ``7d``, ``1w``, ``1h30m``.

A bare number is seconds (``2``, ``0.5``). Units go from weeks down to seconds, each at most
once; there is no sign, so a negative duration is not a duration.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

__all__ = ["MAX_DURATION", "format_duration", "parse_duration"]

MAX_DURATION = timedelta(days=100 * 365)
"""Longest duration accepted (a century: far past any retention, far from overflow)."""

_NUMBER = r"\d+(?:\.\d+)?"
_UNITS = (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_PATTERN = re.compile("".join(f"(?:(?P<{u}>{_NUMBER}){u})?" for u, _ in _UNITS))
_BARE = re.compile(_NUMBER)


def parse_duration(text: str) -> timedelta:
    """``text`` as a duration; raises ``ValueError`` (saying what is accepted) otherwise."""
    cleaned = text.strip().lower()
    if _BARE.fullmatch(cleaned):
        seconds = float(cleaned)
    else:
        match = _PATTERN.fullmatch(cleaned)
        if not cleaned or match is None:
            raise ValueError(
                f"{text!r} is not a duration: use e.g. 90s, 15m, 2h, 7d, 1w, 1h30m"
                " or a number of seconds"
            )
        seconds = sum(float(match[u]) * size for u, size in _UNITS if match[u] is not None)
    if not math.isfinite(seconds) or seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"{text!r} is longer than {MAX_DURATION.days} days")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """``delta`` in the same notation, days down to seconds: ``1h30m``, ``7d``, ``0.5s``."""
    seconds = delta.total_seconds()
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in _UNITS[1:-1]:  # no weeks: "7d" reads better than "1w"
        whole = int(seconds // size)
        if whole:
            parts.append(f"{whole}{unit}")
            seconds -= whole * size
    if seconds > 1e-6 or not parts:
        parts.append(f"{round(seconds, 3):g}s")
    return "".join(parts)
