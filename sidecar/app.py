"""The sidecar's HTTP API (FastAPI): ``POST /internal/documents/{id}/parse``, health.

``uvicorn sidecar.app:app`` reads :class:`~sidecar.settings.SidecarSettings` from the
environment at start-up; ``create_app(settings)`` builds an app with given settings.

Answers: 200 with a :class:`ParseSummary`; 401 without ``Authorization: Bearer
<SIDECAR_TOKEN>`` (checked before anything else under ``/internal/``); 413 for a body over
``MAX_REQUEST_BYTES`` (refused before it is read); 404 for an unknown document; 403 when it
belongs to another user; 422 for a malformed request or a document whose content cannot be
read (the ``detail`` says why); 503 with ``Retry-After`` while the database cannot serve us:
unreachable, refusing our login (a ``NOLOGIN`` role, a wrong password, a missing database),
missing the tables or denying us privileges (see :func:`dependency_down`). Bad input never
gets a 500.

``GET /healthz`` (no token) answers 200 ``{"status": "ok"}`` or 503 ``{"status":
"unavailable"}`` and nothing more; ``GET /internal/health`` (token) says why;
``GET /internal/ping`` lets a caller check its token. ``/docs``, ``/redoc`` and
``/openapi.json`` exist only with ``SIDECAR_API_DOCS=true``.

A parse reads the document without locking it, extracts the text in a worker process that
``PARSE_TIMEOUT_SECONDS`` kills (every document, whatever its type or size; the deadline
starts when a process takes the document up, not while it waits for a free one), then
replaces the chunks in one short transaction.
"""

from __future__ import annotations

import contextlib
import logging
import math
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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from outbox.primitives.errors import ConfigurationError, error_text
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


UNLIMITED = anyio.CapacityLimiter(math.inf)
"""Handed to ``anyio.to_process`` so that it never queues: the app's own limiter already did,
outside the deadline."""

DEPENDENCY_SQLSTATE_CLASSES = frozenset({"08", "28", "3D", "3F", "53", "57", "58"})
"""Connection exceptions, refused logins, a missing database or schema, exhausted
resources, operator intervention (a shutdown), system errors."""
DEPENDENCY_SQLSTATES = frozenset({"42501", "42P01", "42703", "42883", "25006"})
"""Insufficient privilege, a missing table, column or function (not migrated), a read-only
server (a standby)."""


def dependency_down(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot serve the sidecar now, whatever the request:
    an outage (503, the caller retries later), not a fault of this request or a bug."""
    if isinstance(exc, UNREACHABLE_ERRORS):
        return True
    state = getattr(exc, "sqlstate", None) if isinstance(exc, asyncpg.PostgresError) else None
    return isinstance(state, str) and (
        state in DEPENDENCY_SQLSTATES or state[:2] in DEPENDENCY_SQLSTATE_CLASSES
    )


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
        async with request.app.state.extractors:  # wait for a free process, then the deadline
            try:
                with anyio.fail_after(settings.parse_timeout_seconds):  # kills the process
                    characters, chunks = await anyio.to_process.run_sync(
                        parse, *arguments, cancellable=True, limiter=UNLIMITED
                    )
            except TimeoutError:
                with contextlib.suppress(Exception):  # the next one starts it otherwise
                    await _start_extractor()  # so the next document's deadline is not spent on it
                raise
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


async def _start_extractor() -> None:
    """Make sure an idle extraction process is ready (starting one costs a fraction of a
    second, which a deadline should not pay)."""
    await anyio.to_process.run_sync(parse, b"ready", "text/plain", 100, 0, limiter=UNLIMITED)


async def ping() -> dict[str, str]:
    """200 when the caller's token is right (the bearer check runs before this)."""
    return {"status": "ok"}


async def _database_problem(request: Request) -> str | None:
    """``None`` when the database answers a query on the documents table, else why not."""
    try:
        with anyio.fail_after(2):
            await request.app.state.pool.fetchval("SELECT 1 FROM documents LIMIT 1")
    except (*UNREACHABLE_ERRORS, asyncpg.PostgresError) as exc:
        return f"database: {error_text(exc)}"
    return None


async def healthz(request: Request) -> JSONResponse:
    """No token, no detail: 200 ``ok`` or 503 ``unavailable`` (``/internal/health`` says why)."""
    if await _database_problem(request) is None:
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "unavailable"}, 503, headers={"Retry-After": "1"})


async def internal_health(request: Request) -> JSONResponse:
    """Like ``/healthz``, with the reason (behind the bearer token)."""
    problem = await _database_problem(request)
    if problem is None:
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "unavailable", "error": problem}, 503)


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


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``MAX_REQUEST_BYTES``, before it is read:
    at once when ``Content-Length`` says so, else as soon as the streamed body passes it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings: SidecarSettings = scope["app"].state.settings
        limit = settings.max_request_bytes
        too_large = f"request body over MAX_REQUEST_BYTES ({limit} bytes)"
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                _reject(413, too_large)
                await JSONResponse({"detail": too_large}, 413)(scope, receive, send)
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:  # FastAPI passes an HTTPException from reading the body on
                raise _reject(413, too_large)
            return message

        await self.app(scope, limited, send)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """422 listing each problem's place and message, without echoing the input back."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
    return JSONResponse({"detail": detail}, 422)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """503 with ``Retry-After`` when the database cannot serve us (:func:`dependency_down`);
    anything else from it is a bug here: 500, without the error's text."""
    if dependency_down(exc):
        log_event(log, logging.WARNING, "database.unavailable", error=error_text(exc))
        return JSONResponse(
            {"detail": "database unavailable, retry later"}, 503, headers={"Retry-After": "1"}
        )
    log.error("database error", exc_info=exc)
    return JSONResponse({"detail": "internal error"}, 500)


def _serve_api_docs(app: FastAPI) -> None:
    """Add ``/openapi.json``, ``/docs`` and ``/redoc`` (FastAPI's own pages)."""
    app.openapi_url, app.docs_url, app.redoc_url = "/openapi.json", "/docs", "/redoc"
    app.setup()


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
        if s.sidecar_api_docs:
            _serve_api_docs(app)
        # One extraction at a time per process, as many processes as anyio's default (CPUs),
        # all started now so that no early deadline is spent on starting Python.
        tokens = anyio.to_process.current_default_process_limiter().total_tokens
        app.state.extractors = anyio.CapacityLimiter(tokens)
        app.state.pool = await create_pool(
            s.database_url,
            max_size=10,
            application_name="outbox-sidecar",
            command_timeout=s.database_timeout_seconds,
        )
        async with anyio.create_task_group() as starting:
            for _ in range(int(tokens)):
                starting.start_soon(_start_extractor)
        try:
            yield
        finally:
            await app.state.pool.close()

    app = FastAPI(
        title="outbox reference preprocessing sidecar",
        lifespan=lifespan,
        openapi_url=None,  # see _serve_api_docs
        docs_url=None,
        redoc_url=None,
    )
    app.add_api_route("/internal/documents/{document_id}/parse", parse_document, methods=["POST"])
    app.add_api_route("/internal/ping", ping, methods=["GET"])
    app.add_api_route("/internal/health", internal_health, methods=["GET"])
    app.add_api_route("/healthz", healthz, methods=["GET"], include_in_schema=False)
    app.add_middleware(BodyLimit)
    app.add_middleware(BearerTokenGuard)  # the last added runs first: the token before size
    handler: Any = _database_error
    for error in (*UNREACHABLE_ERRORS, asyncpg.PostgresError):
        app.add_exception_handler(error, handler)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    return app


app = create_app()
