"""What one refresh of the dashboard's overview costs on a large table.

    python bench/dashboard_overview.py [--published 1000000] [--pending 100000] [--repeat 30]

Uses DATABASE_URL if it answers, else a throwaway local PostgreSQL. Creates a scratch
database and fills it: ``--published`` rows published over the last 24 hours (the history
the overview must not read), ``--pending`` rows pending over three type prefixes, 2,000
dead and 200 in progress under four workers; then VACUUM ANALYZE. Times, through an asyncpg
pool as the dashboard runs it, ``outbox.storage.overview.overview``: the first reading of a
process (a 60 s published window) and steady refreshes (each reads what was published
since the previous one, as the dashboard's sampler does), plus the EXPLAIN ANALYZE figures
of the per-prefix statement. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from measure import percentile
from scratch import run_with_scratch_database

from outbox.storage.overview import overview
from outbox.storage.pool import create_pool

FILL = [
    # $1 published rows, one a 24-hour spread apart; then $1 pending rows over three prefixes.
    """INSERT INTO outbox (type, key, payload, status, published_at, created_at)
       SELECT 'message.created', 'room-' || (g % 500), '{"text": "x"}', 'published',
              now() - (g * interval '86400 seconds') / $1, now() - interval '1 day'
       FROM generate_series(1, $1::int) g""",
    """INSERT INTO outbox (type, key, payload, status, next_attempt_at)
       SELECT (ARRAY['message.created', 'document.preprocess.v1', 'room.updated'])[1 + g % 3],
              'k-' || (g % 1000), '{}', 'pending', now() - (g % 3600) * interval '1 second'
       FROM generate_series(1, $1::int) g""",
]


async def bench(url: str, published: int, pending: int, repeat: int) -> None:
    pool = await create_pool(url, max_size=2, command_timeout=None)
    try:
        started = time.perf_counter()
        async with pool.acquire() as conn:
            await conn.execute(FILL[0], published)
            await conn.execute(FILL[1], pending)
            await conn.execute(
                """INSERT INTO outbox (type, payload, status, error)
                   SELECT 'message.created', '{}', 'dead', 'boom ' || g
                   FROM generate_series(1, 2000) g"""
            )
            await conn.execute(
                """INSERT INTO outbox (type, payload, status, locked_by, locked_until, attempts)
                   SELECT 'message.created', '{}', 'in_progress', 'worker-' || (g % 4),
                          now() + interval '30 seconds', 1
                   FROM generate_series(1, 200) g"""
            )
            await conn.execute("VACUUM ANALYZE outbox")
        print(
            f"filled {published:,} published + {pending:,} pending + 2,000 dead + 200 in"
            f" progress in {time.perf_counter() - started:.1f}s"
        )
        version = await pool.fetchval("SHOW server_version")
        print(f"PostgreSQL {version}")

        first = time.perf_counter()
        reading = await overview(pool)
        first_ms = (time.perf_counter() - first) * 1000
        timings = []
        for _ in range(repeat):
            await asyncio.sleep(0.2)
            begun = time.perf_counter()
            reading = await overview(pool, since=reading.taken_at)
            timings.append((time.perf_counter() - begun) * 1000)
        timings.sort()
        print(f"first reading (60 s published window): {first_ms:.1f} ms")
        print(
            f"refreshes x{repeat}: median {statistics.median(timings):.1f} ms,"
            f" p95 {percentile(timings, 95):.1f} ms, max {timings[-1]:.1f} ms"
        )
        print(
            "totals:",
            {p.prefix: (p.pending, p.in_progress, p.dead) for p in reading.prefixes},
            f"lease holders {len(reading.lease_holders)}",
        )
        from outbox.storage import statements as sql
        from outbox.storage.execution import _compiled

        compiled = _compiled(sql.OVERVIEW_BY_PREFIX)
        now = reading.taken_at
        args = compiled.arguments({"now": now, "since": now, "until": now})
        plan = await pool.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {compiled.sql}", *args)
        top = (json.loads(plan) if isinstance(plan, str) else plan)[0]
        print(
            f"per-prefix statement: {top['Execution Time']:.1f} ms executing,"
            f" shared buffers hit {top['Plan'].get('Shared Hit Blocks', 0)}"
            f" read {top['Plan'].get('Shared Read Blocks', 0)}"
        )
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--published", type=int, default=1_000_000)
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()

    async def run(url: str) -> None:
        await bench(url, args.published, args.pending, args.repeat)

    run_with_scratch_database(run)


if __name__ == "__main__":
    main()
