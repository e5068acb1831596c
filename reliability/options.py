"""argparse types shared by the chaos and soak runs: a bad option exits 2 with its reason."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from outbox.primitives.durations import parse_duration

__all__ = ["at_least", "positive_duration"]


def at_least(kind: Callable[[str], float], low: float) -> Callable[[str], float]:
    """A ``kind`` (``int`` or ``float``) number of at least ``low``."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"{text!r}: must be at least {low:g}")
        return value

    return parse


def positive_duration(text: str) -> str:
    """A duration ``outbox purge --older-than`` accepts (``90s``, ``2m``, ``1h``), above 0."""
    try:
        seconds = parse_duration(text).total_seconds()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be longer than 0")
    return text
