"""Per-room order end to end: chat workers as real processes, real PostgreSQL and Redis.

A subscriber records every envelope; per room, the first delivery of each message must carry
a position (``seq``) above every position that room delivered before, and a redelivery (after
a kill) the same position as its first delivery.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from devservers import LocalServices
from outbox import NewMessage, enqueue, enqueue_many
from tests.workerproc import Received, WorkerProcess, subscribed, wait_until

pytestmark = pytest.mark.anyio

CHAT = "workers.chat"


class Rollback(Exception):
    """Raised inside a producer transaction to roll it back on purpose."""


@pytest.fixture
def start_worker(database_url: str, services: LocalServices, tmp_path: Path) -> Iterator[Any]:
    started: list[WorkerProcess] = []

    def start(**env: str) -> WorkerProcess:
        name = f"chat-{len(started)}"
        worker = WorkerProcess(
            CHAT,
            {
                "DATABASE_URL": database_url,
                "REDIS_URL": services.redis_url,
                "PUBSUB_MODE": "room",
                "WORKER_ID": name,
                "LOCK_SECONDS": "2",
                "REAP_INTERVAL_SECONDS": "0.5",
                "POLL_INTERVAL_MS": "200",
                **env,
            },
            tmp_path / f"{name}.log",
        )
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


def check_room_order(received: Received) -> tuple[int, int]:
    """Assert per-room order; return (first deliveries, redeliveries)."""
    last: dict[str, int] = {}
    first_seq: dict[int, int] = {}
    redelivered = 0
    for channel, envelope, _ in received.items:
        id_, seq = envelope["id"], envelope["seq"]
        assert isinstance(seq, int), envelope
        assert channel == f"conv:{envelope['key']}"
        if id_ in first_seq:
            assert seq == first_seq[id_], f"redelivery of {id_} changed position"
            redelivered += 1
            continue
        room = envelope["key"]
        assert seq > last.get(room, 0), f"{room}: {id_} at {seq} after {last[room]}"
        last[room] = seq
        first_seq[id_] = seq
    return len(first_seq), redelivered


async def positions(engine: AsyncEngine) -> dict[int, tuple[str, int | None]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT id, status, seq FROM outbox"))
        return {row.id: (row.status, row.seq) for row in rows}


async def test_four_workers_keep_every_room_in_order_under_interleaved_commits_and_a_kill(
    engine: AsyncEngine, services: LocalServices, start_worker: Any
) -> None:
    rooms = [f"room-{n}" for n in range(200)]
    committed: list[int] = []
    rolled_back: list[int] = []

    async def producer(seed: int, count: int) -> None:
        rng = random.Random(seed)
        written = 0
        while written < count:
            first = [NewMessage("message.created", {}, key=rng.choice(rooms))]
            second = [
                NewMessage("message.created", {}, key=rng.choice(rooms))
                for _ in range(rng.randint(0, 3))
            ]
            doomed = rng.random() < 0.05
            taken: list[int] = []
            try:
                async with engine.begin() as conn:
                    taken += await enqueue_many(conn, first)
                    await anyio.sleep(rng.random() * 0.004)  # commits interleave
                    taken += await enqueue_many(conn, second) if second else []
                    if doomed:
                        raise Rollback
            except Rollback:
                rolled_back.extend(taken)
                continue
            committed.extend(taken)
            written += len(taken)

    workers = [start_worker() for _ in range(4)]
    async with subscribed(services.redis_url, "conv:*") as received:
        async with anyio.create_task_group() as producers:
            for seed in range(8):
                producers.start_soon(producer, seed, 2_500)
            await wait_until(lambda: _some(received, 4_000), 60, "a first part delivered")
            workers[0].signal(signal.SIGKILL)
            workers[0].wait(timeout=10)
            start_worker()
        assert len(committed) >= 20_000
        await received.wait_for_ids(committed, timeout=120)
        await anyio.sleep(0.3)  # a stray late delivery would show now

    first, redelivered = check_room_order(received)
    assert first == len(committed)
    assert set(received.ids) == set(committed), "a rolled-back message was sent"
    assert not set(received.ids) & set(rolled_back)
    rows = await positions(engine)
    by_id = {envelope["id"]: envelope["seq"] for _, envelope, _ in received.items}
    assert {i: rows[i][1] for i in committed} == {i: by_id[i] for i in committed}
    print(f"\n{first} messages in order over {len(rooms)} rooms, {redelivered} redelivered")


async def _some(received: Received, count: int) -> bool:
    return len(received.items) >= count


async def test_a_held_transaction_delays_nobody_and_lands_after_its_room(
    engine: AsyncEngine, services: LocalServices, start_worker: Any
) -> None:
    start_worker()
    async with subscribed(services.redis_url, "conv:*") as received:
        async with engine.connect() as held:
            await held.begin()
            late = await enqueue(held, "message.created", {"n": "late"}, key="R")
            async with engine.begin() as conn:
                flowing = await enqueue_many(
                    conn,
                    [
                        NewMessage("message.created", {"n": n}, key=k)
                        for n in range(5)
                        for k in "RS"
                    ],
                )
            started = time.monotonic()
            await received.wait_for_ids(flowing, timeout=10)
            waited = time.monotonic() - started
            await anyio.sleep(2 - waited if waited < 2 else 0)
            assert late not in received.ids  # still uncommitted: nothing held back for it
            await held.commit()
        await received.wait_for_ids([late], timeout=10)

    first, _ = check_room_order(received)
    assert first == 11
    seq_of = {envelope["id"]: envelope["seq"] for _, envelope, _ in received.items}
    before = [seq_of[i] for _, e, _ in received.items if e["key"] == "R" and (i := e["id"]) != late]
    assert len(before) == 5 and seq_of[late] > max(before)


async def test_a_hot_room_drains_at_no_less_than_a_third_of_the_unkeyed_rate(
    engine: AsyncEngine, services: LocalServices, start_worker: Any
) -> None:
    for _ in range(4):
        start_worker(PUBSUB_MODE="global", BATCH_SIZE="200")

    async def drain(key: str | None) -> float:
        async with subscribed(services.redis_url, "chat:message") as received:
            started = time.monotonic()
            async with engine.begin() as conn:
                ids = await enqueue_many(
                    conn, [NewMessage("message.created", {"n": n}, key=key) for n in range(20_000)]
                )
            await received.wait_for_ids(ids, timeout=120)
            elapsed = time.monotonic() - started
        if key is not None:
            check_global_order(received)
        return 20_000 / elapsed

    unkeyed = await drain(None)
    hot = await drain("hot-room")
    print(f"\nunkeyed {unkeyed:,.0f} msg/s, one hot room {hot:,.0f} msg/s ({hot / unkeyed:.2f}x)")
    assert hot >= unkeyed / 3


def check_global_order(received: Received) -> None:
    seqs = [envelope["seq"] for _, envelope, _ in received.items]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
