"""The command line: the argparse tree, argument types, and checks across arguments.

Every mistake exits 2 through argparse with a message naming the argument. The database
options (``--database-url``, ``--connect-timeout``, ``--debug``) are accepted before or
after the command.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from outbox.cli.exits import EXIT_CODES_HELP
from outbox.primitives.durations import parse_duration
from outbox.storage.admin import MAX_BATCH_SIZE, PurgeTarget

__all__ = ["CommandFunction", "build_parser", "parse"]

CommandFunction = Callable[[argparse.Namespace], int]
"""What runs one subcommand: parsed arguments in, exit code out."""

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_LIST_LIMIT = 50
DEFAULT_BATCH_SIZE = 1000
DEFAULT_TOP_INTERVAL = 2.0
MAX_LIST_LIMIT = 10_000


def duration(text: str) -> timedelta:
    """An argparse type: a duration (see :mod:`outbox.primitives.durations`)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_seconds(text: str) -> float:
    """An argparse type: a duration or number of seconds greater than zero."""
    seconds = duration(text).total_seconds()
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than zero")
    return seconds


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} must be from {low} to {high}")
        return value

    parse.__name__ = "integer"
    return parse


message_id = _bounded_int(1, 2**63 - 1)
"""An argparse type: an outbox id (a positive integer)."""


def type_prefix(text: str) -> str:
    """An argparse type: a literal, non-empty type prefix, in UTF-8 as types are."""
    if not text or "\x00" in text:
        raise argparse.ArgumentTypeError("a type prefix is non-empty text without NUL")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes the locale could not decode (surrogateescape)
        raw = os.fsencode(text)
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not UTF-8 text; a type prefix must be, as every type is"
        ) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    """The whole ``outbox`` command tree; each command sets ``handler`` (a :data:`CommandFunction`)
    and ``command_parser`` (its own parser, for errors found after parsing)."""
    from outbox.cli import dashboard, dead, migrate, purge, stats, top

    parser = argparse.ArgumentParser(
        prog="outbox",
        description="Operate a PostgreSQL transactional outbox: migrate, inspect, retry, purge.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _database_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    _database_options(common, suppress=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        group: Any, name: str, handler: CommandFunction, summary: str
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name,
            parents=[common],
            help=summary,
            description=summary,
            epilog=EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler, command_parser=sub)
        return sub

    sub = command(commands, "migrate", migrate.run, "Create or upgrade the outbox table.")
    sub.add_argument(
        "--documents",
        action="store_true",
        help="also the reference documents/document_chunks tables (all heads)",
    )
    sub.add_argument("--revision", metavar="REV", help="migrate to REV (overrides --documents)")

    sub = command(commands, "stats", stats.run, "Counts per status and type prefix.")
    _json_option(sub)

    dead_group = commands.add_parser(
        "dead",
        help="List, retry or purge dead messages.",
        description="List, retry or purge dead messages.",
    ).add_subparsers(dest="dead_command", metavar="ACTION", required=True)
    sub = command(dead_group, "list", dead.list_command, "Dead messages, latest death first.")
    _dead_selectors(sub)
    sub.add_argument(
        "--limit",
        type=_bounded_int(1, MAX_LIST_LIMIT),
        default=DEFAULT_LIST_LIMIT,
        metavar="N",
        help=f"at most N messages (default {DEFAULT_LIST_LIMIT})",
    )
    _json_option(sub)

    sub = command(
        dead_group,
        "retry",
        dead.retry_command,
        "Put dead messages back to pending with attempts reset to 0.",
    )
    sub.add_argument("ids", nargs="*", type=message_id, metavar="ID", help="outbox ids")
    _dead_selectors(sub)
    sub.add_argument("--all", action="store_true", help="every dead message (no other selector)")
    _batch_options(sub)
    _json_option(sub)

    sub = command(
        dead_group, "purge", dead.purge_command, "Delete the selected dead messages for good."
    )
    sub.add_argument("ids", nargs="*", type=message_id, metavar="ID", help="outbox ids")
    _dead_selectors(sub)
    sub.add_argument("--all", action="store_true", help="every dead message (no other selector)")
    _batch_options(sub)
    _json_option(sub)

    sub = command(commands, "purge", purge.run, "Delete old published or dead messages.")
    sub.add_argument(
        "target",
        choices=[t.value for t in PurgeTarget],
        help="published (aged by published_at) or dead (aged by dead_at, when they died)",
    )
    sub.add_argument("--older-than", type=duration, required=True, metavar="AGE")
    _batch_options(sub)
    _json_option(sub)

    sub = command(commands, "top", top.run, "Live view of the outbox (Ctrl-C to quit).")
    sub.add_argument(
        "--interval",
        type=positive_seconds,
        default=DEFAULT_TOP_INTERVAL,
        metavar="SECONDS",
        help=f"between samples (default {DEFAULT_TOP_INTERVAL:g})",
    )
    sub.add_argument(
        "--iterations", type=_bounded_int(1, 2**31), metavar="N", help="stop after N samples"
    )
    _json_option(sub, "one JSON object per sample and line")

    sub = command(
        commands,
        "dashboard",
        dashboard.run,
        "Serve the web dashboard (needs the 'dashboard' extra); token from $DASHBOARD_TOKEN.",
    )
    sub.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sub.add_argument(
        "--port", type=_bounded_int(1, 65535), default=8080, help="port (default 8080)"
    )
    sub.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help="read the token from PATH's first line (instead of $DASHBOARD_TOKEN)",
    )
    sub.add_argument("--read-only", action="store_true", help="refuse every change")
    sub.add_argument(
        "--require-token-for-viewing",
        action="store_true",
        help="log in with the token to see anything (default: changes only)",
    )
    return parser


