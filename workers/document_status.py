"""Status tracking on the application's documents table, named by settings.

The document worker moves a document ``pending -> processing -> processed``, clearing its
error column on each move, and only when the message's ``userId`` owns the document (the
text of the user column equals it); it never writes ``failed``. That is the database's job: the
``documents`` migration branch's trigger fails the document, with the reason, when its
outbox message becomes ``dead`` (see :mod:`workers.document`).

The table and its columns come from ``DOCUMENTS_TABLE`` (``schema.table`` allowed),
``DOCUMENTS_ID_COLUMN`` (a ``uuid``), ``DOCUMENTS_STATUS_COLUMN``, ``DOCUMENTS_USER_ID_COLUMN``
(compared as text; empty: ownership is not checked here) and the optional
``DOCUMENTS_ERROR_COLUMN`` and ``DOCUMENTS_UPDATED_AT_COLUMN`` (empty: not written), so an
application with its own documents table only needs a text status column. Each change is
one autocommitted statement on the worker's own small pool.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import asyncpg

from outbox.storage.pool import create_pool

__all__ = ["IDENTIFIER", "DocumentColumns", "DocumentStatusStore", "StatusWrite"]

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
    user_id: str = "user_id"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first name that is not a plain identifier."""
        if not (self.table and self.id and self.status):
            raise ValueError("the table, id column and status column must be named")
        for part in self.table.split("."):
            _quoted(part)
        if self.table.count(".") > 1:
            raise ValueError(f"expected table or schema.table: {self.table!r}")
        for name in (self.id, self.status, self.error, self.updated_at, self.user_id):
            if name:
                _quoted(name)


class StatusWrite(StrEnum):
    """What :meth:`DocumentStatusStore.set_status` did."""

    WRITTEN = "written"
    NO_SUCH_DOCUMENT = "no such document"
    OTHER_OWNER = "another user's document"


def _statements(c: DocumentColumns) -> tuple[str, str]:
    table = ".".join(_quoted(part) for part in c.table.split("."))
    key = _quoted(c.id)
    sets = [f"{_quoted(c.status)} = $2"]
    if c.error:
        sets.append(f"{_quoted(c.error)} = NULL")
    if c.updated_at:
        sets.append(f"{_quoted(c.updated_at)} = now()")
    # Every name is a validated, quoted identifier; values are parameters. One statement:
    # no row when there is no such document, else whether $3 owns it (and then the update).
    # With no user column $3 is still typed, and owns every document.
    owned = f"{_quoted(c.user_id)}::text = $3" if c.user_id else "$3::text IS NOT NULL"
    update = (
        f"WITH d AS (SELECT {key} AS doc_id, {owned} AS owned"  # noqa: S608
        f" FROM {table} WHERE {key} = $1),"
        f" u AS (UPDATE {table} AS t SET {', '.join(sets)}"
        f" FROM d WHERE t.{key} = d.doc_id AND d.owned RETURNING 1)"
        " SELECT owned FROM d"
    )
    columns = ", ".join(_quoted(n) for n in (c.id, c.status, c.error, c.updated_at, c.user_id) if n)
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

    async def set_status(self, document_id: uuid.UUID, status: str, user_id: str) -> StatusWrite:
        """Set the document's status and clear its error if it exists and ``user_id`` owns
        it (one statement); otherwise write nothing and say which it was not."""
        pool = await self._connections()
        owned = await pool.fetchval(self._update, document_id, status, user_id)
        if owned is None:
            return StatusWrite.NO_SUCH_DOCUMENT
        return StatusWrite.WRITTEN if owned else StatusWrite.OTHER_OWNER

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
