"""Alembic environment for the outbox table.

The database comes from ``sqlalchemy.url`` when the caller set it (``outbox.storage.migrate``), else
from ``DATABASE_URL``; a plain ``postgresql://`` URL is run through asyncpg. A caller may
also pass an open connection as ``config.attributes["connection"]``. Versions are kept in
``outbox_alembic_version`` so a host application's own ``alembic_version`` is untouched.

Autogenerate compares only the outbox's own metadata and ignores every other table (a host
application's, the reference documents tables of the ``documents`` branch): this file ships
in the library's wheel and must not import any package built on it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from outbox.primitives.engines import engine_options
from outbox.primitives.errors import ConfigurationError
from outbox.primitives.urls import async_database_url
from outbox.storage.migrate import VERSION_TABLE
from outbox.storage.schema import metadata

config = context.config


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL")
    if not url:
        raise ConfigurationError(
            "DATABASE_URL is not set: point it at the PostgreSQL database to migrate"
        )
    return async_database_url(url).render_as_string(hide_password=False)


def _include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    return type_ != "table" or name in metadata.tables


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_name=_include_name,
        compare_type=True,
        compare_server_default=True,
        **kwargs,
    )


def _run_with(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    # Always PgBouncer-safe (transaction pooling: no named statement survives a transaction,
    # so a cached one breaks the next run); migrations are too rare for the cache to matter.
    url = _database_url()
    engine = create_async_engine(url, poolclass=NullPool, **engine_options(url, pgbouncer=True))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_with)
            await connection.commit()
    finally:
        await engine.dispose()


def run() -> None:
    if context.is_offline_mode():
        _configure(url=_database_url(), literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
    else:
        asyncio.run(_run_async())


run()
