"""The document worker: ``document.`` types, preprocessed by the sidecar.

``python -m workers.document`` (or the ``outbox-document-worker`` script). For each
``document.preprocess.v1`` message (payload ``{"documentId": uuid, "userId": ...}``):

1. the message's ``userId`` must own the document (``DOCUMENTS_USER_ID_COLUMN``, compared as
   text), else the message is given up (``dead``) with nothing written to the document;
   then the document's status becomes ``processing``;
2. ``POST {SIDECAR_BASE_URL}/internal/documents/{documentId}/parse`` with ``{"userId"}``,
   ``Authorization: Bearer {SIDECAR_TOKEN}``, ``Idempotency-Key: {outbox id}`` and a deadline
   of ``SIDECAR_TIMEOUT_SECONDS`` (the worker's heartbeat keeps the lease meanwhile);
3. ``processed`` and the message ``published``.

Statuses: this worker writes ``processing`` (clearing the error column) and ``processed``,
never ``failed``. A document becomes ``failed`` when, and only when, its message becomes
``dead`` -- given up here, retried until its attempts ran out, reaped after a worker died
on its last attempt, or marked dead by an operator: the ``documents`` migration branch's
trigger on ``outbox`` does it in the transaction that kills the row, with the row's error
(``gave up after N attempts: ...`` once it had more than one attempt). An application
with its own documents table (``DOCUMENTS_TABLE``) needs an equivalent trigger to see
``failed``; the reason is always on the outbox row.

Failures are reported to the runtime, which alone decides delays and the last attempt
(:mod:`outbox.runtime.outcomes`):

* a 4xx other than 401 and 429 (the sidecar rejects the document), a malformed payload,
  a document that does not exist or belongs to another user, or an unknown ``document.*``
  type: :class:`~outbox.primitives.errors.GiveUpError`, ``dead`` at once;
* a timeout, a dropped connection, 5xx or 429:
  :class:`~outbox.primitives.errors.RetryLaterError`, with the sidecar's ``Retry-After``
  as ``min_delay`` (the backoff, never sooner than that); ``dead`` when attempts run out.
  Anything unforeseen (a bad answer body, ...) is raised as it is: retried the same way;
* an outage (the sidecar unreachable, answering 503 -- its database down, refusing its
  login, missing its tables -- or refusing our token with 401):
  ``RetryLaterError(outage=True)``, counted like any retry, but on the message's last
  attempt the runtime hands it back uncounted and pauses claiming instead (``/readyz``
  then says ``sidecar at ... unavailable``): an outage never kills. Bounded: once this
  worker has seen nothing but outage answers for ``SIDECAR_OUTAGE_MAX_SECONDS`` (since its
  first outage answer after a success or start), its failures are plain retries that end
  ``dead`` when attempts run out, until the sidecar answers again. ``sidecar.outage`` is
  logged (WARNING) when an outage begins, at most once a minute while it lasts and when it
  passes the bound; ``sidecar.recovered`` when an answer comes again;
* the documents database unreachable:
  :class:`~outbox.primitives.errors.TransportUnavailable`, the whole batch back uncounted;
* ``RETRY_TRANSIENT_FAILURES=false`` is the source system's MVP policy: every failure
  (but a documents database outage) is a ``GiveUpError``, final at once.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
import uuid
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    model_validator,
)

from outbox.primitives.extras import requires_extra

with requires_extra("document"):  # first, so that a bare install is told this extra
    from workers.sidecar_client import (
        SidecarClient,
        SidecarRejected,
        SidecarTransientError,
        SidecarUnreachable,
    )

from outbox.primitives.errors import (
    GiveUpError,
    RetryLaterError,
    TransportUnavailable,
    error_text,
)
from outbox.primitives.logs import log_event
from outbox.primitives.messages import ClaimedMessage
from outbox.primitives.urls import redacted_url
from outbox.runtime.handler import PerMessage
from outbox.runtime.runner import run_worker_process
from outbox.runtime.settings import BearerToken, WorkerSettings
from outbox.storage.pool import is_unreachable
from workers.document_schema import DocumentStatus
from workers.document_status import DocumentColumns, DocumentStatusStore, StatusWrite

__all__ = ["PREPROCESS_TYPE", "DocumentPreprocessor", "DocumentSettings", "PreprocessPayload"]

PREPROCESS_TYPE = "document.preprocess.v1"
DOCUMENT_PREFIX = "document."
OUTAGE_LOG_INTERVAL_SECONDS = 60.0
"""While the sidecar is out, ``sidecar.outage`` is logged at most this often."""

log = logging.getLogger("outbox.worker")


def _http_url(url: str) -> str:
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
        raise ValueError("expected an http:// or https:// base URL")
    if "@" in urllib.parse.urlsplit(url).netloc:
        raise ValueError(
            "must not carry credentials (user:password@): the sidecar is called with"
            " SIDECAR_TOKEN as a bearer token, which credentials in the URL would replace"
        )
    return url.rstrip("/")


class DocumentSettings(WorkerSettings):
    """:class:`~outbox.runtime.settings.WorkerSettings` plus the sidecar and the documents table."""

    sidecar_base_url: Annotated[str, AfterValidator(_http_url)] = Field(
        validation_alias=AliasChoices("sidecar_base_url", "document_sidecar_base_url")
    )
    """``SIDECAR_BASE_URL`` or ``DOCUMENT_SIDECAR_BASE_URL`` (as in the source system)."""
    sidecar_token: BearerToken
    """Sent as ``Authorization: Bearer ...``; the sidecar's ``SIDECAR_TOKEN``."""
    sidecar_timeout_seconds: float = Field(60.0, gt=0, le=86_400)
    """Longest one parse call may take (then it is retried)."""
    sidecar_outage_max_seconds: float = Field(3600.0, gt=0, le=30 * 86_400)
    """How long an outage of the sidecar (unreachable, 503, 401) may hold messages back:
    past it, failures are plain retries and messages go ``dead`` when attempts run out."""
    retry_transient_failures: bool = True
    """``false``: the source's MVP policy, every failure is final (``dead``, so ``failed``)."""
    documents_table: str = "documents"
    documents_id_column: str = "id"
    documents_status_column: str = "processing_status"
    documents_error_column: str = "processing_error"
    """Cleared when processing starts (the failure reason is written by the trigger, see the
    module doc); empty: not touched."""
    documents_updated_at_column: str = "updated_at"
    """Empty: not written."""
    documents_user_id_column: str = "user_id"
    """The owner, compared as text with the message's ``userId`` before anything is written;
    empty: not checked here (the reference sidecar and trigger still check)."""
    include_type_prefixes: str = DOCUMENT_PREFIX
    ordering: Literal["none", "key"] = "key"
    """By document: two messages of one document never run at once, and run in order."""
    batch_size: int = Field(10, ge=1, le=1000)
    handler_timeout_seconds: float = Field(90.0, gt=0, le=86_400)

    @model_validator(mode="after")
    def _consistent_for_documents(self) -> DocumentSettings:
        if not self.include or any(not p.startswith(DOCUMENT_PREFIX) for p in self.include):
            raise ValueError(
                "INCLUDE_TYPE_PREFIXES must name only document. prefixes (this worker gives"
                f" up every type it does not know); got {self.include_type_prefixes!r}"
            )
        if self.sidecar_timeout_seconds >= self.handler_timeout_seconds:
            raise ValueError(
                "SIDECAR_TIMEOUT_SECONDS must be below HANDLER_TIMEOUT_SECONDS "
                f"({self.sidecar_timeout_seconds:g} >= {self.handler_timeout_seconds:g})"
            )
        try:
            self.columns().validate()
        except ValueError as exc:
            raise ValueError(f"DOCUMENTS_TABLE / DOCUMENTS_*_COLUMN: {exc}") from None
        return self

    def columns(self) -> DocumentColumns:
        return DocumentColumns(
            table=self.documents_table,
            id=self.documents_id_column,
            status=self.documents_status_column,
            error=self.documents_error_column,
            updated_at=self.documents_updated_at_column,
            user_id=self.documents_user_id_column,
        )


