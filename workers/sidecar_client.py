"""Calling the preprocessing sidecar, and what each kind of failure means.

:meth:`SidecarClient.parse` returns the sidecar's JSON summary or raises one of:

* :class:`SidecarUnreachable` -- an outage, nothing wrong with the document: no request
  reached it (connection refused, DNS, connect timeout), it answered 503 (its own
  dependency is down: the reference sidecar's database unreachable, refusing its login,
  missing its tables), or 401 (our token is not the one it expects).
* :class:`SidecarTransientError` -- it may work later: a timeout after the request was sent,
  a dropped connection, other 5xx, 429, or an unexpected 1xx/3xx.
* :class:`SidecarRejected` -- it never will: any other 4xx; the message carries the status
  and the sidecar's ``detail``.

Both retryable kinds carry ``retry_after``, the sidecar's ``Retry-After`` in seconds, if any.
"""

from __future__ import annotations

import email.utils
import time
import urllib.parse
import uuid
from typing import Any

import anyio

from outbox.primitives.extras import requires_extra
from outbox.primitives.urls import redacted_url

with requires_extra("document"):
    import httpx

__all__ = [
    "SidecarClient",
    "SidecarError",
    "SidecarRejected",
    "SidecarTransientError",
    "SidecarUnreachable",
    "retry_after_seconds",
]

MAX_RETRY_AFTER_SECONDS = 3600.0
"""A ``Retry-After`` beyond this is capped (a typo on the server must not park a message)."""


class SidecarError(Exception):
    """Base of the failures below; ``str()`` is the reason stored with the message."""


class SidecarTransientError(SidecarError):
    """Worth retrying; ``retry_after`` is the sidecar's own hint in seconds, if it gave one."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class SidecarUnreachable(SidecarTransientError):
    """The sidecar (or what it depends on) is down, or refuses our token: an outage."""


class SidecarRejected(SidecarError):
    """The sidecar refused the request for good."""


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now (delta-seconds or an HTTP date), capped; or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _detail(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:300].strip()
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI validation errors: "loc: msg" each
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", ()))
                parts.append(f"{where}: {item.get('msg', '')}")
        detail = "; ".join(parts) if parts else detail
    return str(detail)[:500]


class SidecarClient:
    """``POST {base_url}/internal/documents/{id}/parse`` with a bearer token and a deadline."""

    def __init__(self, base_url: str, *, token: str, timeout: float, max_connections: int) -> None:
        """``base_url`` must not carry credentials: httpx would send them as Basic auth in
        place of the bearer token (``ValueError``)."""
        if "@" in urllib.parse.urlsplit(base_url).netloc:
            raise ValueError("the sidecar's base URL must not carry credentials (user:pw@)")
        self.base_url = base_url.rstrip("/")
        self.shown_url = redacted_url(self.base_url)
        """The base URL without its password, for logs and stored errors."""
        self.timeout = timeout
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=max_connections),
        )

    async def check(self) -> None:
        """Raise unless the sidecar is healthy (``GET /healthz``) and takes our token
        (``GET /internal/ping``), each within the timeout."""
        for path in ("/healthz", "/internal/ping"):
            with anyio.fail_after(self.timeout):
                response = await self.http.get(path)
            if response.status_code == 401:
                raise RuntimeError("it refuses SIDECAR_TOKEN (401): the two sides differ")
            if response.status_code != 200:
                detail = _detail(response)
                if path == "/healthz":  # the reason is behind the token
                    detail = await self._health_reason() or detail
                raise RuntimeError(f"GET {path} answered {response.status_code}: {detail}")

    async def _health_reason(self) -> str | None:
        """Why the sidecar says it is unhealthy (``GET /internal/health``), if it says."""
        try:
            with anyio.fail_after(self.timeout):
                response = await self.http.get("/internal/health")
            body: Any = response.json()
        except (TimeoutError, httpx.HTTPError, ValueError):
            return None
        error = body.get("error") if isinstance(body, dict) else None
        return error if isinstance(error, str) else None

    async def parse(
        self, document_id: uuid.UUID, user_id: str | int, *, idempotency_key: str
    ) -> dict[str, Any]:
        """The sidecar's summary; raises a :class:`SidecarError` subclass on failure."""
        path = f"/internal/documents/{document_id}/parse"
        try:
            with anyio.fail_after(self.timeout):  # httpx's timeouts are per read, not total
                response = await self.http.post(
                    path, json={"userId": user_id}, headers={"Idempotency-Key": idempotency_key}
                )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise SidecarUnreachable(
                f"sidecar unreachable at {self.shown_url}: {str(exc) or type(exc).__name__}"
            ) from exc
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise SidecarTransientError(f"sidecar timed out after {self.timeout:g}s") from exc
        except httpx.TransportError as exc:
            raise SidecarTransientError(
                f"sidecar connection failed: {str(exc) or type(exc).__name__}"
            ) from exc
        status = response.status_code
        if response.is_success:
            try:
                summary: Any = response.json()
            except ValueError:
                summary = None
            return summary if isinstance(summary, dict) else {}
        answer = f"sidecar answered {status} {response.reason_phrase}: {_detail(response)}"
        delay = retry_after_seconds(response.headers.get("Retry-After"))
        if status in (401, 503):
            raise SidecarUnreachable(answer, delay)
        if status == 429 or status >= 500 or status < 400:
            raise SidecarTransientError(answer, delay)
        raise SidecarRejected(answer)

    async def aclose(self) -> None:
        await self.http.aclose()
