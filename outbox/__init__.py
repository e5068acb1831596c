"""A transactional outbox for PostgreSQL.

Applications call :func:`enqueue` / :func:`enqueue_many` inside their own transaction; the
row is visible exactly when that transaction commits. Workers :func:`claim_batch` committed
rows (``FOR UPDATE SKIP LOCKED``), deliver them at least once, and acknowledge with
:func:`mark_published`, :func:`reschedule`, :func:`mark_dead` or :func:`release`, all fenced
on the claim's lease. :func:`reap_expired_locks` recovers rows of crashed workers.
Every delivered message carries its outbox ``id`` so consumers can de-duplicate.
"""

from outbox.backoff import BackoffPolicy, ExponentialBackoff, FixedSchedule, PerTypeBackoff
from outbox.dburl import async_database_url
from outbox.enqueue import enqueue, enqueue_many
from outbox.errors import (
    ConfigurationError,
    InvalidArgumentError,
    InvalidMessageError,
    OutboxError,
)
from outbox.messages import (
    AckResult,
    ClaimedMessage,
    JSONValue,
    NewMessage,
    Payload,
    ReapResult,
    RescheduleResult,
)
from outbox.schema import Status, metadata, outbox_table
from outbox.stats import OutboxStats, stats
from outbox.storage import (
    claim_batch,
    extend_lease,
    mark_dead,
    mark_published,
    reap_expired_locks,
    release,
    reschedule,
)

__all__ = [
    "AckResult",
    "BackoffPolicy",
    "ClaimedMessage",
    "ConfigurationError",
    "ExponentialBackoff",
    "FixedSchedule",
    "InvalidArgumentError",
    "InvalidMessageError",
    "JSONValue",
    "NewMessage",
    "OutboxError",
    "OutboxStats",
    "Payload",
    "PerTypeBackoff",
    "ReapResult",
    "RescheduleResult",
    "Status",
    "async_database_url",
    "claim_batch",
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
