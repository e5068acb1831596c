"""Raw asyncpg connections for the worker runtime's hot path.

The runtime runs the library's statements on asyncpg directly (see
``outbox.storage.execution``): the
same SQL, without SQLAlchemy's per-call execution overhead. ``jsonb``/``json`` columns are
decoded with the standard ``json`` module, as SQLAlchemy does.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from outbox.primitives.urls import libpq_dsn

__all__ = ["UNREACHABLE_ERRORS", "connect", "create_pool", "is_unreachable"]

UNREACHABLE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,
)
"""What asyncpg raises when PostgreSQL is unreachable or hung (``command_timeout``), as
opposed to rejecting a statement: no connection, a dropped one, a server shutting down."""


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` means PostgreSQL is unreachable now (see :data:`UNREACHABLE_ERRORS`);
    not for asyncpg's configuration errors (a bad SSL setting, say, or :func:`refused_ssl`),
    which no retry mends."""
    if isinstance(exc, asyncpg.ClientConfigurationError) or refused_ssl(exc):
        return False
    return isinstance(exc, UNREACHABLE_ERRORS)


def refused_ssl(exc: BaseException) -> bool:
    """True when a server without SSL answered a URL that requires it (``sslmode=require``
    and stricter): asyncpg raises a plain ``ConnectionError`` saying it "rejected SSL
    upgrade". A setting to change, not an outage."""
    return isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc)


async def _set_codecs(conn: Any) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, schema="pg_catalog", encoder=json.dumps, decoder=json.loads, format="text"
        )


async def _keep_session(conn: Any) -> None:
    """Release without asyncpg's reset query (a round trip per release on the hot path)."""


async def create_pool(
    database_url: str,
    *,
    max_size: int = 4,
    application_name: str = "outbox",
    statement_cache_size: int = 100,
    connect_timeout: float = 10.0,
    command_timeout: float | None = 15.0,
    disable_jit: bool = False,
) -> Any:
    """An asyncpg pool on ``database_url`` (any ``postgresql://`` form the library accepts).

    ``statement_cache_size=0`` disables named prepared statements, for PgBouncer in
    transaction pooling mode. ``disable_jit`` connects with ``jit = off`` (the workers do,
    but behind PgBouncer): the claim is one large statement whose cost estimate can cross
    ``jit_above_cost`` (after an ``ANALYZE`` while a snapshot is held, say), and compiling it
    then costs far more than running it (140 to 210 ms a claim in the held-snapshot bench,
    against 9 ms without). PgBouncer refuses startup parameters it does not know: behind it,
    set ``jit = off`` for the workers' role (``ALTER ROLE ... SET jit = off``). A statement
    running longer than ``command_timeout`` seconds is cancelled and raises ``TimeoutError``
    (a hung server counts as unreachable).
    Connections are opened lazily, so this succeeds while the server is down; the first
    query reports it. Released connections are not reset (no ``RESET ALL``/``UNLISTEN *``
    round trip): the library's statements leave no session state behind, and neither may
    other users of this pool.
    """
    return await asyncpg.create_pool(
        libpq_dsn(database_url),
        min_size=0,
        max_size=max_size,
        init=_set_codecs,
        reset=_keep_session,
        statement_cache_size=statement_cache_size,
        timeout=connect_timeout,
        command_timeout=command_timeout,
        server_settings={
            "application_name": application_name[:63],
            **({"jit": "off"} if disable_jit else {}),
        },
    )


async def connect(
    database_url: str, *, application_name: str = "outbox", connect_timeout: float = 10.0
) -> Any:
    """One asyncpg connection with the same codecs (for LISTEN, which needs its own)."""
    conn = await asyncpg.connect(
        libpq_dsn(database_url),
        timeout=connect_timeout,
        statement_cache_size=0,
        server_settings={"application_name": application_name[:63]},
    )
    await _set_codecs(conn)
    return conn
