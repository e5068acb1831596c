"""The reference preprocessing sidecar: parse a stored document into overlapping chunks.

A separate FastAPI process (``uvicorn sidecar.app:app`` or ``python -m sidecar``) that the
document worker calls with ``POST /internal/documents/{id}/parse``. It reads the reference
``documents`` table, extracts the text, splits it into chunks and replaces the document's
rows in ``document_chunks``, so a repeated call is harmless.
"""

from outbox.primitives.extras import require_extra

# Checked here, before any module of the sidecar, so that a missing one is named at start-up
# (pypdf, imported only on the first PDF, too); nothing is imported by the check.
require_extra("sidecar", "fastapi", "uvicorn", "pypdf")
