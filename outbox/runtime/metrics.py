"""Prometheus metrics of a worker, and the small HTTP server for ``/metrics`` and health.

Counters are labelled by message ``type``; gauges describe the whole table and are refreshed
by the worker from partial-index counts (cheap on a table full of published rows).

``/healthz`` answers 200 while the process serves requests (liveness); ``/readyz`` answers
200 only while the worker is claiming normally: started, database reachable, transport not
paused, not shutting down (503 with the reason otherwise).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable
from typing import Final

import anyio
from anyio.abc import SocketStream

from outbox.primitives.extras import requires_extra
from outbox.primitives.messages import ClaimedMessage

with requires_extra("worker"):
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
    )

__all__ = ["WorkerMetrics", "serve_http"]

log = logging.getLogger("outbox.metrics")

_LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900,
)  # fmt: skip


class WorkerMetrics:
    """Every metric one worker process exports, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry

        def counter(name: str, text: str) -> Counter:
            return Counter(f"outbox_{name}", text, ["type"], registry=r)

        self.claimed = counter("claimed_total", "Messages claimed.")
        self.published = counter("published_total", "Messages delivered and marked published.")
        self.retried = counter("retried_total", "Failed attempts rescheduled for later.")
        self.dead = counter("dead_total", "Messages this worker gave up (dead).")
        self.released = counter(
            "released_total", "Messages handed back uncounted (transport down, shutdown)."
        )
        self.lease_lost = counter(
            "lease_lost_total", "Acknowledgements or heartbeats that found the lease taken."
        )
        self.handle_seconds = Histogram(
            "outbox_handle_seconds",
            "Time one handler call (a batch) took.",
            ["type"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.claim_seconds = Histogram(
            "outbox_claim_seconds",
            "Time one claim statement took (empty claims included).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ack_seconds = Histogram(
            "outbox_ack_seconds",
            "Time one acknowledgement statement took, by kind (published, dead, ...).",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.dispatch_wait_seconds = Counter(
            "outbox_dispatch_wait_seconds_total",
            "Time the claim loop waited: for free capacity (batches in flight), or idle (an"
            " empty claim, until a notification or the poll interval).",
            ["reason"],
            registry=r,
        )
        self.lag_seconds = Histogram(
            "outbox_delivery_lag_seconds",
            "End-to-end lag: row created -> acknowledged as published.",
            ["type"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.reaped = Counter(
            "outbox_reaped_total",
            "Expired leases reaped by this worker: requeued, or dead at the attempt limit.",
            ["outcome"],
            registry=r,
        )
        self.pending = Gauge("outbox_rows_pending", "Rows pending (whole table).", registry=r)
        self.in_progress = Gauge("outbox_rows_in_progress", "Rows leased now.", registry=r)
        self.dead_rows = Gauge("outbox_rows_dead", "Rows dead (whole table).", registry=r)
        self.oldest_pending_age = Gauge(
            "outbox_oldest_pending_age_seconds",
            "How long the oldest claimable row has been claimable (0 when none).",
            registry=r,
        )

    @staticmethod
    def count(counter: Counter, messages: Iterable[ClaimedMessage]) -> None:
        """Add one per message to ``counter``, labelled by type (one call per type)."""
        for message_type, n in collections.Counter(m.type for m in messages).items():
            counter.labels(message_type).inc(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


async def serve_http(
    host: str,
    port: int,
    metrics: WorkerMetrics,
    readiness: Callable[[], str | None],
    *,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` until cancelled.

    ``readiness()`` returns ``None`` when ready, else the reason it is not. Reports the bound
    port through ``task_status`` (useful with port 0); failing to bind raises ``OSError``.
    Afterwards nothing a client does (or running out of file descriptors) stops the server:
    errors are logged and it keeps accepting.
    """
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)

    async def answer(stream: SocketStream) -> None:
        try:
            async with stream:
                await _answer(stream, metrics, readiness)
        except Exception as exc:  # a client's fault or a broken socket: never the worker's
            log.debug("metrics request failed: %r", exc)

    async with listener:
        task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
        while True:
            try:
                await listener.serve(answer)
            except Exception as exc:  # accept() failed (e.g. out of file descriptors)
                log.warning("metrics server: %r; accepting again shortly", exc)
                await anyio.sleep(0.5)


async def _answer(
    stream: SocketStream, metrics: WorkerMetrics, readiness: Callable[[], str | None]
) -> None:
    try:
        with anyio.fail_after(5):
            request = await _read_head(stream)
    except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        return
    parts = request.split(" ")
    path = parts[1].split("?", 1)[0] if len(parts) > 1 else ""
    if parts[0] not in ("GET", "HEAD"):
        status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
    elif path == "/metrics":
        status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, metrics.exposition()
    elif path == "/healthz":
        status, ctype, body = "200 OK", "text/plain", b"ok\n"
    elif path == "/readyz":
        reason = readiness()
        status = "200 OK" if reason is None else "503 Service Unavailable"
        ctype, body = "text/plain", b"ready\n" if reason is None else f"{reason}\n".encode()
    else:
        status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with anyio.move_on_after(5):
        await stream.send(head + (b"" if parts[0] == "HEAD" else body))


async def _read_head(stream: SocketStream) -> str:
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        chunk = await stream.receive(4096)
        data += chunk
        if len(data) > 16_384:
            break
    return data.split(b"\r\n", 1)[0].decode("latin-1")
