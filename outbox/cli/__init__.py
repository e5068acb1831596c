"""``outbox``: the operator's command line for the outbox table.

::

    outbox migrate [--documents] [--revision REV]
    outbox stats [--json]
    outbox dead list [--type-prefix P] [--older-than AGE] [--newer-than AGE] [--limit N] [--json]
    outbox dead retry [ID ...] [--type-prefix P] [--older-than AGE] [--newer-than AGE] [--all]
                      [--batch-size N] [--dry-run] [--json]
    outbox purge {published,dead} --older-than AGE [--batch-size N] [--dry-run] [--json]
    outbox top [--interval SECONDS] [--iterations N] [--json]
    outbox dead purge [ID ...] [--type-prefix P] [--key K] [--error-contains TEXT]
                      [--older-than AGE] [--newer-than AGE] [--all] [--batch-size N] [--dry-run]
    outbox dashboard [--host H] [--port N] [--token-file PATH] [--read-only]
                     [--require-token-for-viewing]       (the 'dashboard' extra)

The database is ``--database-url`` or else ``$DATABASE_URL`` (before or after the command,
with ``--connect-timeout SECONDS`` and ``--debug``); its password is never printed.

Exit codes, for scripts:

* ``0`` success;
* ``1`` an unexpected error: one line ``outbox: error: ...`` (``--debug``: the traceback);
* ``2`` bad usage, argument or setting; the message names it (argparse's own errors, a
  missing ``DATABASE_URL``, a malformed URL, a login or database name the server rejects);
* ``3`` PostgreSQL unreachable: ``outbox: cannot reach PostgreSQL at <url>: <reason>``;
* ``4`` PostgreSQL reachable but the outbox table is missing (run ``outbox migrate``);
* ``130`` interrupted by Ctrl-C, except ``outbox top``, which exits 0 (its normal way out).
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Sequence

from outbox.cli.exits import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, CommandError
from outbox.cli.render import printable

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command (``argv`` default: ``sys.argv[1:]``) and return its exit code."""
    from outbox.cli.arguments import parse
    from outbox.cli.database import explain_failure, target_of

    args = parse(argv)  # bad usage exits 2 here, through argparse
    try:
        code: int = args.handler(args)
        return code
    except CommandError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        print("outbox: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`outbox top | head -1`): not an error
        # Python's docs' recipe: point stdout at /dev/null so the flush at exit is silent.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        with contextlib.suppress(CommandError):  # no target: not a database failure
            explained = explain_failure(exc, target_of(args))
            if explained is not None:
                return _fail(explained)
        if args.debug:
            traceback.print_exc()
        print(f"outbox: error: {printable(f'{type(exc).__name__}: {exc}')}", file=sys.stderr)
        return EXIT_ERROR


def _fail(error: CommandError) -> int:
    print(f"outbox: {printable(error.message)}", file=sys.stderr)
    return error.code
