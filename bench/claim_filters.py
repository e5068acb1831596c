"""The filtered claim against the unfiltered one, on the worker's hot path, table by table.

    python bench/claim_filters.py [--claims 100] [--backlog 1000000]

Uses DATABASE_URL if it answers, else a throwaway local PostgreSQL; works in a scratch
database with autovacuum off on the outbox table (so no automatic ANALYZE lands mid-run).
Claims go through an asyncpg pool from ``outbox.storage.pool.create_pool`` on one connection,
with prepared statements reused as in a worker. Each claim takes 100 rows in a transaction
that is rolled back, so every claim sees the same table. The filtered claim (the chat
worker's ``exclude document.``, or the document worker's ``include document.``) and the
unfiltered one alternate, ``--claims`` of each per table:

* 50,000 pending rows over 10, 100, 1,000 and 5,000 distinct types (none of them
  ``document.``), their ages spread over an hour;
* 1,000 chat rows behind ``--backlog`` older pending ``document.`` rows (exclude), and
  1,000 document rows behind as many older chat rows (include);
* stale plans: both claims prepared and run on 1,000 chat rows (past PostgreSQL's five custom
  plans, so the generic plan is cached), then 100,000 older ``document.`` rows committed and
  no ANALYZE.

Prints p50 and p95 in milliseconds and the ratio filtered / unfiltered; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from scratch import run_with_scratch_database

from outbox import claim_batch
from outbox.storage.pool import create_pool

Claim = Callable[[Any], Awaitable[int]]

FILL = """
INSERT INTO outbox (type, payload, next_attempt_at, created_at)
SELECT $1 || (g % $2) || $3, '{}',
       now() - $4 * random() * interval '1 hour' - $5 * interval '1 hour',
       now() - interval '2 hours'
FROM generate_series(1, $6::int) g
"""


async def fill(
    conn: Any,
    count: int,
    *,
    prefix: str,
    types: int = 1,
    suffix: str = "",
    spread: float = 1.0,
    older_by_hours: float = 0.0,
) -> None:
    """``count`` pending rows of ``types`` distinct types ``{prefix}{n}{suffix}``."""
    await conn.execute(FILL, prefix, types, suffix, spread, older_by_hours, count)


async def settle(conn: Any, *, analyze: bool = True) -> None:
    await conn.execute("VACUUM (ANALYZE) outbox" if analyze else "VACUUM outbox")


async def once(conn: Any, claim: Claim) -> float:
    transaction = conn.transaction()
    await transaction.start()
    try:
        started = time.perf_counter()
        count = await claim(conn)
        elapsed = (time.perf_counter() - started) * 1000
    finally:
        await transaction.rollback()
    if count != 100:
        raise RuntimeError(f"a claim took {count} rows, not 100")
    return elapsed


async def alternate(conn: Any, filtered: Claim, unfiltered: Claim, claims: int) -> str:
    ours: list[float] = []
    base: list[float] = []
    for i in range(claims):
        pair = ((filtered, ours), (unfiltered, base))
        for claim, samples in pair if i % 2 == 0 else reversed(pair):
            samples.append(await once(conn, claim))
    p50, b50 = statistics.median(ours), statistics.median(base)
    p95 = statistics.quantiles(ours, n=20)[-1]
    b95 = statistics.quantiles(base, n=20)[-1]
    target = "ok" if p50 <= max(1.5 * b50, b50 + 1.0) and p50 <= 10.0 else "MISSED"
    return f"{p50:8.2f} {p95:8.2f} | {b50:8.2f} {b95:8.2f} | {p50 / b50:5.2f}x  {target}"


def claim_with(**filters: Any) -> Claim:
    async def claim(conn: Any) -> int:
        rows = await claim_batch(conn, limit=100, lock_seconds=30, worker_id="bench", **filters)
        return len(rows)

    return claim


CHAT = claim_with(exclude_type_prefix="document.")
DOCUMENTS = claim_with(include_type_prefix="document.")
EVERYTHING = claim_with()


async def main(url: str, claims: int, backlog: int) -> None:
    pool = await create_pool(url, max_size=1, command_timeout=None)  # 1M-row fills
    async with pool.acquire() as conn:
        await conn.execute("ALTER TABLE outbox SET (autovacuum_enabled = false)")
        print(f"{'table':<58} {'filtered p50/p95 ms':>19} | {'unfiltered p50/p95':>17} | ratio")

        async def row(label: str, filtered: Claim) -> None:
            print(f"{label:<58} {await alternate(conn, filtered, EVERYTHING, claims)}", flush=True)

        for types in (10, 100, 1000, 5000):
            await conn.execute("TRUNCATE outbox")
            await fill(conn, 50_000, prefix="app", types=types, suffix=".changed")
            await settle(conn)
            await row(f"50k pending rows over {types:,} types (exclude document.)", CHAT)

        await conn.execute("TRUNCATE outbox")
        await fill(conn, backlog, prefix="document.preprocess.v", older_by_hours=1)
        await fill(conn, 1000, prefix="message.created.v")
        await settle(conn)
        await row(f"1,000 chat rows behind {backlog:,} older document rows", CHAT)

        await conn.execute("TRUNCATE outbox")
        await fill(conn, backlog, prefix="message.created.v", older_by_hours=1)
        await fill(conn, 1000, prefix="document.preprocess.v")
        await settle(conn)
        await row(f"1,000 document rows behind {backlog:,} older chat rows", DOCUMENTS)

        await conn.execute("TRUNCATE outbox")
        await fill(conn, 1000, prefix="message.created.v")
        await settle(conn)
        for _ in range(10):  # past the five custom plans: the generic plan is cached
            await once(conn, CHAT)
            await once(conn, EVERYTHING)
        await fill(conn, 100_000, prefix="document.preprocess.v", older_by_hours=1)
        await settle(conn, analyze=False)
        await row("plans cached on 1k rows, then 100k older document rows", CHAT)
    await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--claims", type=int, default=100)
    parser.add_argument("--backlog", type=int, default=1_000_000)
    args = parser.parse_args()
    run_with_scratch_database(lambda url: main(url, args.claims, args.backlog))
