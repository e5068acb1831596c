"""``outbox dead list``, ``outbox dead retry`` and ``outbox dead purge``.

Retries and purges are audited (``outbox_audit``, see :mod:`outbox.storage.audit`) as
``cli:<user>@<host>``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import socket
import sys

from outbox.cli.database import connected, target_of
from outbox.cli.exits import EXIT_INTERRUPTED, EXIT_OK, IN_FLIGHT, CommandError
from outbox.cli.render import Cell, Progress, format_time, json_text, messages, one_line, table
from outbox.storage.admin import (
    DeadFilter,
    DeadMessage,
    RetryResult,
    list_dead,
    purge_dead,
    retry_dead,
)
from outbox.storage.audit import Audit

__all__ = ["list_command", "purge_command", "retry_command"]


def cli_audit() -> Audit:
    """The audit identity of this command: ``cli:<login>@<host>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name for this uid (containers)
        user = "?"
    return Audit(actor=f"cli:{user}@{socket.gethostname()}")


def selection_of(args: argparse.Namespace) -> DeadFilter:
    """The dead rows the selector arguments name (``--all``: the empty filter)."""
    ids: list[int] = getattr(args, "ids", None) or []
    return DeadFilter(
        ids=tuple(dict.fromkeys(ids)) if ids else None,
        type_prefix=args.type_prefix,
        older_than=args.older_than,
        newer_than=args.newer_than,
        key=args.key,
        error_contains=args.error_contains,
    )


def list_command(args: argparse.Namespace) -> int:
    """Print up to ``--limit`` selected dead messages, latest death first."""

    async def fetch() -> list[DeadMessage]:
        async with connected(target_of(args)) as conn:
            return await list_dead(conn, selection_of(args), limit=args.limit)

    messages = asyncio.run(fetch())
    if args.json:
        print(json_text([_as_json(m) for m in messages]))
    elif not messages:
        print("no dead messages match")
    else:
        headers = ["id", "type", "key", "attempts", "died", "error"]
        rows: list[list[Cell]] = [
            [m.id, m.type, m.key or "-", m.attempts, format_time(m.dead_at), one_line(m.error)]
            for m in messages
        ]
        print("\n".join(table(headers, rows, left=["type", "key", "died", "error"])))
    return EXIT_OK


def _as_json(message: DeadMessage) -> dict[str, object]:
    return {
        "id": message.id,
        "type": message.type,
        "key": message.key,
        "attempts": message.attempts,
        "created_at": message.created_at.isoformat(),
        "dead_at": message.dead_at.isoformat(),
        "error": message.error,
    }


def retry_command(args: argparse.Namespace) -> int:
    """Retry the selected dead messages in batches; report how many, and named ids that
    were not dead (stderr; exit 0 all the same)."""
    progress = Progress()
    verb = "would retry" if args.dry_run else "retried"

    async def retry() -> RetryResult:
        async with connected(target_of(args)) as conn:
            return await retry_dead(
                conn,
                selection_of(args),
                batch_size=args.batch_size,
                dry_run=args.dry_run,
                on_batch=lambda _, total: progress.update(f"{verb} {total} so far...", done=total),
                audit=cli_audit(),
            )

    try:
        result = asyncio.run(retry())
    except KeyboardInterrupt:
        progress.finish()
        action = "counted" if args.dry_run else "retried"
        done = f"at least {messages(progress.done, 'dead')} {action}"
        raise CommandError(EXIT_INTERRUPTED, f"interrupted: {done} {IN_FLIGHT}") from None
    progress.finish()
    if args.json:
        report = {"retried": result.retried, "not_dead": sorted(result.not_dead)}
        print(json_text({**report, "dry_run": args.dry_run}))
    else:
        print(f"{verb} {messages(result.retried, 'dead')}")
    if result.not_dead:
        left = ", ".join(
            f"{i} ({'not found' if s is None else s.value})" for i, s in result.not_dead.items()
        )
        print(f"outbox: not dead, left alone: {left}", file=sys.stderr)
    return EXIT_OK


def purge_command(args: argparse.Namespace) -> int:
    """Delete (``--dry-run``: count) the selected dead messages in batches; report how many."""
    progress = Progress()
    verb = "would purge" if args.dry_run else "purged"

    async def purge() -> int:
        async with connected(target_of(args)) as conn:
            return await purge_dead(
                conn,
                selection_of(args),
                batch_size=args.batch_size,
                dry_run=args.dry_run,
                on_batch=lambda _, total: progress.update(f"{verb} {total} so far...", done=total),
                audit=cli_audit(),
            )

    try:
        count = asyncio.run(purge())
    except KeyboardInterrupt:
        progress.finish()
        done = f"at least {messages(progress.done, 'dead')} purged"
        raise CommandError(EXIT_INTERRUPTED, f"interrupted: {done} {IN_FLIGHT}") from None
    progress.finish()
    if args.json:
        print(json_text({"purged": count, "dry_run": args.dry_run}))
    else:
        print(f"{verb} {messages(count, 'dead')}")
    return EXIT_OK
