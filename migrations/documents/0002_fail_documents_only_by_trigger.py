"""The trigger becomes the only writer of a document's ``failed``, with a reason that says why.

``documents_0001`` added a trigger on ``outbox``: when a ``document.preprocess.v1`` row
becomes ``dead`` its document becomes ``failed``. Until this revision the document worker
also wrote ``failed`` itself (with its own copy of the attempt policy) before acknowledging;
now it writes only ``processing`` and ``processed``, and every ``dead`` (the worker giving
a message up, its retry running out of attempts, the reaper finding a worker that died on
the last attempt, an operator's ``mark_dead`` or hand-written SQL) fails the document here,
in the same transaction, once.

This revision replaces the trigger's function (the trigger and its ``WHEN`` clause stay):

* ``processing_error`` is the row's ``error``; when the row has been attempted more than
  once it reads ``gave up after N attempts: <error>`` (``N`` is the row's ``attempts``; a
  message retried until its attempts ran out reads exactly that way, and so does one given
  up after earlier failed attempts, which is also true). A row that died without an error
  gets ``outbox message <id> is dead``.
* The payload is only trusted as far as it is valid: ``documentId`` must be a string that
  is a UUID (``->>`` of a non-object payload is ``NULL``), else no document is touched. The
  function never raises on a malformed payload: an error here would fail the
  acknowledgement that made the row ``dead``.
* Only a ``pending`` or ``processing`` document changes: a ``processed`` one stays.

Revision ID: documents_0002
Revises: documents_0001
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "documents_0002"
down_revision: str | None = "documents_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FAIL_ON_DEAD_PREPROCESS = r"""
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

FAIL_ON_DEAD_PREPROCESS_0001 = r"""
CREATE OR REPLACE FUNCTION documents_fail_on_dead_preprocess() RETURNS trigger
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
"""The function as ``documents_0001`` created it, for :func:`downgrade`."""


def upgrade() -> None:
    op.execute(FAIL_ON_DEAD_PREPROCESS)


def downgrade() -> None:
    op.execute(FAIL_ON_DEAD_PREPROCESS_0001)
