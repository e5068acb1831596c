"""How the library runs a statement on whatever database handle the caller passed.

Worker-side calls take an ``AsyncEngine`` (each call is its own short transaction, committed
before it returns) or an ``AsyncConnection``/``AsyncSession`` (the call joins the caller's
transaction; it takes effect when the caller commits). They also take a raw asyncpg
``Pool`` (autocommit: each statement is its own transaction) or ``Connection`` (whatever
transaction it is in): the worker runtime's hot path, which skips SQLAlchemy's execution
layer. The same Core statements run on both; for asyncpg they are compiled once to ``$n``
SQL and cached. Raw asyncpg handles need the JSON codecs of :func:`outbox.storage.pool.create_pool`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
from sqlalchemy import Executable
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement

__all__ = ["AsyncDB", "AsyncpgHandle", "Rows", "SyncDB", "execute_alone", "fetch_all"]


class AsyncpgHandle(Protocol):
    """An asyncpg ``Pool`` or ``Connection`` (from :func:`outbox.storage.pool.create_pool`,
    which installs the JSON codecs the statements rely on)."""

    async def fetch(self, query: str, *args: Any) -> list[Any]: ...

    async def execute(self, query: str, *args: Any) -> str: ...


AsyncDB = AsyncEngine | AsyncConnection | AsyncSession | AsyncpgHandle
"""An engine (own transaction per call), a connection/session (the caller's transaction), or
an asyncpg pool or connection (:class:`AsyncpgHandle`)."""

SyncDB = Connection | Session
"""A synchronous connection or session (the caller's transaction)."""


Rows = list[Any]
"""Result rows: tuples, or asyncpg ``Record`` objects (which index and unpack alike)."""


async def fetch_all(
    db: AsyncDB, statement: Executable, params: Mapping[str, Any] | None = None
) -> Rows:
    """Execute ``statement`` (which returns rows) and return all its rows as tuples.

    On an engine the statement runs in its own transaction, committed before returning.
    """
    if isinstance(db, AsyncEngine):
        async with db.begin() as conn:
            return await _fetch(conn, statement, params)
    if isinstance(db, AsyncConnection | AsyncSession):
        return await _fetch(db, statement, params)
    compiled = _compiled(statement)
    records: Rows = await db.fetch(compiled.sql, *compiled.arguments(params or {}))
    return records  # asyncpg Records index and unpack like tuples


async def execute_alone(db: AsyncDB, *statements: str) -> bool:
    """Run fixed SQL texts that return no rows (maintenance such as ``ANALYZE``) in one
    transaction of their own; ``False`` (nothing run) when ``db`` is the caller's
    transaction (a connection or session, or an asyncpg connection inside a transaction),
    which maintenance must not hold or abort."""
    if isinstance(db, AsyncEngine):
        async with db.begin() as conn:
            for statement in statements:
                await conn.exec_driver_sql(statement)
        return True
    if isinstance(db, AsyncConnection | AsyncSession):
        return False
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            return await execute_alone(conn, *statements)
    if not isinstance(db, asyncpg.Connection):
        raise TypeError(f"not a database handle: {type(db).__name__}")
    if db.is_in_transaction():
        return False
    async with db.transaction():
        for statement in statements:
            await db.execute(statement)
    return True


async def _fetch(
    db: AsyncConnection | AsyncSession,
    statement: Executable,
    params: Mapping[str, Any] | None,
) -> Rows:
    result = await db.execute(statement, params)
    return [tuple(row) for row in result.all()]


@dataclass(frozen=True, slots=True)
class _AsyncpgStatement:
    """A Core statement as asyncpg SQL: ``$n`` placeholders in ``order``, with constants."""

    sql: str
    order: tuple[str, ...]
    constants: Mapping[str, Any]

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        try:
            return [params[n] if n in params else self.constants[n] for n in self.order]
        except KeyError as missing:
            raise TypeError(f"missing statement parameter {missing}") from None


_DIALECT = PGDialect_asyncpg()  # type: ignore[no-untyped-call]


@functools.lru_cache(maxsize=512)
def _compiled(statement: ClauseElement) -> _AsyncpgStatement:
    """Compile once per statement object (the templates in ``outbox.storage.statements`` are fixed).

    Only sequence-to-list bind processors exist for these statements, and asyncpg takes
    lists and tuples alike, so values pass through untouched.
    """
    compiled: Any = statement.compile(dialect=_DIALECT)  # a SQLCompiler
    order = tuple(compiled.positiontup or ())
    constants = {
        name: bind.effective_value
        for name, bind in compiled.binds.items()
        if name in order and not bind.required
    }
    return _AsyncpgStatement(str(compiled), order, constants)
