"""``outbox stats``: counts per status and type prefix, and the oldest claimable age."""

from __future__ import annotations

import argparse
import asyncio

from outbox.cli.database import Target, connected, target_of
from outbox.cli.exits import EXIT_OK
from outbox.cli.render import Cell, format_age, json_text, table
from outbox.storage.schema import Status
from outbox.storage.stats import OutboxStats, stats

__all__ = ["as_json", "as_text", "run"]


def run(args: argparse.Namespace) -> int:
    """Print the snapshot of :func:`outbox.storage.stats.stats` as a table or (``--json``) JSON."""
    snapshot = asyncio.run(_stats(target_of(args)))
    print(json_text(as_json(snapshot)) if args.json else "\n".join(as_text(snapshot)))
    return EXIT_OK


async def _stats(target: Target) -> OutboxStats:
    async with connected(target) as conn:
        return await stats(conn)


def as_json(snapshot: OutboxStats) -> dict[str, object]:
    """Stable keys: ``by_status``, ``by_prefix``, ``total``, ``oldest_claimable_age_seconds``,
    ``keys_in_flight``, ``keys_held``."""
    return {
        "by_status": {s.value: snapshot.by_status[s] for s in Status},
        "by_prefix": {
            prefix: {s.value: counts[s] for s in Status}
            for prefix, counts in snapshot.by_prefix.items()
        },
        "total": snapshot.total,
        "oldest_claimable_age_seconds": snapshot.oldest_claimable_age,
        "keys_in_flight": snapshot.keys_in_flight,
        "keys_held": snapshot.keys_held,
    }


def as_text(snapshot: OutboxStats) -> list[str]:
    """A table (a row per type prefix, a column per status, totals), the oldest age, and
    the ordered keys in flight and held (when there are any)."""
    headers = ["prefix", *(s.value for s in Status), "total"]
    rows: list[list[Cell]] = [
        [prefix, *(counts[s] for s in Status), sum(counts.values())]
        for prefix, counts in snapshot.by_prefix.items()
    ]
    rows.append(["total", *(snapshot.by_status[s] for s in Status), snapshot.total])
    age = snapshot.oldest_claimable_age
    oldest = "nothing claimable" if age is None else f"oldest claimable: {format_age(age)} ago"
    lines = [*table(headers, rows, left=["prefix"]), oldest]
    if snapshot.keys_in_flight or snapshot.keys_held:
        lines.append(
            f"keys: {snapshot.keys_in_flight} in flight, {snapshot.keys_held} held"
            " behind a dead message"
        )
    return lines
