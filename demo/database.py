"""The demo's own database: created on the chosen server, migrated, dropped at the end.

The demo never writes into the database ``DATABASE_URL`` names: its workers would claim
that database's real outbox rows. It creates ``outbox_demo_<random>`` next to it instead
(which needs the ``CREATEDB`` privilege), with the outbox, the reference documents tables and
a ``demo_chat_messages`` table standing in for an application's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterator

import asyncpg

from outbox.primitives.urls import async_database_url, libpq_dsn, redacted_url
from outbox.storage.migrate import upgrade

__all__ = ["CannotCreateDatabase", "demo_database"]

log = logging.getLogger("demo")

CHAT_TABLE = """
CREATE TABLE demo_chat_messages (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room text NOT NULL,
    author text NOT NULL,
    body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""


class CannotCreateDatabase(RuntimeError):
    """The server refused ``CREATE DATABASE``; the message says what to do instead."""


@contextlib.contextmanager
def demo_database(server_url: str, *, drop: bool = True) -> Iterator[str]:
    """Create and migrate a fresh database on ``server_url``'s server; yield its URL; with
    ``drop``, drop it afterwards (even with clients still connected)."""
    name = f"outbox_demo_{secrets.token_hex(4)}"
    url = libpq_dsn(async_database_url(server_url).set(database=name))
    try:
        asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    except asyncpg.InsufficientPrivilegeError:
        raise CannotCreateDatabase(
            f"the demo runs in a database of its own and may not create one on "
            f"{redacted_url(server_url)}; grant CREATEDB, or unset DATABASE_URL to let the "
            f"demo start a throwaway PostgreSQL"
        ) from None
    try:
        upgrade(url, documents=True)
        asyncio.run(_admin(url, CHAT_TABLE))
        yield url
    finally:
        if drop:
            try:
                asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("could not drop the demo database %s: %s", name, exc)


async def _admin(url: str, statement: str) -> None:
    conn = await asyncpg.connect(libpq_dsn(url), timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()
