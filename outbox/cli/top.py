"""``outbox top``: a live view of the outbox, sampled every ``--interval`` seconds.

On a terminal the screen is redrawn in place; otherwise (or with ``--json``) each sample is
one line, to log or pipe. Ctrl-C is the normal way out (exit 0); ``--iterations N`` stops
after N samples. Rates need two samples, so the first shows them as ``-`` (JSON ``null``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from datetime import datetime

from outbox.cli.database import Target, connected, target_of
from outbox.cli.exits import EXIT_OK
from outbox.cli.render import format_age, format_rate, format_time, json_text, printable, table
from outbox.storage.admin import LiveSample, live_sample

__all__ = ["as_json", "as_line", "as_screen", "run"]

CLEAR_SCREEN = "\x1b[H\x1b[2J"


def run(args: argparse.Namespace) -> int:
    """Sample until Ctrl-C or ``--iterations``; exit 0 either way."""
    target = target_of(args)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_watch(target, args.interval, args.iterations, args.json))
    return EXIT_OK


async def _watch(target: Target, interval: float, iterations: int | None, as_json_: bool) -> None:
    screen = sys.stdout.isatty() and not as_json_
    previous: LiveSample | None = None
    taken = 0
    async with connected(target) as conn:
        while True:
            started = time.monotonic()
            sample = await live_sample(conn, previous)
            if screen:
                text = CLEAR_SCREEN + "\n".join(as_screen(sample, target.redacted, interval))
            else:
                text = json_text(as_json(sample), compact=True) if as_json_ else as_line(sample)
            print(text, flush=True)
            taken += 1
            if iterations is not None and taken >= iterations:
                return
            previous = sample
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def as_json(sample: LiveSample) -> dict[str, object]:
    """One sample with stable keys; unknown rates and lags are ``null``."""
    return {
        "time": sample.taken_at.isoformat(),
        "pending": sample.pending,
        "in_progress": sample.in_progress,
        "dead": sample.dead,
        "oldest_claimable_age_seconds": _rounded(sample.oldest_claimable_age),
        "enqueued_per_second": _rounded(sample.enqueued_per_second),
        "published_per_second": _rounded(sample.published_per_second),
        "dead_per_second": _rounded(sample.dead_per_second),
        "lag_p50_seconds": _rounded(sample.lag_p50),
        "lag_p99_seconds": _rounded(sample.lag_p99),
        "keys_in_flight": sample.keys_in_flight,
        "keys_held": sample.keys_held,
        "by_prefix": {
            prefix: {
                "pending": p.pending,
                "in_progress": p.in_progress,
                "published_per_second": _rounded(p.published_per_second),
            }
            for prefix, p in sample.by_prefix.items()
        },
    }


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else format_age(seconds)


def _lag(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f} s"


def as_line(sample: LiveSample) -> str:
    """One sample as one ``key=value`` line, then ``| prefix: ...`` per type prefix."""
    fields = [
        format_time(sample.taken_at),
        f"pending={sample.pending}",
        f"in_progress={sample.in_progress}",
        f"dead={sample.dead}",
        f"oldest_claimable={_age(sample.oldest_claimable_age).replace(' ', '')}",
        f"enqueued/s={format_rate(sample.enqueued_per_second)}",
        f"published/s={format_rate(sample.published_per_second)}",
        f"dead/s={format_rate(sample.dead_per_second)}",
        f"lag_p50={_lag(sample.lag_p50).replace(' ', '')}",
        f"lag_p99={_lag(sample.lag_p99).replace(' ', '')}",
        f"keys_in_flight={sample.keys_in_flight}",
        f"keys_held={sample.keys_held}",
    ]
    for prefix, p in sample.by_prefix.items():
        fields.append(
            f"| {printable(prefix)} pending={p.pending} in_progress={p.in_progress}"
            f" published/s={format_rate(p.published_per_second)}"
        )
    return " ".join(fields)


def as_screen(sample: LiveSample, where: str, interval: float) -> list[str]:
    """The full-screen view: a header, the totals, and a table per type prefix."""
    when = _clock(sample.taken_at)
    header = f"outbox top  {printable(where)}  {when}  every {interval:g} s  Ctrl-C to quit"
    headers = ["pending", "in_progress", "dead", "oldest claimable", "enqueued/s"]
    headers += ["published/s", "dead/s", "lag p50", "lag p99"]
    totals = table(
        headers,
        [
            [
                sample.pending,
                sample.in_progress,
                sample.dead,
                _age(sample.oldest_claimable_age),
                sample.enqueued_per_second,
                sample.published_per_second,
                sample.dead_per_second,
                _lag(sample.lag_p50),
                _lag(sample.lag_p99),
            ]
        ],
    )
    prefixes = table(
        ["prefix", "pending", "in_progress", "published/s"],
        [
            [prefix, p.pending, p.in_progress, p.published_per_second]
            for prefix, p in sample.by_prefix.items()
        ],
        left=["prefix"],
    )
    return [header, "", *totals, "", *prefixes]


def _clock(moment: datetime) -> str:
    return format_time(moment).replace("T", " ")
