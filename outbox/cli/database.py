"""Which database the CLI talks to, its connection, and what its failures mean.

One asyncpg connection per command, outside any transaction, so each statement (each batch
of a retry or purge) commits on its own.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from outbox.cli.exits import EXIT_NO_TABLE, EXIT_UNREACHABLE, EXIT_USAGE, CommandError
from outbox.primitives.errors import ConfigurationError
from outbox.primitives.urls import libpq_dsn, redacted_url
from outbox.storage.admin import outbox_table_exists
from outbox.storage.pool import connect, is_unreachable, refused_ssl

__all__ = ["Target", "connected", "explain_failure", "target_of"]

APPLICATION_NAME = "outbox-cli"
_UNDEFINED_TABLE = "42P01"
_REJECTED = (
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.ClientConfigurationError,
)
"""The URL is wrong: the server refused this login or database, or the client cannot use
the URL's connection settings (an SSL file, say)."""


@dataclass(frozen=True)
class Target:
    """The database of this run: its URL (secret: print :attr:`redacted`) and timeout."""

    url: str
    connect_timeout: float

    @property
    def redacted(self) -> str:
        return redacted_url(self.url)


def target_of(args: argparse.Namespace) -> Target:
    """``--database-url``, else ``$DATABASE_URL``; a missing or malformed one exits 2."""
    url: str | None = args.database_url
    source = "--database-url"
    if not url:
        url, source = os.environ.get("DATABASE_URL"), "DATABASE_URL"
    if not url:
        raise CommandError(EXIT_USAGE, "no database: set DATABASE_URL or pass --database-url URL")
    try:
        libpq_dsn(url)
    except ConfigurationError as exc:
        raise CommandError(EXIT_USAGE, f"{source}: {exc}") from None
    return Target(url, float(args.connect_timeout))


@asynccontextmanager
async def connected(target: Target, *, need_table: bool = True) -> AsyncIterator[Any]:
    """An asyncpg connection to ``target``, closed on exit (dropped at once on an error or
    Ctrl-C; each statement is its own transaction, so a batch applies whole or not at all).

    ``need_table``: first check that the outbox table exists, else exit 4.
    """
    conn = await connect(
        target.url, application_name=APPLICATION_NAME, connect_timeout=target.connect_timeout
    )
    try:
        if need_table and not await outbox_table_exists(conn):
            raise CommandError(EXIT_NO_TABLE, _no_table(target))
        yield conn
    except BaseException:
        conn.terminate()  # failed or interrupted (maybe mid-query): no goodbye round trip
        raise
    await conn.close(timeout=target.connect_timeout)


def explain_failure(exc: BaseException, target: Target) -> CommandError | None:
    """The exit code and message for a database failure, or ``None`` if ``exc`` is not one.

    Unreachable (refused, timed out, connection lost; also when wrapped by SQLAlchemy or
    Alembic) is 3; a missing outbox table is 4; a server that rejects the login or does not
    know the database, or has no SSL for a URL that requires it, is a bad setting, 2.
    """
    for cause in _chain(exc):
        if refused_ssl(cause):
            return CommandError(
                EXIT_USAGE,
                f"cannot use PostgreSQL at {target.redacted}: the server does not support SSL,"
                " and the URL requires it (sslmode): a settings problem, not an outage; use"
                " sslmode=prefer or disable, or enable SSL on the server"
                " (check DATABASE_URL / --database-url)",
            )
        if is_unreachable(cause):
            reason = str(cause) or type(cause).__name__
            return CommandError(
                EXIT_UNREACHABLE, f"cannot reach PostgreSQL at {target.redacted}: {reason}"
            )
        if isinstance(cause, _REJECTED):
            return CommandError(
                EXIT_USAGE,
                f"cannot use PostgreSQL at {target.redacted}: {cause}"
                " (check DATABASE_URL / --database-url)",
            )
        if getattr(cause, "sqlstate", None) == _UNDEFINED_TABLE:
            return CommandError(EXIT_NO_TABLE, _no_table(target))
    return None


def _no_table(target: Target) -> str:
    return f"no outbox table in {target.redacted}: run `outbox migrate` first"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then the exceptions it was raised from (``raise ... from``), without loops."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__
