"""``outbox.storage.admin`` in-process: exact rates with a stepped clock, retries at most once per
row, argument contracts. (The CLI's own tests are in ``test_cli.py``.)"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.primitives.errors import InvalidArgumentError
from outbox.primitives.urls import libpq_dsn
from outbox.storage.admin import (
    DeadFilter,
    PrefixSample,
    PurgeTarget,
    database_now,
    list_dead,
    live_sample,
    purge,
    retry_dead,
)

pytestmark = pytest.mark.anyio


async def rows(engine: AsyncEngine, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run ``query`` in its own transaction; its rows, if it returns any."""
    async with engine.begin() as conn:
        result = await conn.exec_driver_sql(query, params)
        return [tuple(r) for r in result] if result.returns_rows else []


async def test_live_sample_rates_and_lags_over_the_window(engine: AsyncEngine) -> None:
    await rows(engine, "INSERT INTO outbox (type, payload, status) VALUES ('chat.x', '{}', 'dead')")
    start = await database_now(engine)
    first = await live_sample(engine, now=start)
    assert (first.taken_at, first.max_id, first.dead) == (start, 1, 1)
    assert first.published_per_second is None and first.lag_p50 is None
    assert first.by_prefix == {}

    # Four rows published 1..4 s into a 10 s window, each 1..4 s after it was created.
    await rows(
        engine,
        "INSERT INTO outbox (type, payload, status, published_at, created_at)"
        " SELECT 'message.created', '{}', 'published', $1::timestamptz + g * interval '1 second',"
        "        $1::timestamptz + g * interval '1 second' - g * interval '1 second'"
        " FROM generate_series(1, 4) g",
        start,
    )
    await rows(engine, "INSERT INTO outbox (type, payload, status) VALUES ('chat.x', '{}', 'dead')")
    await rows(engine, "INSERT INTO outbox (type, payload) VALUES ('document.p.v1', '{}')")

    second = await live_sample(engine, first, now=start + timedelta(seconds=10))

    assert second.max_id == 7
    assert (second.pending, second.in_progress, second.dead) == (1, 0, 2)
    assert second.enqueued_per_second == pytest.approx(0.6)
    assert second.published_per_second == pytest.approx(0.4)
    assert second.dead_per_second == pytest.approx(0.1)
    assert second.lag_p50 == pytest.approx(2.5)
    assert second.lag_p99 == pytest.approx(3.97)
    assert second.by_prefix == {
        "document.": PrefixSample(pending=1, in_progress=0, published_per_second=0.0),
        "message.": PrefixSample(pending=0, in_progress=0, published_per_second=0.4),
    }


async def test_retry_takes_each_row_once_even_if_it_dies_again_meanwhile(
    engine: AsyncEngine, database_url: str
) -> None:
    ids = [
        r[0]
        for r in await rows(
            engine,
            "INSERT INTO outbox (type, key, payload, status, created_at)"
            " SELECT 'chat.x', '', '{}', 'dead', now() - g * interval '1 minute'"
            " FROM generate_series(1, 5) g RETURNING id",
        )
    ]
    batches: list[int] = []
    with psycopg.connect(libpq_dsn(database_url), autocommit=True) as other:

        def dies_again(batch: int, total: int) -> None:
            """Every retried row fails at once: dead again, one more "x" in its key."""
            batches.append(batch)
            other.execute(
                "UPDATE outbox SET status = 'dead', key = key || 'x' WHERE status = 'pending'"
            )

        result = await retry_dead(engine, DeadFilter(), batch_size=2, on_batch=dies_again)

    assert result.retried == 5
    assert batches == [2, 2, 1]
    after = await rows(engine, "SELECT id, status, key FROM outbox ORDER BY id")
    assert after == [(i, "dead", "x") for i in ids]


async def test_the_filters_select_on_dead_at_and_literal_prefixes(engine: AsyncEngine) -> None:
    start = await database_now(engine)
    made = {
        name: (
            await rows(
                engine,
                "INSERT INTO outbox (type, payload, status, created_at, dead_at)"
                " VALUES ($1, '{}', 'dead', $2, $3) RETURNING id",
                type_,
                start - timedelta(days=30),  # every one created long ago: only dead_at counts
                start - age,
            )
        )[0][0]
        for name, type_, age in (
            ("percent", "a%b.x", timedelta(hours=3)),
            ("lookalike", "aXb.x", timedelta(hours=2)),
            ("young", "a%b.x", timedelta(minutes=1)),
        )
    }

    async def listed(selection: DeadFilter) -> list[int]:
        return [m.id for m in await list_dead(engine, selection, now=start)]

    assert await listed(DeadFilter(type_prefix="a%b.")) == [made["young"], made["percent"]]
    assert await listed(DeadFilter(older_than=timedelta(hours=1))) == [
        made["lookalike"],
        made["percent"],
    ]
    assert await listed(
        DeadFilter(type_prefix="a%", older_than=timedelta(minutes=30), ids=(made["percent"],))
    ) == [made["percent"]]
    assert await listed(DeadFilter(newer_than=timedelta(minutes=5))) == [made["young"]]


