"""The application side of the chaos run: producers committing work, and a subscriber.

Producers write as an application does: outbox rows in the same transaction as their own
work, several statements per transaction with pauses inside, so commits interleave and end
out of id order. One transaction in ten rolls back on purpose. A transaction that fails
before COMMIT is rolled back; one whose COMMIT breaks off has an unknown outcome, settled
from the database after the run (:func:`settle_unknown`). Everything goes to the
:class:`~reliability.ledger.Ledger`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import anyio
import anyio.abc
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import outbox
from outbox.primitives.messages import JSONValue, NewMessage
from reliability.fleet import CHANNEL_PREFIX
from reliability.ledger import Arrival, Ledger

__all__ = ["Producer", "settle_unknown", "subscribe"]

_BROKEN = (SQLAlchemyError, OSError)
_MARKDOWN = "# Notes {n}\n\n## Summary\n\nShipped. " + "Delivery, retries and leases. " * 12
_PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2
PREPROCESS = "document.preprocess.v1"


_Written = list[tuple[int, str]]


class _CommitBroke(Exception):
    """COMMIT was sent and its answer never came."""


@dataclass
class Producer:
    engine: AsyncEngine
    ledger: Ledger
    rng: random.Random
    rooms: list[str]

    async def chat_lane(self, rate: float, until: Callable[[], bool]) -> None:
        """Commit chat transactions of 1-8 messages at ``rate`` messages/s until ``until()``."""
        start, sent = time.monotonic(), 0
        while not until():
            size = self.rng.randint(1, 8)
            rooms = [self.rng.choice(self.rooms) for _ in range(size)]
            rollback = self.rng.random() < 0.1
            await self._transaction(partial(self._chat, rooms=rooms), rollback, chat=True)
            sent += size
            await anyio.sleep(max(0.0, start + sent / rate - time.monotonic()))

    async def burst(self, size: int, *, rollback: bool) -> None:
        """One transaction of ``size`` chat messages over every room."""
        rooms = [self.rooms[n % len(self.rooms)] for n in range(size)]

        async def write(conn: AsyncConnection, written: _Written) -> None:
            messages = [NewMessage("message.created", {"room": r, "burst": True}, r) for r in rooms]
            written.extend(zip(await outbox.enqueue_many(conn, messages), rooms, strict=True))

        self.ledger.bursts += 1
        await self._transaction(write, rollback, chat=True)

    async def document_lane(
        self, rate: float, until: Callable[[], bool], unreadable_share: float
    ) -> None:
        start, sent = time.monotonic(), 0
        while not until():
            unreadable = self.rng.random() < unreadable_share
            rollback = self.rng.random() < 0.1
            await self._transaction(
                partial(self._document, n=sent, unreadable=unreadable), rollback, chat=False
            )
            sent += 1
            await anyio.sleep(max(0.0, start + sent / rate - time.monotonic()))

    async def poison(self, count: int) -> None:
        """Rows no worker can deliver: undecodable payloads in chat rooms, unknown document
        types, and messages naming a document of another user (whose status must stay)."""
        for n in range(count):
            await self._retrying(partial(self._poison_one, n=n))

    async def _poison_one(self, conn: AsyncConnection, *, n: int) -> None:
        room = self.rng.choice(self.rooms)
        undecodable = await conn.execute(
            text(
                "INSERT INTO outbox (type, key, payload) VALUES ('message.created', :room,"
                " ('{\"n\": ' || repeat('9', 5000) || '}')::jsonb) RETURNING id"
            ),
            {"room": room},
        )
        unknown = await outbox.enqueue(conn, "document.summarize.v9", {"documentId": "x"})
        victim = await self._insert_document(conn, "victim-user", n, unreadable=False)
        foreign = await outbox.enqueue(conn, PREPROCESS, {"documentId": victim, "userId": "user-1"})
        await conn.commit()
        self.ledger.poison[undecodable.scalar_one()] = "undecodable payload"
        self.ledger.poison[unknown] = "unknown document type"
        self.ledger.foreign[foreign] = victim

    async def _retrying(self, write: Callable[[AsyncConnection], Awaitable[None]]) -> None:
        while True:
            try:
                async with self.engine.connect() as conn:
                    await write(conn)
                return
            except _BROKEN:
                await anyio.sleep(0.5)

    async def _chat(self, conn: AsyncConnection, written: _Written, *, rooms: list[str]) -> None:
        for room in rooms:
            payload: dict[str, JSONValue] = {"room": room, "sent": time.time()}
            written.append((await outbox.enqueue(conn, "message.created", payload, key=room), room))
            if self.rng.random() < 0.3:
                await anyio.sleep(self.rng.random() * 0.01)  # commits interleave

    async def _document(
        self, conn: AsyncConnection, written: _Written, *, n: int, unreadable: bool
    ) -> None:
        user = f"user-{n % 5}"
        document = await self._insert_document(conn, user, n, unreadable)
        kind = "unreadable" if unreadable else "readable"
        outbox_id = await outbox.enqueue(conn, PREPROCESS, {"documentId": document, "userId": user})
        written.append((outbox_id, f"{document} {kind}"))

    async def _insert_document(
        self, conn: AsyncConnection, user: str, n: int, unreadable: bool
    ) -> str:
        content_type, content = ("image/png", _PNG) if unreadable else ("text/markdown", b"")
        if not unreadable:
            content = _MARKDOWN.format(n=n).encode()
        found = await conn.execute(
            text(
                "INSERT INTO documents (user_id, title, content_type, content)"
                " VALUES (:user, :title, :content_type, :content) RETURNING id::text"
            ),
            {"user": user, "title": f"Notes {n}", "content_type": content_type, "content": content},
        )
        return str(found.scalar_one())

    async def _transaction(
        self,
        write: Callable[[AsyncConnection, _Written], Awaitable[None]],
        rollback: bool,
        *,
        chat: bool,
    ) -> None:
        """Run one transaction; note its rows as committed, rolled back, or unknown.

        ``write`` appends (outbox id, what) for each row as it goes, so the rows of a
        transaction that breaks halfway are known too (they must never be delivered)."""
        self.ledger.transactions += 1
        written: _Written = []
        committing = 0.0
        try:
            async with self.engine.connect() as conn:
                await write(conn, written)
                if rollback:
                    await conn.rollback()
                    self.ledger.rolled_back_on_purpose += 1
                    self.ledger.rolled_back.update(i for i, _ in written)
                    return
                committing = time.time()
                try:
                    await conn.commit()
                except _BROKEN as exc:
                    raise _CommitBroke from exc
        except _CommitBroke:
            self.ledger.broken_transactions += 1
            for outbox_id, what in written:
                if chat:
                    self.ledger.chat_unknown[outbox_id] = (what, committing)
                else:
                    self.ledger.documents_unknown[outbox_id] = _document_note(what)
            await anyio.sleep(0.5)
            return
        except _BROKEN:
            self.ledger.broken_transactions += 1
            self.ledger.rolled_back.update(i for i, _ in written)
            await anyio.sleep(0.5)
            return
        for outbox_id, what in written:
            if chat:
                self.ledger.chat[outbox_id] = (what, committing)
            else:
                self.ledger.documents[outbox_id] = _document_note(what)


def _document_note(what: str) -> tuple[str, str]:
    document, kind = what.split(" ")
    return document, kind


async def settle_unknown(engine: AsyncEngine, ledger: Ledger) -> tuple[int, int]:
    """Look up the rows of transactions whose COMMIT broke off; move each to committed or
    rolled back. Returns (committed, rolled back) counts."""
    ids = list(ledger.chat_unknown) + list(ledger.documents_unknown)
    if not ids:
        return 0, 0
    async with engine.connect() as conn:
        found = await conn.execute(text("SELECT id FROM outbox WHERE id = ANY(:ids)"), {"ids": ids})
        present = {row[0] for row in found}
    for outbox_id, chat in ledger.chat_unknown.items():
        if outbox_id in present:
            ledger.chat[outbox_id] = chat
        else:
            ledger.rolled_back.add(outbox_id)
    for outbox_id, document in ledger.documents_unknown.items():
        if outbox_id in present:
            ledger.documents[outbox_id] = document
        else:
            ledger.rolled_back.add(outbox_id)
    ledger.chat_unknown.clear()
    ledger.documents_unknown.clear()
    return len(present), len(ids) - len(present)


async def subscribe(
    redis_url: str,
    ledger: Ledger,
    on_arrival: Callable[[Arrival], None] | None = None,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on every room's channel until cancelled, reconnecting whenever Redis goes;
    the spans without a subscription go to ``ledger.subscriber_gaps``. Each message goes to
    ``on_arrival``, by default appended to ``ledger.arrivals``."""
    record = on_arrival or ledger.arrivals.append
    started = False
    alive = time.time()
    while True:
        client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=1.0)
        pubsub = client.pubsub()
        try:
            await pubsub.psubscribe(f"{CHANNEL_PREFIX}*")
            while (await pubsub.get_message(timeout=1.0)) is None:
                pass  # the subscription's confirmation
            now = time.time()
            if started:
                ledger.subscriber_gaps.append((alive, now))
            else:
                ledger.subscribed_at, started = now, True
                task_status.started()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                alive = time.time()
                if message is not None:
                    envelope = orjson.loads(message["data"])
                    room = message["channel"].decode()[len(CHANNEL_PREFIX) :]
                    record(Arrival(alive, envelope["id"], room, envelope["seq"]))
        except (RedisError, OSError):
            pass
        finally:
            with anyio.CancelScope(shield=True):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                await client.aclose()
        await anyio.sleep(0.05)
