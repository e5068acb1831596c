"""The reference preprocessing sidecar: parse a stored document into overlapping chunks.

A separate FastAPI process (``uvicorn sidecar.app:app`` or ``python -m sidecar``) that the
document worker calls with ``POST /internal/documents/{id}/parse``. It reads the reference
``documents`` table, extracts the text, splits it into chunks and replaces the document's
rows in ``document_chunks``, so a repeated call is harmless.
"""
