"""The dashboard's reads stay on the partial indexes beside a large published history.

EXPLAIN ANALYZE under custom and generic plans, as in ``tests/test_query_plans.py``: the
overview reads the pending, in-progress and dead rows and the rows published inside its
window, never the published history; the dead-letter list and its count read dead rows.
The measured cost on 1M published + 100k pending rows is ``bench/dashboard_overview.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from outbox import async_database_url
from outbox.storage import statements as sql
from tests.test_query_plans import plan, rows_read, scans

pytestmark = pytest.mark.anyio

PUBLISHED, PENDING, DEAD, LEASED = 200_000, 4_000, 300, 50


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def big_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(async_database_url(database_url))
    async with engine.begin() as conn:
        await conn.exec_driver_sql("TRUNCATE outbox")
        await conn.exec_driver_sql(
            "INSERT INTO outbox (type, payload, status, published_at)"
            " SELECT 'message.created', '{}', 'published', now() - interval '2 hours'"
            " FROM generate_series(1, $1::int)",
            (PUBLISHED,),
        )
        await conn.exec_driver_sql(
            "INSERT INTO outbox (type, payload, status, next_attempt_at)"
            " SELECT CASE WHEN g % 2 = 0 THEN 'document.preprocess.v1' ELSE 'message.created'"
            " END, '{}', 'pending', now() - interval '1 minute'"
            " FROM generate_series(1, $1::int) g",
            (PENDING,),
        )
        await conn.exec_driver_sql(
            "INSERT INTO outbox (type, key, payload, status, error)"
            " SELECT 'message.created', 'room-' || (g % 7), '{}', 'dead', 'boom ' || g"
            " FROM generate_series(1, $1::int) g",
            (DEAD,),
        )
        await conn.exec_driver_sql(
            "INSERT INTO outbox (type, payload, status, locked_by, locked_until)"
            " SELECT 'message.created', '{}', 'in_progress', 'w' || (g % 3),"
            " now() + interval '1 minute' FROM generate_series(1, $1::int) g",
            (LEASED,),
        )
    async with engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.exec_driver_sql("VACUUM ANALYZE outbox")
    yield engine
    await engine.dispose()


NOW = datetime.now(UTC)
DEAD_SELECTION = {
    "died_before": None,
    "died_after": None,
    "dead_key": "room-3",
    "error_pattern": "%boom 1%",
    "limit": 200,
}


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
@pytest.mark.parametrize(
    ("name", "statement", "values", "bound"),
    [
        (
            "overview",
            sql.OVERVIEW_BY_PREFIX,
            {"now": NOW, "since": NOW - timedelta(seconds=60), "until": NOW},
            PENDING + LEASED + DEAD,
        ),
        ("leases", sql.LEASE_HOLDERS, {}, LEASED),
        (
            "dead list",
            sql.selected_dead_newest_first((False, (("message.", "message/"),), True, True)),
            DEAD_SELECTION,
            DEAD,
        ),
        ("dead count", sql.count_selected_dead((False, None, True, True)), DEAD_SELECTION, DEAD),
    ],
)
async def test_dashboard_reads_never_touch_the_published_history(
    big_engine: AsyncEngine,
    generic: bool,
    name: str,
    statement: object,
    values: dict[str, object],
    bound: int,
) -> None:
    if generic and not values:
        pytest.skip("a statement without parameters has one plan")
    async with big_engine.connect() as conn:
        executed = await plan(conn, (statement, values), generic)  # type: ignore[arg-type]
        await conn.rollback()
    read = scans(executed)
    assert ("Seq Scan", None) not in read, (name, read)
    assert {index for _, index in read} <= {
        "ix_outbox_claimable",
        "ix_outbox_claimable_type",
        "ix_outbox_lease",
        "ix_outbox_dead_at",
        "ix_outbox_published_at",
    }, (name, read)
    # Each row of its statuses at most once (plus a little), never the 200,000 published.
    assert rows_read(executed) <= bound + 100, (name, rows_read(executed), read)