async def test_dead_at_is_stamped_whenever_a_row_dies_and_cleared_when_it_leaves(
    engine: AsyncEngine,
) -> None:
    """The trigger of outbox_0003, whatever statement changes the status."""
    (row,) = await rows(
        engine, "INSERT INTO outbox (type, payload) VALUES ('m.x', '{}') RETURNING id"
    )
    # (status, has a dead_at, dead_at stamped by this transaction)
    state = (
        "SELECT status, dead_at IS NOT NULL,"
        " dead_at BETWEEN transaction_timestamp() AND statement_timestamp() FROM outbox"
    )

    async def step(change: str) -> tuple[Any, ...]:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(change)
            return tuple((await conn.exec_driver_sql(state)).one())

    assert await step("SELECT 1") == ("pending", False, None)
    assert await step("UPDATE outbox SET status = 'in_progress'") == ("in_progress", False, None)
    assert await step("UPDATE outbox SET status = 'dead'") == ("dead", True, True)
    # Still dead, another change: the time of death stays.
    assert await step("UPDATE outbox SET error = 'x', status = 'dead'") == ("dead", True, False)
    assert await step("UPDATE outbox SET status = 'pending'") == ("pending", False, None)
    assert await step("UPDATE outbox SET dead_at = now()") == ("pending", False, None)
    explicit = "UPDATE outbox SET status = 'dead', dead_at = '2020-01-01T00:00:00Z'"
    assert await step(explicit) == ("dead", True, False)
    (dead_at,) = await rows(engine, "SELECT dead_at FROM outbox")
    assert dead_at[0].year == 2020
    (inserted,) = await rows(
        engine,
        "INSERT INTO outbox (type, payload, status) VALUES ('m.x', '{}', 'dead') RETURNING dead_at",
    )
    assert inserted[0] is not None and row[0] == 1


async def test_purge_counts_then_deletes_before_the_cutoff(engine: AsyncEngine) -> None:
    start = await database_now(engine)
    await rows(
        engine,
        "INSERT INTO outbox (type, payload, status, published_at)"
        " SELECT 'chat.x', '{}', 'published', $1::timestamptz - g * interval '1 hour'"
        " FROM generate_series(1, 7) g",
        start,
    )
    later = start + timedelta(minutes=30)
    kwargs: dict[str, Any] = {"older_than": timedelta(hours=3), "now": later, "batch_size": 3}
    assert await purge(engine, PurgeTarget.PUBLISHED, dry_run=True, **kwargs) == 5
    seen: list[tuple[int, int]] = []
    deleted = await purge(
        engine, PurgeTarget.PUBLISHED, on_batch=lambda n, t: seen.append((n, t)), **kwargs
    )
    assert (deleted, seen) == (5, [(3, 3), (2, 5)])
    assert (await rows(engine, "SELECT count(*) FROM outbox"))[0][0] == 2
    assert await purge(engine, PurgeTarget.DEAD, **kwargs) == 0


async def test_a_large_retry_refreshes_the_planner_statistics(engine: AsyncEngine) -> None:
    """Enough retried rows run ANALYZE (pg_class.reltuples is set by it; TRUNCATE cleared it)."""
    await rows(
        engine,
        "INSERT INTO outbox (type, payload, status) SELECT 'm.x', '{}', 'dead'"
        " FROM generate_series(1, 6)",
    )
    reltuples = "SELECT reltuples FROM pg_class WHERE oid = 'outbox'::regclass"
    assert await rows(engine, reltuples) == [(-1.0,)]
    few = await retry_dead(engine, DeadFilter(ids=(1, 2)), analyze_after=3)
    assert few.retried == 2
    assert await rows(engine, reltuples) == [(-1.0,)]
    many = await retry_dead(engine, DeadFilter(), analyze_after=3)
    assert many.retried == 4
    assert await rows(engine, reltuples) == [(6.0,)]


async def test_rows_another_transaction_holds_are_skipped_not_waited_for(
    engine: AsyncEngine, database_url: str
) -> None:
    ids = [
        r[0]
        for r in await rows(
            engine,
            "INSERT INTO outbox (type, payload, status, dead_at)"
            " SELECT 'm.x', '{}', 'dead', now() - g * interval '1 day'"
            " FROM generate_series(1, 4) g ORDER BY g RETURNING id",
        )
    ]
    held = ids[1]
    with psycopg.connect(libpq_dsn(database_url)) as other:
        other.execute("SELECT 1 FROM outbox WHERE id = %s FOR UPDATE", (held,))
        result = await retry_dead(engine, DeadFilter(ids=(ids[0], held)), batch_size=1)
        assert result.retried == 1
        assert await purge(engine, PurgeTarget.DEAD, older_than=timedelta(hours=1)) == 2
        other.rollback()
    assert await rows(engine, "SELECT id, status FROM outbox ORDER BY id") == [
        (ids[0], "pending"),
        (held, "dead"),
    ]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ({"batch_size": 0}, "batch_size must be an integer from 1 to 100000"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"older_than": timedelta(seconds=-1)}, "older_than must not be negative"),
    ],
)
async def test_purge_refuses_bad_arguments(
    engine: AsyncEngine, call: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {"older_than": timedelta(hours=1), **call}
    with pytest.raises(InvalidArgumentError, match=message):
        await purge(engine, PurgeTarget.DEAD, **arguments)


async def test_dead_filters_refuse_bad_values(engine: AsyncEngine) -> None:
    with pytest.raises(InvalidArgumentError, match="newer_than must not be negative"):
        await list_dead(engine, DeadFilter(newer_than=timedelta(seconds=-1)))
    with pytest.raises(InvalidArgumentError, match="ids must be positive"):
        await retry_dead(engine, DeadFilter(ids=(0,)))
    with pytest.raises(InvalidArgumentError, match="type prefixes must be non-empty"):
        await list_dead(engine, DeadFilter(type_prefix=""))
