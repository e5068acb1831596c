"""What the wake-up NOTIFY costs producers: commit rate with the trigger on and off.

    python bench/notify_overhead.py [--seconds 5] [--producers 1 4 8]

Uses DATABASE_URL if it answers, else a throwaway local PostgreSQL, in a scratch database.
Each producer is its own asyncpg connection committing one-row transactions (the worst case
for NOTIFY: one notification per transaction) for ``--seconds``; a worker-like connection
LISTENs meanwhile and counts what it receives. Runs alternate: trigger enabled, then
``ALTER TABLE outbox DISABLE TRIGGER outbox_notify_on_insert``, twice each. A last run
shows that a 500-row batch transaction sends a single notification. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import asyncpg
from scratch import run_with_scratch_database

from outbox.primitives.urls import libpq_dsn
from outbox.runtime.wakeup import NOTIFY_CHANNEL

INSERT = "INSERT INTO outbox (type, key, payload) VALUES ('message.created', $1, $2::jsonb)"
TRIGGER = "outbox_notify_on_insert"


async def produce(url: str, seconds: float) -> int:
    conn = await asyncpg.connect(url)
    body = json.dumps({"text": "hello " * 8})
    done = 0
    deadline = time.perf_counter() + seconds
    try:
        while time.perf_counter() < deadline:
            async with conn.transaction():
                await conn.execute(INSERT, f"room-{done % 50}", body)
            done += 1
    finally:
        await conn.close()
    return done


async def one_run(url: str, producers: int, seconds: float, listener: asyncpg.Connection) -> None:
    received = 0

    def count(*_: object) -> None:
        nonlocal received
        received += 1

    await listener.add_listener(NOTIFY_CHANNEL, count)
    started = time.perf_counter()
    commits = sum(await asyncio.gather(*(produce(url, seconds) for _ in range(producers))))
    elapsed = time.perf_counter() - started
    await asyncio.sleep(0.2)
    await listener.remove_listener(NOTIFY_CHANNEL, count)
    print(f"    {commits / elapsed:9,.0f} commits/s   notifications received: {received:,}")


async def main(url: str, seconds: float, producer_counts: list[int]) -> None:
    dsn = libpq_dsn(url)
    admin = await asyncpg.connect(dsn)
    listener = await asyncpg.connect(dsn)
    try:
        for producers in producer_counts:
            print(f"{producers} producer(s), one row per transaction, {seconds:g}s per run:")
            for _ in range(2):
                for state in ("ENABLE", "DISABLE"):
                    await admin.execute(f"ALTER TABLE outbox {state} TRIGGER {TRIGGER}")
                    print(f"  trigger {state.lower()}d:")
                    await one_run(dsn, producers, seconds, listener)
                    await admin.execute("TRUNCATE outbox")
        await admin.execute(f"ALTER TABLE outbox ENABLE TRIGGER {TRIGGER}")
        received: list[str] = []
        await listener.add_listener(NOTIFY_CHANNEL, lambda *a: received.append(a[2]))
        async with admin.transaction():
            await admin.execute(
                "INSERT INTO outbox (type, payload)"
                " SELECT 'message.created', '{}'::jsonb FROM generate_series(1, 500)"
            )
            for _ in range(3):
                await admin.execute(INSERT, "room", "{}")
        await asyncio.sleep(0.3)
        print(f"one transaction, 4 inserting statements (503 rows): {len(received)} notification")
    finally:
        await listener.close()
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--producers", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()
    run_with_scratch_database(lambda url: main(url, args.seconds, args.producers))
