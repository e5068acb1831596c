"""A ``document.preprocess.v1`` message without a key is keyed by its document.

The document worker claims in key order (``ORDERING=key``): one batch per key in flight, in
order. Keyed by document, two messages for one document are never processed at once (a
re-process request cannot race an earlier one and leave the older status). A ``BEFORE
INSERT`` trigger sets ``key`` to the payload's ``documentId`` when the producer gave no
key, however the row is written (``enqueue``, hand-written SQL, an older producer); a key
the producer gave is kept. Pending rows written before this revision are keyed the same way.

Revision ID: documents_0004
Revises: documents_0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "documents_0004"
down_revision: str | None = "documents_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEY_BY_DOCUMENT = r"""
CREATE OR REPLACE FUNCTION documents_key_preprocess_by_document() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF jsonb_typeof(NEW.payload->'documentId') = 'string'
            AND octet_length(NEW.payload->>'documentId') <= 200 THEN
        NEW.key := NEW.payload->>'documentId';
    END IF;
    RETURN NEW;
END
$$
"""


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '10s'")
    op.execute(_KEY_BY_DOCUMENT)
    op.execute("DROP TRIGGER IF EXISTS documents_key_preprocess_by_document ON outbox")
    op.execute(
        """
        CREATE TRIGGER documents_key_preprocess_by_document
        BEFORE INSERT ON outbox
        FOR EACH ROW WHEN (NEW.type = 'document.preprocess.v1' AND NEW.key IS NULL)
        EXECUTE FUNCTION documents_key_preprocess_by_document()
        """
    )
    op.execute(
        """
        UPDATE outbox SET key = payload->>'documentId'
         WHERE type = 'document.preprocess.v1' AND key IS NULL AND status = 'pending'
           AND jsonb_typeof(payload->'documentId') = 'string'
           AND octet_length(payload->>'documentId') <= 200
        """
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '10s'")
    op.execute("DROP TRIGGER IF EXISTS documents_key_preprocess_by_document ON outbox")
    op.execute("DROP FUNCTION IF EXISTS documents_key_preprocess_by_document()")
