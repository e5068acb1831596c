"""A transactional outbox for PostgreSQL.

Applications call :func:`enqueue` / :func:`enqueue_many` inside their own transaction; the
row is visible exactly when that transaction commits. Workers :func:`claim_batch` committed
rows (``FOR UPDATE SKIP LOCKED``), deliver them at least once, and acknowledge with
:func:`mark_published`, :func:`reschedule`, :func:`mark_dead` or :func:`release`, all fenced
on the claim's lease. :func:`reap_expired_locks` recovers rows of crashed workers.
Every delivered message carries its outbox ``id`` so consumers can de-duplicate.
"""

from outbox.primitives.backoff import (
    BackoffPolicy,
    ExponentialBackoff,
    FixedSchedule,
    PerTypeBackoff,
)
from outbox.primitives.engines import engine_options
from outbox.primitives.errors import (
    ConfigurationError,
    GiveUpError,
    HandlerError,
    InvalidArgumentError,
    InvalidMessageError,
    OutboxError,
    RetryLaterError,
    StartupError,
    TransportUnavailable,
)
from outbox.primitives.messages import (
    AckResult,
    ClaimedMessage,
    JSONValue,
    NewMessage,
    Payload,
    ReapResult,
    RescheduleResult,
)
from outbox.primitives.urls import async_database_url
from outbox.runtime.handler import (
    DELIVERED,
    NOT_ATTEMPTED,
    Delivered,
    GiveUp,
    Handler,
    MessageHandler,
    NotAttempted,
    Outcome,
    PerMessage,
    Retry,
)
from outbox.storage.claims import (
    claim_batch,
    extend_lease,
    mark_dead,
    mark_published,
    reap_expired_locks,
    release,
    reschedule,
)
from outbox.storage.enqueue import enqueue, enqueue_many
from outbox.storage.schema import Status, metadata, outbox_table
from outbox.storage.stats import OutboxStats, stats

__all__ = [
    "DELIVERED",
    "NOT_ATTEMPTED",
    "AckResult",
    "BackoffPolicy",
    "ClaimedMessage",
    "ConfigurationError",
    "Delivered",
    "ExponentialBackoff",
    "FixedSchedule",
    "GiveUp",
    "GiveUpError",
    "Handler",
    "HandlerError",
    "InvalidArgumentError",
    "InvalidMessageError",
    "JSONValue",
    "MessageHandler",
    "NewMessage",
    "NotAttempted",
    "OutboxError",
    "OutboxStats",
    "Outcome",
    "Payload",
    "PerMessage",
    "PerTypeBackoff",
    "ReapResult",
    "RescheduleResult",
    "Retry",
    "RetryLaterError",
    "StartupError",
    "Status",
    "TransportUnavailable",
    "async_database_url",
    "claim_batch",
    "engine_options",
    "enqueue",
    "enqueue_many",
    "extend_lease",
    "mark_dead",
    "mark_published",
    "metadata",
    "outbox_table",
    "reap_expired_locks",
    "release",
    "reschedule",
    "stats",
]
