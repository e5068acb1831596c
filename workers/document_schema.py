"""The reference ``documents`` and ``document_chunks`` tables (SQLAlchemy Core).

The document worker only needs a table with an id, a status and (optionally) an error
column, which an application may already have (see the ``DOCUMENTS_*`` settings); these are
the tables the reference sidecar reads and writes, created by the ``documents`` branch of
the migrations (``outbox.storage.migrate.upgrade(url, documents=True)``).

``documents.content`` holds the uploaded bytes; ``content_type`` says how to read them
(``text/plain``, ``text/markdown``, ``text/html``, ``application/pdf``; a ``charset``
parameter is honoured). ``document_chunks`` holds the extracted text split into overlapping
chunks, ``ordinal`` from 0, with the character range each covers and room for an embedding.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, REAL, UUID

__all__ = ["DocumentStatus", "document_chunks", "documents", "documents_metadata"]


class DocumentStatus(StrEnum):
    """``pending`` -> ``processing`` -> ``processed`` | ``failed`` (see ``processing_error``)."""

    PENDING = "pending"
    PROCESSING = "processing"
    PROCESSED = "processed"
    FAILED = "failed"


_STATUS_VALUES = ", ".join(f"'{s.value}'" for s in DocumentStatus)

documents_metadata = MetaData()

documents = Table(
    "documents",
    documents_metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=func.gen_random_uuid()),
    Column("user_id", Text, nullable=False),
    Column("title", Text, nullable=False, server_default=text("''")),
    Column("content_type", Text, nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("processing_status", Text, nullable=False, server_default=text("'pending'")),
    Column("processing_error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(
        f"processing_status IN ({_STATUS_VALUES})", name="ck_documents_processing_status"
    ),
)
Index("ix_documents_user_id", documents.c.user_id)

document_chunks = Table(
    "document_chunks",
    documents_metadata,
    Column(
        "document_id",
        UUID(as_uuid=True),
        ForeignKey("documents.id", ondelete="CASCADE", name="fk_document_chunks_document_id"),
        primary_key=True,
    ),
    Column("ordinal", Integer, primary_key=True),
    Column("text", Text, nullable=False),
    Column("char_start", Integer, nullable=False),
    Column("char_end", Integer, nullable=False),
    Column("embedding", ARRAY(REAL), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("ordinal >= 0", name="ck_document_chunks_ordinal_nonnegative"),
    CheckConstraint("char_start >= 0 AND char_end >= char_start", name="ck_document_chunks_range"),
)
