"""The reference documents schema: ``documents`` and ``document_chunks``.

Its own branch (label ``documents``, in its own folder), so the outbox's migrations never
create it in an application that has documents of its own. Run it with
``outbox.storage.migrate.upgrade(url, documents=True)`` or, from the repository root,
``alembic upgrade heads``. Defined in ``workers.document_schema``.

It also adds a trigger on ``outbox``: when a ``document.preprocess.v1`` row becomes
``dead``, by whoever marks it (the document worker giving up, or any worker's reaper after
a worker died during the last attempt), its document becomes ``failed`` with the row's
error, in the same transaction. The WHEN clause is evaluated in C for each updated row and
fires the function only for those rows, so other acknowledgements pay next to nothing.

Revision ID: documents_0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "documents_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("documents",)
depends_on: str | Sequence[str] | None = ("outbox_0001",)


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column(
            "id",
            postgresql.UUID(as_uuid=True),
            server_default=sa.func.gen_random_uuid(),
            nullable=False,
        ),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("content_type", sa.Text(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column(
            "processing_status", sa.Text(), server_default=sa.text("'pending'"), nullable=False
        ),
        sa.Column("processing_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "processing_status IN ('pending', 'processing', 'processed', 'failed')",
            name="ck_documents_processing_status",
        ),
        sa.PrimaryKeyConstraint("id", name="documents_pkey"),
    )
    op.create_index("ix_documents_user_id", "documents", ["user_id"])
    op.create_table(
        "document_chunks",
        sa.Column("document_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("char_start", sa.Integer(), nullable=False),
        sa.Column("char_end", sa.Integer(), nullable=False),
        sa.Column("embedding", postgresql.ARRAY(postgresql.REAL()), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint("ordinal >= 0", name="ck_document_chunks_ordinal_nonnegative"),
        sa.CheckConstraint(
            "char_start >= 0 AND char_end >= char_start", name="ck_document_chunks_range"
        ),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["documents.id"],
            name="fk_document_chunks_document_id",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("document_id", "ordinal", name="document_chunks_pkey"),
    )
    op.execute(
        r"""
        CREATE FUNCTION documents_fail_on_dead_preprocess() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.payload->>'documentId'
                    ~* '^[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}$' THEN
                UPDATE documents
                   SET processing_status = 'failed',
                       processing_error = NEW.error,
                       updated_at = now()
                 WHERE id = (NEW.payload->>'documentId')::uuid
                   AND processing_status IN ('pending', 'processing');
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER documents_fail_on_dead_preprocess
        AFTER UPDATE OF status ON outbox
        FOR EACH ROW
        WHEN (NEW.status = 'dead' AND OLD.status <> 'dead'
              AND NEW.type = 'document.preprocess.v1')
        EXECUTE FUNCTION documents_fail_on_dead_preprocess()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER documents_fail_on_dead_preprocess ON outbox")
    op.execute("DROP FUNCTION documents_fail_on_dead_preprocess()")
    op.drop_table("document_chunks")
    op.drop_table("documents")
