"""The sidecar's reads and writes on the reference documents tables (raw asyncpg)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.chunking import Chunk

__all__ = ["StoredDocument", "load_for_update", "replace_chunks"]


@dataclass(frozen=True, slots=True)
class StoredDocument:
    user_id: str
    content_type: str
    content: bytes


async def load_for_update(conn: Any, document_id: uuid.UUID) -> StoredDocument | None:
    """The document, row-locked until the transaction ends (parses of one document queue)."""
    row = await conn.fetchrow(
        "SELECT user_id, content_type, content FROM documents WHERE id = $1 FOR UPDATE",
        document_id,
    )
    return None if row is None else StoredDocument(*row)


async def replace_chunks(conn: Any, document_id: uuid.UUID, chunks: Sequence[Chunk]) -> None:
    """Delete the document's chunks and insert ``chunks`` (ordinals from 0), two statements."""
    await conn.execute("DELETE FROM document_chunks WHERE document_id = $1", document_id)
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
