"""The sidecar's HTTP API (FastAPI): ``POST /internal/documents/{id}/parse``, ``GET /healthz``.

``uvicorn sidecar.app:app`` reads :class:`~sidecar.settings.SidecarSettings` from the
environment at start-up; ``create_app(settings)`` builds an app with given settings.

Answers: 200 with a :class:`ParseSummary`; 401 without ``Authorization: Bearer
<SIDECAR_TOKEN>``; 404 for an unknown document; 403 when it belongs to another user; 422
for a malformed request or a document whose content cannot be read (the ``detail`` says
why); 503 with ``Retry-After`` while the database is unreachable. Bad input never gets a 500.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from outbox.errors import ConfigurationError
from outbox.logs import log_event
from outbox.pgpool import create_pool
from outbox.settings import load_settings
from sidecar.chunking import Chunk, split
from sidecar.extract import UnreadableDocumentError, extract_text, media_type
from sidecar.settings import SidecarSettings
from sidecar.store import load_for_update, replace_chunks

__all__ = ["ParseRequest", "ParseSummary", "app", "create_app"]

log = logging.getLogger("sidecar")

DATABASE_DOWN = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,
)
"""Errors that mean "the database is unreachable right now" (answered with 503)."""


class ParseRequest(BaseModel):
    """The body the document worker sends."""

    model_config = ConfigDict(extra="ignore")
    userId: Annotated[str, Field(min_length=1, max_length=200)] | StrictInt


class ParseSummary(BaseModel):
    documentId: uuid.UUID
    chunks: int
    characters: int
    contentType: str


def _reject(status: int, reason: str, document_id: uuid.UUID | None = None) -> HTTPException:
    log_event(log, logging.INFO, "parse.rejected", id=document_id, status=status, error=reason)
    return HTTPException(status, reason)


_bearer = HTTPBearer(auto_error=False)


async def _require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    expected = request.app.state.settings.sidecar_token.get_secret_value().encode()
    given = b"" if credentials is None else credentials.credentials.encode()
    if not secrets.compare_digest(given, expected):
        error = _reject(401, "missing or wrong bearer token")
        error.headers = {"WWW-Authenticate": "Bearer"}
        raise error


def _chunks(
    content: bytes, content_type: str, settings: SidecarSettings
) -> tuple[str, list[Chunk]]:
    text = extract_text(content, content_type)
    return text, split(text, size=settings.chunk_size, overlap=settings.chunk_overlap)


router = APIRouter(prefix="/internal", dependencies=[Depends(_require_token)])


@router.post("/documents/{document_id}/parse")
async def parse_document(
    document_id: uuid.UUID,
    body: ParseRequest,
    request: Request,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> ParseSummary:
    """Extract, chunk and store the document's text, replacing earlier chunks."""
    settings: SidecarSettings = request.app.state.settings
    started = time.perf_counter()
    async with request.app.state.pool.acquire() as conn, conn.transaction():
        document = await load_for_update(conn, document_id)
        if document is None:
            raise _reject(404, f"document {document_id} does not exist", document_id)
        if document.user_id != str(body.userId):
            raise _reject(403, f"document {document_id} belongs to another user", document_id)
        if len(document.content) > settings.max_document_bytes:
            raise _reject(
                422,
                f"document is {len(document.content)} bytes, over MAX_DOCUMENT_BYTES"
                f" ({settings.max_document_bytes})",
                document_id,
            )
        try:
            text, chunks = await anyio.to_thread.run_sync(
                _chunks, bytes(document.content), document.content_type, settings
            )
        except UnreadableDocumentError as exc:
            raise _reject(422, str(exc), document_id) from None
        await replace_chunks(conn, document_id, chunks)
    log_event(
        log,
        logging.INFO,
        "document.parsed",
        id=document_id,
        chunks=len(chunks),
        characters=len(text),
        idempotency_key=idempotency_key,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    return ParseSummary(
        documentId=document_id,
        chunks=len(chunks),
        characters=len(text),
        contentType=media_type(document.content_type)[0],
    )


async def _healthz(request: Request) -> JSONResponse:
    try:
        with anyio.fail_after(2):
            await request.app.state.pool.fetchval("SELECT 1")
    except (*DATABASE_DOWN, asyncpg.PostgresError) as exc:
        return JSONResponse({"status": "unavailable", "error": f"database: {exc}"}, 503)
    return JSONResponse({"status": "ok"})


async def _database_down(request: Request, exc: Exception) -> JSONResponse:
    log_event(log, logging.WARNING, "database.unavailable", error=f"{type(exc).__name__}: {exc}")
    return JSONResponse(
        {"detail": "database unavailable, retry later"}, 503, headers={"Retry-After": "1"}
    )


def create_app(settings: SidecarSettings | None = None) -> FastAPI:
    """The sidecar app; ``settings=None`` reads them from the environment at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            s = settings or load_settings(SidecarSettings)
        except ConfigurationError as exc:
            logging.getLogger("uvicorn.error").error("sidecar: %s", exc)
            raise
        app.state.settings = s
        app.state.pool = await create_pool(
            s.database_url,
            max_size=10,
            application_name="outbox-sidecar",
            command_timeout=s.database_timeout_seconds,
        )
        try:
            yield
        finally:
            await app.state.pool.close()

    app = FastAPI(title="outbox reference preprocessing sidecar", lifespan=lifespan)
    app.include_router(router)
    app.add_api_route("/healthz", _healthz, methods=["GET"], include_in_schema=False)
    handler: Any = _database_down
    for error in DATABASE_DOWN:
        app.add_exception_handler(error, handler)
    return app


app = create_app()
