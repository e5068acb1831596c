"""The trigger fails a document only for a message of the document's own user.

``documents_0002``'s trigger failed the document a dead ``document.preprocess.v1`` row
named, whoever the row said it was for: a message naming user A's document with user B's
``userId`` (or none at all) failed A's document when it died. This revision replaces the
trigger's function (the trigger and its ``WHEN`` clause stay) so that the document changes
only when the payload's ``userId`` is a JSON string or number whose text (``->>``) equals
the document's ``user_id`` -- the same test the document worker makes before it writes
``processing`` (``str(userId)``) and the sidecar before it parses. Any other dead message
leaves the document as it is; its reason stays on the outbox row. The rest is as in
``documents_0002``: ``documentId`` must be a UUID string, only a ``pending`` or
``processing`` document changes, the reason reads ``gave up after N attempts: ...`` after
more than one attempt, and the function never raises on a malformed payload.

Revision ID: documents_0003
Revises: documents_0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "documents_0003"
down_revision: str | None = "documents_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FAIL_ON_DEAD_PREPROCESS = r"""
CREATE OR REPLACE FUNCTION documents_fail_on_dead_preprocess() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    document_id text := NEW.payload->>'documentId';
    message_user text := NEW.payload->>'userId';
    reason text := coalesce(NEW.error, 'outbox message ' || NEW.id || ' is dead');
BEGIN
    IF document_id IS NULL
            OR document_id !~* '^[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}$'
            OR coalesce(jsonb_typeof(NEW.payload->'userId'), '') NOT IN ('string', 'number') THEN
        RETURN NULL;
    END IF;
    IF NEW.attempts > 1 THEN
        reason := 'gave up after ' || NEW.attempts || ' attempts: ' || reason;
    END IF;
    UPDATE documents
       SET processing_status = 'failed',
           processing_error = reason,
           updated_at = now()
     WHERE id = document_id::uuid
       AND user_id = message_user
       AND processing_status IN ('pending', 'processing');
    RETURN NULL;
END
$$
"""

FAIL_ON_DEAD_PREPROCESS_0002 = r"""
CREATE OR REPLACE FUNCTION documents_fail_on_dead_preprocess() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    document_id text := NEW.payload->>'documentId';
    reason text := coalesce(NEW.error, 'outbox message ' || NEW.id || ' is dead');
BEGIN
    IF document_id IS NULL
            OR document_id !~* '^[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}$' THEN
        RETURN NULL;
    END IF;
    IF NEW.attempts > 1 THEN
        reason := 'gave up after ' || NEW.attempts || ' attempts: ' || reason;
    END IF;
    UPDATE documents
       SET processing_status = 'failed',
           processing_error = reason,
           updated_at = now()
     WHERE id = document_id::uuid
       AND processing_status IN ('pending', 'processing');
    RETURN NULL;
END
$$
"""
"""The function as ``documents_0002`` created it, for :func:`downgrade`."""


def upgrade() -> None:
    op.execute(FAIL_ON_DEAD_PREPROCESS)


def downgrade() -> None:
    op.execute(FAIL_ON_DEAD_PREPROCESS_0002)
