"""Enqueue messages inside the caller's own transaction.

The transactional guarantee: ``enqueue`` and ``enqueue_many`` only INSERT; they never commit
or open a transaction of their own. The new row becomes visible to workers exactly when the
caller's transaction commits, and disappears with its rollback. (With a ``Session``,
SQLAlchemy's autoflush may flush your pending changes first, as before any query, inside
the same transaction.) Works with a SQLAlchemy ``Session`` or ``Connection`` (returns the
value) and with an ``AsyncSession`` or ``AsyncConnection`` (returns an awaitable).
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Sequence
from datetime import datetime, timedelta
from typing import Any, overload

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from outbox.primitives.constants import MAX_DELAY_SECONDS, MAX_KEY_BYTES
from outbox.primitives.errors import InvalidMessageError, OutboxError
from outbox.primitives.messages import (
    NewMessage,
    Payload,
    loads_as_worker,
    payload_problem,
    text_problem,
)
from outbox.storage.execution import SyncDB
from outbox.storage.statements import ENQUEUE, SELECT_BY_DEDUPE_KEY

__all__ = ["enqueue", "enqueue_many"]

MAX_TYPE_LENGTH = 255

AsyncOrmDB = AsyncSession | AsyncConnection


@overload
def enqueue(
    db: SyncDB,
    type: str,
    payload: Payload,
    *,
    key: str | None = None,
    delay: timedelta | float | None = None,
    available_at: datetime | None = None,
    dedupe_key: str | None = None,
) -> int: ...
@overload
def enqueue(
    db: AsyncOrmDB,
    type: str,
    payload: Payload,
    *,
    key: str | None = None,
    delay: timedelta | float | None = None,
    available_at: datetime | None = None,
    dedupe_key: str | None = None,
) -> Awaitable[int]: ...
def enqueue(
    db: SyncDB | AsyncOrmDB,
    type: str,
    payload: Payload,
    *,
    key: str | None = None,
    delay: timedelta | float | None = None,
    available_at: datetime | None = None,
    dedupe_key: str | None = None,
) -> int | Awaitable[int]:
    """Insert one message in the caller's transaction and return its outbox id.

    ``type`` is dotted and versioned (``message.created``, ``document.preprocess.v1``).
    ``payload`` is a JSON object (dict) or a pydantic model. ``key`` is the ordering or
    partition key (room id, document id). ``delay`` (seconds or timedelta, on the database
    clock) or ``available_at`` (timezone-aware) hold the message back until then.

    ``dedupe_key`` makes the enqueue idempotent: if a row with that key already exists
    (in any status, until it is purged) no row is inserted and the existing row's id is
    returned. A concurrent transaction inserting the same key makes this call wait for it.

    Raises :class:`~outbox.primitives.errors.InvalidMessageError` for bad input before touching the
    database, so the caller's transaction stays usable: anything PostgreSQL cannot store
    (NUL, a lone surrogate, a ``key``/``dedupe_key`` over
    :data:`~outbox.primitives.constants.MAX_KEY_BYTES` UTF-8 bytes) and any payload a worker
    could not read back (nested deeper than
    :data:`~outbox.primitives.constants.MAX_PAYLOAD_DEPTH`, NaN or infinities, integers of
    more than :data:`~outbox.primitives.constants.MAX_INT_DIGITS` digits). Never commits.
    """
    ids = _enqueue(db, [NewMessage(type, payload, key, delay, available_at, dedupe_key)])
    return ids[0] if isinstance(ids, list) else _first(ids)


@overload
def enqueue_many(db: SyncDB, messages: Sequence[NewMessage]) -> list[int]: ...
@overload
def enqueue_many(db: AsyncOrmDB, messages: Sequence[NewMessage]) -> Awaitable[list[int]]: ...
def enqueue_many(
    db: SyncDB | AsyncOrmDB, messages: Sequence[NewMessage]
) -> list[int] | Awaitable[list[int]]:
    """Insert several messages in the caller's transaction; ids in the order given.

    Two statements at most, whatever the count; new ids ascend in the order given.
    Messages with a ``dedupe_key`` that already exists (or repeats within ``messages``) get
    the existing id, as in :func:`enqueue`. Validates every message before inserting any.
    Never commits.
    """
    return _enqueue(db, messages)


async def _first(ids: Awaitable[list[int]]) -> int:
    return (await ids)[0]


def _enqueue(
    db: SyncDB | AsyncOrmDB, messages: Sequence[NewMessage]
) -> list[int] | Awaitable[list[int]]:
    labels = ["message"] if len(messages) == 1 else [f"messages[{i}]" for i in range(len(messages))]
    plan = _Plan([_validated(label, m) for label, m in zip(labels, messages, strict=True)])
    if isinstance(db, (AsyncSession, AsyncConnection)):
        return _run_async(db, plan)
    if isinstance(db, (Session, Connection)):
        return _run_sync(db, plan)
    raise InvalidMessageError(
        "db must be a SQLAlchemy Session, Connection, AsyncSession or AsyncConnection, "
        f"not {db.__class__.__name__}"
    )


class _Plan:
    """The rows to insert (repeated dedupe keys folded) and how to map ids back to input.

    ``ENQUEUE`` returns ``(id, dedupe_key)`` in no particular order, but its new ids ascend
    in input order; rows without a dedupe key are matched back by that order.
    """

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.count = len(rows)
        self.plain: list[int] = []  # input positions without a dedupe key
        self.by_key: dict[str, list[int]] = {}  # dedupe key -> input positions
        sent: list[dict[str, Any]] = []
        for i, row in enumerate(rows):
            key = row["dedupe_key"]
            if key is None:
                self.plain.append(i)
            elif key in self.by_key:
                self.by_key[key].append(i)
                continue
            else:
                self.by_key[key] = [i]
            sent.append(row)
        self.params = {
            "types": [r["type"] for r in sent],
            "keys": [r["key"] for r in sent],
            "payloads": [r["payload"] for r in sent],
            "dedupe_keys": [r["dedupe_key"] for r in sent],
            "available_ats": [r["available_at"] for r in sent],
            "delays": [r["delay"] for r in sent],
        }

    def missing_keys(self, inserted: Sequence[Any]) -> list[str]:
        """Dedupe keys that the insert skipped because a row with that key exists."""
        got = {key for _, key in inserted if key is not None}
        return [key for key in self.by_key if key not in got]

    def ids(self, inserted: Sequence[Any], existing: Sequence[Any]) -> list[int]:
        plain_ids = sorted(id_ for id_, key in inserted if key is None)
        key_ids = {key: id_ for id_, key in existing}
        key_ids.update({key: id_ for id_, key in inserted if key is not None})
        ids = [0] * self.count
        for position, id_ in zip(self.plain, plain_ids, strict=True):
            ids[position] = id_
        for key, positions in self.by_key.items():
            if key not in key_ids:  # deleted between our INSERT and SELECT: rare, retryable
                raise OutboxError(f"the row with dedupe_key {key!r} vanished mid-enqueue; retry")
            for position in positions:
                ids[position] = key_ids[key]
        return ids


def _run_sync(db: SyncDB, plan: _Plan) -> list[int]:
    if not plan.count:
        return []
    inserted = db.execute(ENQUEUE, plan.params).all()
    missing = plan.missing_keys(inserted)
    existing = db.execute(SELECT_BY_DEDUPE_KEY, {"wanted": missing}).all() if missing else []
    return plan.ids(inserted, existing)


async def _run_async(db: AsyncOrmDB, plan: _Plan) -> list[int]:
    if not plan.count:
        return []
    inserted = (await db.execute(ENQUEUE, plan.params)).all()
    missing = plan.missing_keys(inserted)
    existing = (
        (await db.execute(SELECT_BY_DEDUPE_KEY, {"wanted": missing})).all() if missing else []
    )
    return plan.ids(inserted, existing)


def _validated(where: str, message: NewMessage) -> dict[str, Any]:
    if not isinstance(message, NewMessage):
        raise InvalidMessageError(f"{where}: expected NewMessage, got {type(message).__name__}")
    return {
        "type": _check_type(where, message.type),
        "key": _check_text(where, "key", message.key),
        "payload": _payload_json(where, message.payload),
        "dedupe_key": _check_text(where, "dedupe_key", message.dedupe_key),
        **_schedule(where, message.delay, message.available_at),
    }


def _check_type(where: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidMessageError(f"{where}: type must be a non-empty string")
    if len(value) > MAX_TYPE_LENGTH or "\x00" in value or value != value.strip():
        raise InvalidMessageError(
            f"{where}: type {value[:40]!r} must be at most {MAX_TYPE_LENGTH} characters, "
            "without NUL or surrounding whitespace"
        )
    problem = text_problem(value)  # 255 characters are at most 1,020 bytes: no byte bound
    if problem:
        raise InvalidMessageError(f"{where}: type {value[:40]!r} contains {problem}")
    return value


def _check_text(where: str, name: str, value: object) -> str | None:
    """A ``key`` or ``dedupe_key``: storable text, bounded in bytes as an index bounds it."""
    if value is None:
        return None
    if not isinstance(value, str) or "\x00" in value:
        raise InvalidMessageError(f"{where}: {name} must be a string without NUL, or None")
    problem = text_problem(value)
    if problem:
        raise InvalidMessageError(f"{where}: {name} {value[:40]!r} contains {problem}")
    size = len(value) if value.isascii() else len(value.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        raise InvalidMessageError(
            f"{where}: {name} is {size} bytes in UTF-8, over the limit of {MAX_KEY_BYTES} "
            "bytes (PostgreSQL indexes it)"
        )
    return value


def _payload_json(where: str, payload: object) -> str:
    """The payload as JSON text, once it is sure a worker can decode what PostgreSQL stores.

    A dict is walked first (bounded, without recursion), so ``json.dumps`` never meets
    what it cannot encode or a worker cannot decode; a model's JSON is decoded back as a
    worker would, then walked.
    """
    try:
        if isinstance(payload, BaseModel):
            text = payload.model_dump_json()
            try:
                problem = payload_problem(loads_as_worker(text))
            except ValueError as exc:
                raise InvalidMessageError(f"{where}: payload {exc}") from None
        elif isinstance(payload, dict):
            problem = payload_problem(payload)
            text = "" if problem else json.dumps(payload, allow_nan=False, separators=(",", ":"))
        else:
            kind = type(payload).__name__
            raise InvalidMessageError(
                f"{where}: payload must be a dict or a pydantic model, not {kind}"
            )
    except (TypeError, ValueError, RecursionError, PydanticSerializationError) as exc:
        if isinstance(exc, InvalidMessageError):
            raise
        raise InvalidMessageError(f"{where}: payload is not JSON-serialisable: {exc}") from exc
    if problem:
        raise InvalidMessageError(f"{where}: payload {problem}")
    if not text.startswith("{"):
        raise InvalidMessageError(f"{where}: payload must serialise to a JSON object")
    return text


def _schedule(where: str, delay: object, available_at: object) -> dict[str, Any]:
    if delay is not None and available_at is not None:
        raise InvalidMessageError(f"{where}: give delay or available_at, not both")
    if available_at is not None:
        if not isinstance(available_at, datetime) or available_at.utcoffset() is None:
            raise InvalidMessageError(f"{where}: available_at must be a timezone-aware datetime")
        return {"available_at": available_at, "delay": 0.0}
    if delay is None:
        return {"available_at": None, "delay": 0.0}
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, (int, float)) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise InvalidMessageError(f"{where}: delay must be seconds or a timedelta")
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_DELAY_SECONDS:
        raise InvalidMessageError(
            f"{where}: delay must be from 0 to {MAX_DELAY_SECONDS:.0f} seconds, got {delay!r}"
        )
    return {"available_at": None, "delay": seconds}
