"""The sidecar's reads and writes on the reference documents tables (raw asyncpg)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from sidecar.chunking import Chunk

__all__ = ["StoredDocument", "load", "replace_chunks"]


@dataclass(frozen=True, slots=True)
class StoredDocument:
    user_id: str
    content_type: str
    content: bytes


async def load(db: Any, document_id: uuid.UUID) -> StoredDocument | None:
    """The document as it is now (no lock: extraction runs outside any transaction)."""
    row = await db.fetchrow(
        "SELECT user_id, content_type, content FROM documents WHERE id = $1", document_id
    )
    return None if row is None else StoredDocument(*row)


async def replace_chunks(conn: Any, document_id: uuid.UUID, chunks: Sequence[Chunk]) -> bool:
    """In the caller's transaction: replace the document's chunks with ``chunks``.

    Writers of one document queue on a transaction-scoped advisory lock (never on the
    document's row, which workers and the outbox trigger update). False, with nothing
    written, when the document no longer exists.
    """
    key = str(document_id)
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))", key)
    await conn.execute("DELETE FROM document_chunks WHERE document_id = $1", document_id)
    try:
        await conn.execute(
            "INSERT INTO document_chunks (document_id, ordinal, text, char_start, char_end)"
            " SELECT $1, c.ordinal - 1, c.text, c.char_start, c.char_end"
            " FROM unnest($2::text[], $3::int[], $4::int[]) WITH ORDINALITY"
            " AS c(text, char_start, char_end, ordinal)",
            document_id,
            [c.text for c in chunks],
            [c.start for c in chunks],
            [c.end for c in chunks],
        )
    except asyncpg.ForeignKeyViolationError:  # the document was deleted meanwhile
        return False
    return True
