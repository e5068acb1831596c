"""The traffic of one run inside an event loop of its own (an anyio blocking portal).

The conductor (``reliability.chaos``) drives processes and servers from the main thread,
and reaches the database and the traffic through :class:`TrafficRun`'s methods, called
through the portal.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
import anyio.abc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from outbox.primitives.urls import async_database_url
from reliability.ledger import Ledger
from reliability.traffic import Producer, subscribe
from reliability.verdict import Facts

__all__ = ["TrafficRun"]

CHAT_LANES = 4


class TrafficRun:
    """Producers and the subscriber; counts and facts from the database on request."""

    def __init__(self, database_url: str, redis_url: str, seed: int, rooms: int) -> None:
        self.database_url, self.redis_url = database_url, redis_url
        self.ledger = Ledger()
        self.rng = random.Random(seed)
        self.rooms = [f"room-{n}" for n in range(rooms)]
        self.producing = True
        self.chat_target = 0
        self.lanes_running = 0
        self._engine: AsyncEngine | None = None
        self._finish: anyio.Event | None = None

    @property
    def engine(self) -> AsyncEngine:
        assert self._engine is not None
        return self._engine

    @property
    def producer(self) -> Producer:
        return Producer(self.engine, self.ledger, self.rng, self.rooms)

    async def run(
        self,
        chat_rate: float,
        chat_target: int,
        document_rate: float,
        unreadable_share: float,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Subscribe, then produce until :attr:`producing` is false and at least
        ``chat_target`` chat messages are committed; run until :meth:`finish`."""
        self._engine = create_async_engine(
            async_database_url(self.database_url), pool_size=CHAT_LANES + 4, max_overflow=8
        )
        self._finish = anyio.Event()
        self.chat_target = chat_target
        try:
            async with anyio.create_task_group() as group:
                await group.start(subscribe, self.redis_url, self.ledger)
                for _ in range(CHAT_LANES):
                    group.start_soon(self._lane, self.producer.chat_lane, chat_rate / CHAT_LANES)
                documents = partial(self.producer.document_lane, unreadable_share=unreadable_share)
                group.start_soon(self._lane, documents, document_rate)
                task_status.started()
                await self._finish.wait()
                group.cancel_scope.cancel()
        finally:
            await self.engine.dispose()

    async def finish(self) -> None:
        assert self._finish is not None
        self._finish.set()

    async def burst(self, size: int, rollback: bool) -> None:
        await self.producer.burst(size, rollback=rollback)

    async def poison(self, count: int) -> None:
        await self.producer.poison(count)

    async def rows_held(self, worker_id: str) -> int:
        """Rows leased to ``worker_id`` now."""
        async with self.engine.connect() as conn:
            found = await conn.execute(
                text("SELECT count(*) FROM outbox WHERE status = 'in_progress' AND locked_by = :w"),
                {"w": worker_id},
            )
            return int(found.scalar_one())

    async def open_rows(self) -> int:
        """Rows pending or in progress."""
        async with self.engine.connect() as conn:
            found = await conn.execute(
                text("SELECT count(*) FROM outbox WHERE status IN ('pending', 'in_progress')")
            )
            return int(found.scalar_one())

    async def terminate(self, worker_id: str) -> int:
        """Cut every database connection of ``worker_id``; how many were cut."""
        async with self.engine.connect() as conn:
            found = await conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name IN (:pool, :listen)"
                ),
                {"pool": f"outbox {worker_id}", "listen": f"outbox-listen {worker_id}"},
            )
            return int(found.scalar_one())

    async def settings(self) -> str:
        async with self.engine.connect() as conn:
            names = ("fsync", "synchronous_commit", "full_page_writes", "autovacuum")
            values = [(await conn.execute(text(f"SHOW {name}"))).scalar_one() for name in names]
        return ", ".join(f"{n}={v}" for n, v in zip(names, values, strict=True))

    async def facts(self) -> Facts:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT id, type, status, extract(epoch FROM published_at)::float8, error"
                    " FROM outbox"
                )
            )
            documents = await conn.execute(
                text("SELECT id::text, processing_status, processing_error FROM documents")
            )
            return Facts(
                rows={r[0]: (r[1], r[2], r[3], r[4]) for r in rows},
                documents={r[0]: (r[1], r[2]) for r in documents},
            )

    async def _lane(
        self, produce: Callable[[float, Callable[[], bool]], Awaitable[None]], rate: float
    ) -> None:
        self.lanes_running += 1
        try:
            await produce(rate, self._until)
        finally:
            self.lanes_running -= 1

    def _until(self) -> bool:
        return not self.producing and len(self.ledger.chat) >= self.chat_target
