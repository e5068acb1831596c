"""The sidecar's HTTP API (FastAPI): ``POST /internal/documents/{id}/parse``, ``GET /healthz``.

``uvicorn sidecar.app:app`` reads :class:`~sidecar.settings.SidecarSettings` from the
environment at start-up; ``create_app(settings)`` builds an app with given settings.

Answers: 200 with a :class:`ParseSummary`; 401 without ``Authorization: Bearer
<SIDECAR_TOKEN>`` (checked before anything else under ``/internal/``); 404 for an unknown
document; 403 when it belongs to another user; 422 for a malformed request or a document
whose content cannot be read (the ``detail`` says why); 503 with ``Retry-After`` while the
database is unreachable. Bad input never gets a 500. ``GET /internal/ping`` lets a caller
check its token.

A parse reads the document without locking it, extracts the text under
``PARSE_TIMEOUT_SECONDS`` (in a killable worker process unless it is a small text document,
see :data:`INLINE_TEXT_BYTES`), then replaces the chunks in one short transaction.
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
import anyio.to_process
import asyncpg
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.types import ASGIApp, Receive, Scope, Send

from outbox.primitives.errors import ConfigurationError
from outbox.primitives.logs import log_event
from outbox.runtime.settings import load_settings
from outbox.storage.pool import UNREACHABLE_ERRORS, create_pool
from sidecar.extract import UnreadableDocumentError, media_type
from sidecar.parsing import parse
from sidecar.settings import SidecarSettings
from sidecar.store import load, replace_chunks

__all__ = ["ParseRequest", "ParseSummary", "app", "create_app"]

log = logging.getLogger("sidecar")


class ParseRequest(BaseModel):
    """The body the document worker sends."""

    model_config = ConfigDict(extra="ignore")
    userId: Annotated[str, Field(min_length=1, max_length=200)] | StrictInt


class ParseSummary(BaseModel):
    documentId: uuid.UUID
    chunks: int
    characters: int
    contentType: str


INLINE_TEXT_BYTES = 16 * 1024
"""Text documents up to this size are extracted on a thread of the server process: even the
standard HTML parser's quadratic worst case stays under a few hundred milliseconds there,
and a process round trip would cost more than the work. Larger ones, and every PDF, go to
a worker process that the deadline can kill."""


def _small_text(content_type: str, size: int) -> bool:
    return size <= INLINE_TEXT_BYTES and media_type(content_type)[0].startswith("text/")


def _reject(status: int, reason: str, document_id: uuid.UUID | None = None) -> HTTPException:
    log_event(log, logging.INFO, "parse.rejected", id=document_id, status=status, error=reason)
    return HTTPException(status, reason)


async def parse_document(
    document_id: uuid.UUID,
    body: ParseRequest,
    request: Request,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> ParseSummary:
    """Extract, chunk and store the document's text, replacing earlier chunks."""
    settings: SidecarSettings = request.app.state.settings
    pool = request.app.state.pool
    started = time.perf_counter()
    document = await load(pool, document_id)
    if document is None:
        raise _reject(404, f"document {document_id} does not exist", document_id)
    if document.user_id != str(body.userId):
        raise _reject(403, f"document {document_id} belongs to another user", document_id)
    size = len(document.content)
    if size > settings.max_document_bytes:
        limit = settings.max_document_bytes
        raise _reject(422, f"document is {size} bytes, over MAX_DOCUMENT_BYTES ({limit})")
    arguments = (
        bytes(document.content),
        document.content_type,
        settings.chunk_size,
        settings.chunk_overlap,
    )
    try:
        with anyio.fail_after(settings.parse_timeout_seconds):
            if _small_text(document.content_type, size):
                characters, chunks = await anyio.to_thread.run_sync(parse, *arguments)
            else:  # the deadline kills the worker process
                characters, chunks = await anyio.to_process.run_sync(
                    parse, *arguments, cancellable=True
                )
    except UnreadableDocumentError as exc:
        raise _reject(422, str(exc), document_id) from None
    except TimeoutError:
        limit_s = f"{settings.parse_timeout_seconds:g}"
        reason = f"extracting the text took longer than PARSE_TIMEOUT_SECONDS ({limit_s} s)"
        raise _reject(422, reason, document_id) from None
    async with pool.acquire() as conn, conn.transaction():
        if not await replace_chunks(conn, document_id, chunks):
            raise _reject(404, f"document {document_id} was deleted meanwhile", document_id)
    log_event(
        log,
        logging.INFO,
        "document.parsed",
        id=document_id,
        chunks=len(chunks),
        characters=characters,
        idempotency_key=idempotency_key,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    return ParseSummary(
        documentId=document_id,
        chunks=len(chunks),
        characters=characters,
        contentType=media_type(document.content_type)[0],
    )


async def ping() -> dict[str, str]:
    """200 when the caller's token is right (the bearer check runs before this)."""
    return {"status": "ok"}


async def healthz(request: Request) -> JSONResponse:
    try:
        with anyio.fail_after(2):
            await request.app.state.pool.fetchval("SELECT 1")
    except (*UNREACHABLE_ERRORS, asyncpg.PostgresError) as exc:
        return JSONResponse({"status": "unavailable", "error": f"database: {exc}"}, 503)
    return JSONResponse({"status": "ok"})


class BearerTokenGuard:
    """ASGI middleware: 401 for any ``/internal/`` request without the right bearer token,
    before the body is read or validated."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/internal/"):
            given = b""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    given = value
            scheme, _, token = given.partition(b" ")
            settings: SidecarSettings = scope["app"].state.settings
            expected = settings.sidecar_token.get_secret_value().encode()
            if scheme.lower() != b"bearer" or not secrets.compare_digest(token.strip(), expected):
                _reject(401, "missing or wrong bearer token")
                response = JSONResponse(
                    {"detail": "missing or wrong bearer token"},
                    401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """422 listing each problem's place and message, without echoing the input back."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
    return JSONResponse({"detail": detail}, 422)


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
        # Start one extraction process now, so the first request's deadline is not spent
        # on starting Python.
        await anyio.to_process.run_sync(parse, b"ready", "text/plain", 100, 0)
        try:
            yield
        finally:
            await app.state.pool.close()

    app = FastAPI(title="outbox reference preprocessing sidecar", lifespan=lifespan)
    app.add_api_route("/internal/documents/{document_id}/parse", parse_document, methods=["POST"])
    app.add_api_route("/internal/ping", ping, methods=["GET"])
    app.add_api_route("/healthz", healthz, methods=["GET"], include_in_schema=False)
    app.add_middleware(BearerTokenGuard)
    handler: Any = _database_down
    for error in UNREACHABLE_ERRORS:
        app.add_exception_handler(error, handler)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    return app


app = create_app()