def _database_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """``suppress``: leave the namespace alone when absent (the copy after the command)."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--database-url",
        metavar="URL",
        default=default(None),
        help="PostgreSQL URL (default: $DATABASE_URL); passwords are never printed",
    )
    parser.add_argument(
        "--connect-timeout",
        type=positive_seconds,
        default=default(DEFAULT_CONNECT_TIMEOUT),
        metavar="SECONDS",
        help=f"give up connecting after this long (default {DEFAULT_CONNECT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="show tracebacks of unexpected errors",
    )


def _dead_selectors(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--type-prefix",
        type=type_prefix,
        metavar="P",
        help="types starting with P, literally (_ and %% match only themselves)",
    )
    parser.add_argument(
        "--older-than", type=duration, metavar="AGE", help="died more than AGE ago (dead_at)"
    )
    parser.add_argument(
        "--newer-than", type=duration, metavar="AGE", help="died within the last AGE (dead_at)"
    )
    parser.add_argument("--key", type=_text, metavar="KEY", help="this ordering key exactly")
    parser.add_argument(
        "--error-contains",
        type=_text,
        metavar="TEXT",
        help="the last error contains TEXT (literally, any case)",
    )


def _text(text: str) -> str:
    """An argparse type: non-empty text without NUL."""
    if not text or "\x00" in text:
        raise argparse.ArgumentTypeError("give non-empty text without NUL")
    return text


def _batch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch-size",
        type=_bounded_int(1, MAX_BATCH_SIZE),
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"rows per transaction (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument("--dry-run", action="store_true", help="count only, change nothing")


def _json_option(parser: argparse.ArgumentParser, text: str = "output JSON") -> None:
    parser.add_argument("--json", action="store_true", help=text)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and check arguments against each other."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "dead" and args.dead_command in ("retry", "purge"):
        verb = args.dead_command
        selectors = [
            args.ids,
            args.type_prefix,
            args.older_than,
            args.newer_than,
            args.key,
            args.error_contains,
        ]
        given = any(s not in (None, []) for s in selectors)
        retry_parser: argparse.ArgumentParser = args.command_parser
        if args.all and given:
            verbs = {"retry": "retries", "purge": "purges"}[verb]
            retry_parser.error(f"--all {verbs} every dead message: give it without selectors")
        if not args.all and not given:
            retry_parser.error(
                f"name the dead messages to {verb}: IDs, --type-prefix, --key,"
                " --error-contains, --older-than or --newer-than (combined with AND), or"
                " --all for every dead message"
            )
    return args
