"""``outbox purge {published,dead} --older-than AGE``: delete old rows in short batches."""

from __future__ import annotations

import argparse
import asyncio

from outbox.cli.database import connected, target_of
from outbox.cli.exits import EXIT_INTERRUPTED, EXIT_OK, IN_FLIGHT, CommandError
from outbox.cli.render import Progress, json_text, messages
from outbox.primitives.durations import format_duration
from outbox.storage.admin import PurgeTarget, purge

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Delete (``--dry-run``: count) the target rows older than ``--older-than``; batch
    progress on stderr when it is a terminal; prints ``purged N published messages older
    than 7d``."""
    target = PurgeTarget(args.target)
    progress = Progress()
    batches = 0

    def on_batch(deleted: int, total: int) -> None:
        nonlocal batches
        batches += 1
        progress.update(f"batch {batches}: {deleted} deleted, {total} so far...", done=total)

    async def go() -> int:
        async with connected(target_of(args)) as conn:
            return await purge(
                conn,
                target,
                older_than=args.older_than,
                batch_size=args.batch_size,
                dry_run=args.dry_run,
                on_batch=on_batch,
            )

    try:
        count = asyncio.run(go())
    except KeyboardInterrupt:
        progress.finish()
        done = f"at least {messages(progress.done, target.value)} purged"
        raise CommandError(EXIT_INTERRUPTED, f"interrupted: {done} {IN_FLIGHT}") from None
    progress.finish()
    age = format_duration(args.older_than)
    if args.json:
        report = {
            "purged": count,
            "target": target.value,
            "older_than_seconds": args.older_than.total_seconds(),
            "batches": batches,
            "dry_run": args.dry_run,
        }
        print(json_text(report))
    else:
        verb = "would purge" if args.dry_run else "purged"
        print(f"{verb} {messages(count, target.value)} older than {age}")
    return EXIT_OK