class PreprocessPayload(BaseModel):
    """The payload of ``document.preprocess.v1``; other fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    documentId: uuid.UUID
    userId: Annotated[str, Field(min_length=1, max_length=200)] | StrictInt


def _malformed(exc: ValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'payload'}: {error['msg']}"
        for error in exc.errors()
    )
    return f"malformed {PREPROCESS_TYPE} payload: {problems}"


class DocumentPreprocessor:
    """The document worker's message handler (see the module doc)."""

    def __init__(self, settings: DocumentSettings) -> None:
        self.settings = settings
        self.name = f"sidecar at {redacted_url(settings.sidecar_base_url)}"
        self.sidecar = SidecarClient(
            settings.sidecar_base_url,
            token=settings.sidecar_token.get_secret_value(),
            timeout=settings.sidecar_timeout_seconds,
            max_connections=settings.max_in_flight,
        )
        self.documents = DocumentStatusStore(
            settings.database_url,
            settings.columns(),
            max_connections=min(settings.max_in_flight, 10),
            timeout=settings.database_timeout_seconds,
            prepared_statements=not settings.pgbouncer_transaction_mode,
        )
        self.outage_since: float | None = None
        """``time.monotonic()`` of the first outage answer since the last good one."""
        self._outage_logged_at: float | None = None
        self._outage_failures = 0
        self._outage_over_limit = False

    async def check(self) -> None:
        await self.documents.check()
        await self.sidecar.check()

    async def aclose(self) -> None:
        await self.sidecar.aclose()
        await self.documents.aclose()

    async def handle(self, message: ClaimedMessage) -> None:
        if message.type != PREPROCESS_TYPE:
            raise GiveUpError(
                f"unknown document type {message.type!r}: this worker handles {PREPROCESS_TYPE}"
            )
        try:
            payload = PreprocessPayload.model_validate(message.payload)
        except ValidationError as exc:
            raise GiveUpError(_malformed(exc)) from None
        user_id = str(payload.userId)
        written = await self._set(payload.documentId, DocumentStatus.PROCESSING, user_id)
        if written is StatusWrite.NO_SUCH_DOCUMENT:
            raise GiveUpError(f"document {payload.documentId} does not exist")
        if written is StatusWrite.OTHER_OWNER:
            raise GiveUpError(
                f"document {payload.documentId} does not belong to the message's userId"
            )
        retrying = self.settings.retry_transient_failures
        try:
            await self.sidecar.parse(
                payload.documentId, payload.userId, idempotency_key=str(message.id)
            )
        except SidecarRejected as exc:
            self._answered()
            raise GiveUpError(str(exc)) from exc
        except SidecarUnreachable as exc:
            if not retrying:
                raise GiveUpError(str(exc)) from exc
            if self._outage(str(exc)):
                raise RetryLaterError(str(exc), min_delay=exc.retry_after, outage=True) from exc
            reason = f"{exc} (an outage past SIDECAR_OUTAGE_MAX_SECONDS)"
            raise RetryLaterError(reason, min_delay=exc.retry_after) from exc
        except SidecarTransientError as exc:
            self._answered()
            if not retrying:
                raise GiveUpError(str(exc)) from exc
            raise RetryLaterError(str(exc), min_delay=exc.retry_after) from exc
        except Exception as exc:  # unforeseen (a bad answer body, ...): retried, or final
            if not retrying:
                raise GiveUpError(error_text(exc)) from exc
            raise
        self._answered()
        await self._set(payload.documentId, DocumentStatus.PROCESSED, user_id)

    def _outage(self, error: str) -> bool:
        """Note an outage answer; whether it is still within ``SIDECAR_OUTAGE_MAX_SECONDS``."""
        now = time.monotonic()
        if self.outage_since is None:
            self.outage_since, self._outage_logged_at = now, None
            self._outage_failures, self._outage_over_limit = 0, False
        self._outage_failures += 1
        lasted = now - self.outage_since
        limit = self.settings.sidecar_outage_max_seconds
        over_limit = lasted > limit
        logged = self._outage_logged_at
        if (
            logged is None
            or now - logged >= OUTAGE_LOG_INTERVAL_SECONDS
            or (over_limit and not self._outage_over_limit)
        ):
            self._outage_logged_at = now
            log_event(
                log,
                logging.WARNING,
                "sidecar.outage",
                error=error,
                lasted_s=round(lasted, 1),
                failures=self._outage_failures,
                limit_s=limit,
                over_limit=over_limit,
            )
        self._outage_over_limit = over_limit
        return not over_limit

    def _answered(self) -> None:
        """The sidecar answered (anything but an outage): an outage, if any, is over."""
        if self.outage_since is not None:
            lasted = time.monotonic() - self.outage_since
            log_event(log, logging.INFO, "sidecar.recovered", lasted_s=round(lasted, 1))
            self.outage_since = None

    async def _set(
        self, document_id: uuid.UUID, status: DocumentStatus, user_id: str
    ) -> StatusWrite:
        try:
            return await self.documents.set_status(document_id, status, user_id)
        except Exception as exc:
            if is_unreachable(exc):  # hand the batch back uncounted, pause
                raise TransportUnavailable(f"PostgreSQL (documents): {exc}") from exc
            raise


def make_handler(settings: DocumentSettings) -> PerMessage:
    """The preprocessor, each message bounded by ``HANDLER_TIMEOUT_SECONDS``."""
    return PerMessage(DocumentPreprocessor(settings), timeout=settings.handler_timeout_seconds)


def main() -> None:
    """Console entry point."""
    run_worker_process("outbox-document-worker", DocumentSettings, make_handler)


if __name__ == "__main__":
    main()
