"""How the library runs a statement on whatever database handle the caller passed.

Worker-side calls take an ``AsyncEngine`` (each call is its own short transaction, committed
before it returns) or an ``AsyncConnection``/``AsyncSession`` (the call joins the caller's
transaction; it takes effect when the caller commits).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Executable
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

__all__ = ["AsyncDB", "Rows", "SyncDB", "fetch_all"]

AsyncDB = AsyncEngine | AsyncConnection | AsyncSession
"""An engine (own transaction per call) or a connection/session (the caller's transaction)."""

SyncDB = Connection | Session
"""A synchronous connection or session (the caller's transaction)."""


Rows = list[tuple[Any, ...]]


async def fetch_all(
    db: AsyncDB, statement: Executable, params: Mapping[str, Any] | None = None
) -> Rows:
    """Execute ``statement`` (which returns rows) and return all its rows as tuples.

    On an engine the statement runs in its own transaction, committed before returning.
    """
    if isinstance(db, AsyncEngine):
        async with db.begin() as conn:
            return await _fetch(conn, statement, params)
    return await _fetch(db, statement, params)


async def _fetch(
    db: AsyncConnection | AsyncSession,
    statement: Executable,
    params: Mapping[str, Any] | None,
) -> Rows:
    result = await db.execute(statement, params)
    return [tuple(row) for row in result.all()]
