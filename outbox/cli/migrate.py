"""``outbox migrate``: create or upgrade the tables, then report the revisions."""

from __future__ import annotations

import argparse
import asyncio

from outbox.cli.database import Target, connected, target_of
from outbox.cli.exits import EXIT_OK, EXIT_USAGE, CommandError
from outbox.storage.admin import migrated_revisions

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Migrate to ``outbox@head`` (``--documents``: all heads; ``--revision``: that one).

    Reachability is checked first, with the connect timeout, so an unreachable server exits
    3 at once. Prints ``migrated: outbox_0003 (head)``: every revision the database is at,
    read back from ``outbox_alembic_version``.
    """
    # Alembic is imported here: the other commands do not need it.
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError as AlembicCommandError

    from outbox.storage.migrate import alembic_config, upgrade

    target = target_of(args)
    asyncio.run(_revisions(target))  # reachable? (alembic's own connect has no timeout)
    try:
        upgrade(target.url, args.revision, documents=args.documents)
    except AlembicCommandError as exc:
        if args.revision is None:
            raise
        raise CommandError(EXIT_USAGE, f"--revision {args.revision}: {exc}") from None
    heads = set(ScriptDirectory.from_config(alembic_config(target.url)).get_heads())
    revisions = asyncio.run(_revisions(target))
    shown = [f"{r} (head)" if r in heads else r for r in revisions] or ["base (no revision)"]
    print("migrated: " + ", ".join(shown))
    return EXIT_OK


async def _revisions(target: Target) -> list[str]:
    async with connected(target, need_table=False) as conn:
        return await migrated_revisions(conn)
