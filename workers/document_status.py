"""Status tracking on the application's documents table, named by settings.

The document worker moves a document ``pending -> processing -> processed``, clearing its
error column on each move; it never writes ``failed``. That is the database's job: the
``documents`` migration branch's trigger fails the document, with the reason, when its
outbox message becomes ``dead`` (see :mod:`workers.document`).

The table and its columns come from ``DOCUMENTS_TABLE`` (``schema.table`` allowed),
``DOCUMENTS_ID_COLUMN`` (a ``uuid``), ``DOCUMENTS_STATUS_COLUMN``, and the optional
``DOCUMENTS_ERROR_COLUMN`` and ``DOCUMENTS_UPDATED_AT_COLUMN`` (empty: not written), so an
application with its own documents table only needs a text status column. Each change is
one autocommitted statement on the worker's own small pool.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from outbox.storage.pool import create_pool

__all__ = ["IDENTIFIER", "DocumentColumns", "DocumentStatusStore"]

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
"""A plain SQL identifier (quoted in the statements, so case is kept)."""


def _quoted(name: str) -> str:
    if not IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return f'"{name}"'


@dataclass(frozen=True, slots=True)
class DocumentColumns:
    """Where a document's status lives. Optional columns are ``""`` when absent."""

    table: str = "documents"
    id: str = "id"
    status: str = "processing_status"
    error: str = "processing_error"
    updated_at: str = "updated_at"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first name that is not a plain identifier."""
        if not (self.table and self.id and self.status):
            raise ValueError("the table, id column and status column must be named")
        for part in self.table.split("."):
            _quoted(part)
        if self.table.count(".") > 1:
            raise ValueError(f"expected table or schema.table: {self.table!r}")
        for name in (self.id, self.status, self.error, self.updated_at):
            if name:
                _quoted(name)


def _statements(c: DocumentColumns) -> tuple[str, str]:
    table = ".".join(_quoted(part) for part in c.table.split("."))
    sets = [f"{_quoted(c.status)} = $2"]
    if c.error:
        sets.append(f"{_quoted(c.error)} = NULL")
    if c.updated_at:
        sets.append(f"{_quoted(c.updated_at)} = now()")
    # Every name is a validated, quoted identifier; values are parameters.
    update = (
        f"UPDATE {table} SET {', '.join(sets)} WHERE {_quoted(c.id)} = $1"  # noqa: S608
        " RETURNING 1"
    )
    columns = ", ".join(_quoted(n) for n in (c.id, c.status, c.error, c.updated_at) if n)
    probe = f"SELECT {columns} FROM {table} LIMIT 0"  # noqa: S608
    return update, probe


class DocumentStatusStore:
    """``set_status`` on the configured table; :meth:`check` proves the columns exist."""

    def __init__(
        self,
        database_url: str,
        columns: DocumentColumns,
        *,
        max_connections: int,
        timeout: float,
        prepared_statements: bool = True,
    ) -> None:
        columns.validate()
        self.columns = columns
        self._update, self._probe = _statements(columns)
        self._database_url = database_url
        self._pool_options: dict[str, Any] = {
            "max_size": max_connections,
            "application_name": "outbox document status",
            "statement_cache_size": 100 if prepared_statements else 0,
            "command_timeout": timeout,
        }
        self._pool: Any = None

    async def _connections(self) -> Any:
        if self._pool is None:
            self._pool = await create_pool(self._database_url, **self._pool_options)
        return self._pool

    async def check(self) -> None:
        """Raise (naming the table) unless the table and every configured column exist."""
        pool = await self._connections()
        try:
            await pool.fetch(self._probe)
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as exc:
            raise RuntimeError(
                f"documents table {self.columns.table!r}: {exc} (run the documents migrations,"
                " or set DOCUMENTS_TABLE and the DOCUMENTS_*_COLUMN settings)"
            ) from exc

    async def set_status(self, document_id: uuid.UUID, status: str) -> bool:
        """Set the document's status and clear its error; False if there is no such row."""
        pool = await self._connections()
        return await pool.fetchval(self._update, document_id, status) is not None

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
