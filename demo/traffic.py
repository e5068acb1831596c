"""What flows through the demo: an application committing work, and a chat client listening.

The producer does what an application using the outbox does: each chat message is a row
in ``demo_chat_messages`` and its ``message.created`` outbox row, committed together; each
document is a ``documents`` row and its ``document.preprocess.v1`` row, committed
together. Every ``unreadable_every``-th document is a PNG the sidecar cannot read, so the
run shows dead-lettering too. The subscriber listens on every room's channel and notes
when each message id arrives.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc
import redis.asyncio as redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import outbox

__all__ = ["Received", "Sent", "produce", "subscribe"]

_DOCUMENT = (
    "# Quarterly notes {n}\n\n"
    "## Summary\n\nThe team shipped the outbox poller and its workers. "
    "Every change is committed together with the message that announces it.\n\n"
    "## Details\n\n" + "A paragraph about delivery, retries and leases. " * 40 + "\n"
)
_PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@dataclass
class Sent:
    """Outbox ids the producer committed, with the wall-clock time of each commit."""

    chat: dict[int, float] = field(default_factory=dict)
    documents: dict[int, float] = field(default_factory=dict)
    unreadable: set[int] = field(default_factory=set)
    """Outbox ids of the documents made unreadable on purpose."""


@dataclass
class Received:
    """What the subscriber saw: first arrival time per id, and how many repeats."""

    at: dict[int, float] = field(default_factory=dict)
    repeats: int = 0


async def produce(
    engine: AsyncEngine,
    sent: Sent,
    *,
    chat_rate: float,
    document_rate: float,
    rooms: list[str],
    unreadable_every: int,
    until: Callable[[], bool],
) -> None:
    """Commit chat messages and documents at the given rates (per second) until ``until()``
    is true; rates the database cannot keep up with are simply not reached."""

    # A message's "commit" time is taken as COMMIT is sent: the commit happens between then
    # and its answer, and a worker woken by it may deliver before this task runs again.
    async def chat(n: int) -> None:
        room = rooms[n % len(rooms)]
        async with engine.connect() as conn:
            message_id = (
                await conn.execute(
                    text(
                        "INSERT INTO demo_chat_messages (room, author, body)"
                        " VALUES (:room, :author, :body) RETURNING id"
                    ),
                    {"room": room, "author": f"user-{n % 17}", "body": f"hello #{n}"},
                )
            ).scalar_one()
            outbox_id = await outbox.enqueue(
                conn,
                "message.created",
                {"messageId": message_id, "room": room, "body": f"hello #{n}"},
                key=room,
            )
            committing = time.time()
            await conn.commit()
        sent.chat[outbox_id] = committing

    async def document(n: int) -> None:
        unreadable = unreadable_every > 0 and n % unreadable_every == unreadable_every - 1
        async with engine.connect() as conn:
            outbox_id = await _add_document(conn, n, unreadable)
            committing = time.time()
            await conn.commit()
        sent.documents[outbox_id] = committing
        if unreadable:
            sent.unreadable.add(outbox_id)

    async with anyio.create_task_group() as group:
        for lane in range(4):  # a few concurrent transactions, as an application would have
            group.start_soon(_paced, chat, chat_rate, lane, 4, until)
        group.start_soon(_paced, document, document_rate, 0, 1, until)


async def _add_document(conn: AsyncConnection, n: int, unreadable: bool) -> int:
    content_type, content = ("image/png", _PNG) if unreadable else ("text/markdown", b"")
    if not unreadable:
        content = _DOCUMENT.format(n=n).encode()
    document_id = (
        await conn.execute(
            text(
                "INSERT INTO documents (user_id, title, content_type, content)"
                " VALUES (:user, :title, :content_type, :content) RETURNING id"
            ),
            {
                "user": f"user-{n % 5}",
                "title": f"Notes {n}",
                "content_type": content_type,
                "content": content,
            },
        )
    ).scalar_one()
    return await outbox.enqueue(
        conn,
        "document.preprocess.v1",
        {"documentId": str(document_id), "userId": f"user-{n % 5}"},
        key=str(document_id),
    )


async def _paced(
    send: Callable[[int], Awaitable[None]],
    rate: float,
    lane: int,
    lanes: int,
    until: Callable[[], bool],
) -> None:
    """Call ``send(n)`` for n = lane, lane + lanes, ... at ``rate / lanes`` per second."""
    if rate <= 0:
        return
    interval = lanes / rate
    start = time.monotonic()
    n = lane
    sent = 0
    while not until():
        await send(n)
        sent += 1
        n += lanes
        await anyio.sleep(max(0.0, start + sent * interval - time.monotonic()))


async def subscribe(
    redis_url: str,
    pattern: str,
    received: Received,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``pattern`` (Redis ``PSUBSCRIBE``); report started once subscribed, so
    nothing published afterwards is missed; run until cancelled."""
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    try:
        await pubsub.psubscribe(pattern)
        while (await pubsub.get_message(timeout=5.0)) is None:
            pass  # the subscription confirmation
        task_status.started()
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            now = time.time()
            outbox_id = int(json.loads(message["data"])["id"])
            if outbox_id in received.at:
                received.repeats += 1
                continue
            received.at[outbox_id] = now
    finally:
        with anyio.CancelScope(shield=True):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()
