"""Enqueue throughput: outbox.enqueue / enqueue_many against raw asyncpg inserts.

    python bench/enqueue_throughput.py [--messages 20000] [--batch 500]

Uses DATABASE_URL if it answers, else a throwaway local PostgreSQL, in a scratch database.
Each row is a small chat payload. Compared, on the same table:

* one message per transaction: ``outbox.enqueue`` on an AsyncConnection, against the plain
  INSERT through SQLAlchemy's AsyncConnection and through asyncpg directly;
* ``--batch`` messages per transaction: ``outbox.enqueue_many``, against asyncpg
  ``executemany(INSERT ...)`` and asyncpg ``INSERT ... SELECT FROM unnest(arrays)``.

Prints rows per second; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Awaitable, Callable

import asyncpg
from scratch import run_with_scratch_database
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from outbox import NewMessage, async_database_url, enqueue, enqueue_many
from outbox.primitives.urls import libpq_dsn

RAW_INSERT = "INSERT INTO outbox (type, key, payload) VALUES ($1, $2, $3::jsonb)"
RAW_UNNEST = (
    "INSERT INTO outbox (type, key, payload)"
    " SELECT t, k, p::jsonb FROM unnest($1::text[], $2::text[], $3::text[]) AS m(t, k, p)"
)


def payload(i: int) -> dict[str, object]:
    return {"roomId": f"room-{i % 50}", "messageId": i, "body": "hello " * 8}


async def rate(label: str, count: int, run: Callable[[], Awaitable[None]]) -> None:
    started = time.perf_counter()
    await run()
    elapsed = time.perf_counter() - started
    print(f"  {label:<46} {count / elapsed:10,.0f} rows/s")


async def main(url: str, messages: int, batch: int) -> None:
    engine: AsyncEngine = create_async_engine(async_database_url(url))
    raw = await asyncpg.connect(libpq_dsn(url))
    singles = max(messages // 10, 100)

    async def outbox_single() -> None:
        for i in range(singles):
            async with engine.begin() as conn:
                await enqueue(conn, "message.created", payload(i), key=f"room-{i % 50}")

    async def sqlalchemy_single() -> None:
        for i in range(singles):
            async with engine.begin() as conn:
                row = ("message.created", f"r{i % 50}", json.dumps(payload(i)))
                await conn.exec_driver_sql(RAW_INSERT, row)

    async def raw_single() -> None:
        for i in range(singles):
            async with raw.transaction():
                await raw.execute(
                    RAW_INSERT, "message.created", f"r{i % 50}", json.dumps(payload(i))
                )

    async def outbox_batches() -> None:
        for start in range(0, messages, batch):
            rows = [
                NewMessage("message.created", payload(i), key=f"room-{i % 50}")
                for i in range(start, min(start + batch, messages))
            ]
            async with engine.begin() as conn:
                await enqueue_many(conn, rows)

    def raw_rows(start: int) -> list[tuple[str, str, str]]:
        end = min(start + batch, messages)
        return [
            ("message.created", f"room-{i % 50}", json.dumps(payload(i))) for i in range(start, end)
        ]

    async def raw_executemany() -> None:
        for start in range(0, messages, batch):
            async with raw.transaction():
                await raw.executemany(RAW_INSERT, raw_rows(start))

    async def raw_unnest() -> None:
        for start in range(0, messages, batch):
            rows = raw_rows(start)
            async with raw.transaction():
                await raw.execute(RAW_UNNEST, *(list(column) for column in zip(*rows, strict=True)))

    try:
        print(f"one message per transaction ({singles:,} transactions):")
        for _ in range(2):  # alternate, twice, so neither side gets only a cold or warm cache
            await rate("outbox.enqueue (AsyncConnection)", singles, outbox_single)
            await rate("SQLAlchemy exec_driver_sql(INSERT)", singles, sqlalchemy_single)
            await rate("asyncpg execute(INSERT)", singles, raw_single)
        print(f"{batch} messages per transaction ({messages:,} messages):")
        for _ in range(2):
            await rate("outbox.enqueue_many (AsyncConnection)", messages, outbox_batches)
            await rate("asyncpg executemany(INSERT)", messages, raw_executemany)
            await rate("asyncpg INSERT ... SELECT FROM unnest", messages, raw_unnest)
    finally:
        await raw.close()
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    run_with_scratch_database(lambda url: main(url, args.messages, args.batch))
